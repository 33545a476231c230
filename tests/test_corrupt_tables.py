"""Broken tables on copies of the real root: a dangling token or a malformed table is one line naming
the file / table, row, field and missing target, from tools/doctor.py (exit 1, every dangling token)
and from NuScenesSource (DataRootError), never a devkit traceback."""
import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT, REAL_VERSION

sys.path.insert(0, os.path.join(PROJECT, "tools"))
import doctor  # noqa: E402  (tools/doctor.py)

from perception.data.nuscenes_source import (DataRootError, NuScenesSource, TableError,  # noqa: E402
                                             dangling_tokens, read_tables)

MISSING = "0" * 32  # a token no table holds


def copy_root(real_root, tmp_path, name="root"):
    """A copy of the real root that is cheap to break: the version folder's JSON tables copied (and
    writable), samples/ (sweeps/) and maps/ linked. Returns (root, table folder)."""
    root = tmp_path / name
    tables = root / REAL_VERSION
    tables.mkdir(parents=True)
    for f in os.listdir(os.path.join(real_root, REAL_VERSION)):
        if f.endswith(".json"):
            (tables / f).write_bytes(open(os.path.join(real_root, REAL_VERSION, f), "rb").read())
    for d in ("samples", "sweeps", "maps"):
        if os.path.isdir(os.path.join(real_root, d)):
            os.symlink(os.path.join(real_root, d), root / d)
    return str(root), tables


def edit_table(tables, name, edit):
    rows = json.loads((tables / f"{name}.json").read_text())
    out = edit(rows)
    (tables / f"{name}.json").write_text(json.dumps(rows))
    return out


def dangle(tables, table, field, index=3, target=MISSING):
    """Point row ``index`` of ``table`` at a record that does not exist; returns the row's token."""
    def edit(rows):
        rows[index][field] = target
        return rows[index]["token"]
    return edit_table(tables, table, edit)


@pytest.fixture
def dangling_pose(real_root, tmp_path):
    root, tables = copy_root(real_root, tmp_path)
    row = dangle(tables, "sample_data", "ego_pose_token")
    return root, f"sample_data.json row {row}: ego_pose_token {MISSING} not in ego_pose.json"


@pytest.fixture
def dangling_calibration(real_root, tmp_path):
    root, tables = copy_root(real_root, tmp_path)
    row = dangle(tables, "sample_data", "calibrated_sensor_token", index=100)
    return root, f"sample_data.json row {row}: calibrated_sensor_token {MISSING} not in calibrated_sensor.json"


@pytest.fixture
def truncated_poses(real_root, tmp_path):
    """ego_pose.json cut off mid-file; the expected line names the file and the decoder's position."""
    root, tables = copy_root(real_root, tmp_path)
    path = tables / "ego_pose.json"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text[:len(text) // 2])
    return root, f"{path}: malformed JSON at line {e.value.lineno} column {e.value.colno}"


CASES = ["dangling_pose", "dangling_calibration", "truncated_poses"]


def problem_lines(text):
    return [ln for ln in text.splitlines() if ln.startswith("PROBLEM")]


@pytest.mark.parametrize("case", CASES)
def test_doctor_reports_the_broken_table_in_one_line(case, request, tmp_path, capsys):
    root, expected = request.getfixturevalue(case)
    report_path = tmp_path / "report.json"
    rc = doctor.main(["--dataroot", root, "--version", REAL_VERSION, "--json", str(report_path)])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    lines = problem_lines(out)
    assert len(lines) == 1 and expected in lines[0], out
    assert "Traceback" not in out + err
    report = json.loads(report_path.read_text())
    assert len(report["problems"]) == 1 and expected in report["problems"][0]["line"]
    assert report["problems"][0]["kind"] == ("malformed_table" if case == "truncated_poses" else "dangling_token")
    assert report["scenes"] == {}  # the devkit cannot index the root, so no scene is checked


def test_doctor_subprocess_exits_1_without_traceback(dangling_pose):
    root, expected = dangling_pose
    res = subprocess.run([sys.executable, os.path.join(PROJECT, "tools", "doctor.py"), "--dataroot", root,
                          "--version", REAL_VERSION, "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    lines = problem_lines(res.stdout)
    assert len(lines) == 1 and expected in lines[0]


@pytest.mark.parametrize("case", CASES)
def test_source_raises_one_line_data_root_error(case, request):
    root, expected = request.getfixturevalue(case)
    with pytest.raises(DataRootError) as e:
        NuScenesSource(root, REAL_VERSION)
    msg = str(e.value)
    assert "\n" not in msg
    if case == "truncated_poses":
        assert msg.startswith(expected)
    else:  # the file under the root's table folder, and nothing more to count
        assert msg == os.path.join(root, REAL_VERSION, expected)


def test_many_dangling_tokens_all_reported_listing_capped(real_root, tmp_path, capsys):
    root, tables = copy_root(real_root, tmp_path)

    def edit(rows):
        for r in rows[:30]:
            r["ego_pose_token"] = MISSING
        return [r["token"] for r in rows[:30]]
    rows = edit_table(tables, "sample_data", edit)
    report_path = tmp_path / "report.json"
    rc = doctor.main(["--dataroot", root, "--version", REAL_VERSION, "-q", "--json", str(report_path)])
    out = capsys.readouterr().out
    assert rc == 1
    lines = problem_lines(out)
    assert len(lines) == doctor.MAX_LISTED + 1
    assert "10 more dangling tokens (30 in all" in lines[-1]
    report = json.loads(report_path.read_text())
    assert {p["where"] for p in report["problems"]} == {f"sample_data.json row {t}" for t in rows}
    with pytest.raises(DataRootError, match=r"ego_pose_token 0{32} not in ego_pose.json \(and 29 more dangling tokens\)"):
        NuScenesSource(root, REAL_VERSION)


# Every foreign key, derived from the field names (and the irregular ones): (table, field, target).
FOREIGN_KEYS = [
    ("sample_data", "sample_token", "sample"),
    ("sample_data", "prev", "sample_data"),
    ("sample_data", "next", "sample_data"),
    ("sample", "scene_token", "scene"),
    ("sample", "prev", "sample"),
    ("sample_annotation", "sample_token", "sample"),
    ("sample_annotation", "instance_token", "instance"),
    ("sample_annotation", "visibility_token", "visibility"),
    ("calibrated_sensor", "sensor_token", "sensor"),
    ("instance", "category_token", "category"),
    ("instance", "first_annotation_token", "sample_annotation"),
    ("instance", "last_annotation_token", "sample_annotation"),
    ("scene", "log_token", "log"),
    ("scene", "first_sample_token", "sample"),
    ("scene", "last_sample_token", "sample"),
]


@pytest.fixture(scope="module")
def real_tables(real_root):
    return read_tables(real_root, REAL_VERSION)


def test_real_tables_have_no_dangling_tokens(real_tables):
    assert dangling_tokens(real_tables) == []


@pytest.mark.parametrize("table,field,target", FOREIGN_KEYS)
def test_every_foreign_key_is_checked(real_tables, table, field, target):
    tables = {name: [dict(r) for r in rows] if name == table else rows for name, rows in real_tables.items()}
    row = tables[table][1]
    row[field] = MISSING
    assert dangling_tokens(tables) == [f"{table}.json row {row['token']}: {field} {MISSING} not in {target}.json"]


def test_list_foreign_keys_and_unmapped_logs(real_tables):
    tables = dict(real_tables)
    tables["sample_annotation"] = [dict(r) for r in real_tables["sample_annotation"]]
    ann = tables["sample_annotation"][0]
    ann["attribute_tokens"] = list(ann["attribute_tokens"]) + [MISSING]
    tables["map"] = [dict(m) for m in real_tables["map"]]
    dropped = tables["map"][0]["log_tokens"][0]
    tables["map"][0]["log_tokens"] = tables["map"][0]["log_tokens"][1:]
    assert dangling_tokens(tables) == [
        f"sample_annotation.json row {ann['token']}: attribute_tokens entry {MISSING} not in attribute.json",
        f"log.json row {dropped}: no map.json row lists it in log_tokens"]


def test_a_table_that_is_not_a_list_of_records(real_root, tmp_path):
    root, tables = copy_root(real_root, tmp_path)
    (tables / "sensor.json").write_text(json.dumps({"token": "x"}))
    with pytest.raises(TableError, match=r"sensor\.json: not a list of records \(a JSON dict\)$"):
        read_tables(root, REAL_VERSION)
