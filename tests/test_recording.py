"""Recordings (issue 19): a nuScenes scene -> tools/to_mcap.py -> RecordingSource gives the root's
frames and detections (real scene and a synthetic one, MCAP / ROS 1 bag / ROS 2 sqlite3 bag); the
GNSS + IMU + odometry filter against the synthetic truth, through a 10 s outage; one-line errors for
bad recordings; doctor on a recording; replay's Foxglove MCAP holds every frame's boxes."""
import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from perception.config import load_config
from perception.data.nuscenes_source import NuScenesSource
from perception.data.recording import RecordingError, RecordingSource
from perception.data.to_recording import convert_scene
from perception.sync.synchronizer import FrameBuilder

from conftest import PROJECT, REAL_VERSION

sys.path.insert(0, os.path.join(PROJECT, "tools"))
from test_replay import MICRO_YAML  # noqa: E402  the micro model of the replay tests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One 2 s synthetic scene (every LiDAR and radar sweep on disk, GNSS stream beside the CAN bus)."""
    from perception.data.synthetic.generator import generate, preset

    out = str(tmp_path_factory.mktemp("rec_tiny") / "root")
    generate(out, preset("tiny", train_scenes=1, val_scenes=0, duration_s=2.0), seed=3)
    src = NuScenesSource(out, "v1.0-trainval")
    return src, src.scene_names()[0]


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    """The tiny scene as MCAP, ROS 1 bag and ROS 2 sqlite3 bag, each opened as a RecordingSource."""
    src, scene = tiny
    d = tmp_path_factory.mktemp("rec_out")
    out = {}
    for kind, name in (("mcap", "drive.mcap"), ("ros1", "drive.bag"), ("sqlite3", "drive_db3")):
        info = convert_scene(src, scene, str(d / name), str(d / f"{kind}.rig.yaml"))
        out[kind] = (info, RecordingSource(str(d / name), info["rig"], cache_dir=str(d / f"cache_{kind}")))
    return out


def assert_same_frames(root_builder, rec_builder, refs_root, refs_rec, images_for=None):
    """Frames of both sources equal: points, transforms, choices; images decoded and compared for the
    first ``images_for`` frames (all when None), the other frames' image files only located."""
    assert [m.timestamp for m in refs_root] == [m.timestamp for m in refs_rec]
    worst = 0.0
    for k, (a, b) in enumerate(zip(refs_root, refs_rec)):
        assert a.is_key_frame == b.is_key_frame and (not a.is_key_frame or a.sample_token == b.sample_token)
        load = images_for is None or k < images_for
        fa = root_builder.build(a, with_gt=False, load_images=load)
        fb = rec_builder.build(b, with_gt=False, load_images=load)
        assert fa.lidar_points.shape == fb.lidar_points.shape and fa.radar_points.shape == fb.radar_points.shape
        worst = max(worst, float(np.abs(fa.lidar_points - fb.lidar_points).max(initial=0)),
                    float(np.abs(fa.radar_points - fb.radar_points).max(initial=0)),
                    float(np.abs(fa.T_global_from_ego - fb.T_global_from_ego).max()))
        for ca, cb in zip(fa.cameras, fb.cameras):
            assert (ca.channel, ca.timestamp, ca.present) == (cb.channel, cb.timestamp, cb.present)
            worst = max(worst, float(np.abs(ca.T_ego_from_cam - cb.T_ego_from_cam).max()),
                        float(np.abs(ca.intrinsics - cb.intrinsics).max()))
            if ca.present and load:
                assert np.array_equal(ca.image, cb.image)
        for ch, st in fa.status.items():  # the synchronizer chose the same message of every channel
            assert (st.present, st.offset_us, st.num_messages) == (fb.status[ch].present, fb.status[ch].offset_us,
                                                                    fb.status[ch].num_messages), ch
    assert worst <= 1e-6, worst
    return worst


def test_synthetic_round_trip_three_formats_same_frames_and_detections(tiny, converted, tmp_path):
    from perception.eval.evaluate import build_detector
    from perception.models.build import build_model
    from perception.replay.timing import TimedDetector

    src, scene = tiny
    cfg_path = tmp_path / "micro.yaml"
    cfg_path.write_text(MICRO_YAML)
    cfg = load_config(str(cfg_path))
    root_b = FrameBuilder(src, scene, cfg)
    for kind, (info, rec) in converted.items():
        assert rec.rig_file.keyframes == "/nuscenes/keyframes"
        b = FrameBuilder(rec, rec.name, cfg)
        assert set(b.rig.sensors) == set(root_b.rig.sensors)
        # every LiDAR message of the root (sweeps too) against the recording's
        assert_same_frames(root_b, b, root_b.references, b.references)
        assert [m.sample_token for m in b.keyframe_references] == [m.sample_token for m in root_b.keyframe_references]
    torch.manual_seed(0)
    ckpt = tmp_path / "micro.pt"
    torch.save({"model": build_model(cfg).state_dict()}, ckpt)
    det = TimedDetector(build_detector(cfg, str(ckpt)))
    rec_b = FrameBuilder(converted["mcap"][1], converted["mcap"][1].name, cfg)
    for a, b in list(zip(root_b.keyframe_references, rec_b.keyframe_references))[:2]:
        da, _ = det.predict(root_b.build(a, with_gt=False))
        db, _ = det.predict(rec_b.build(b, with_gt=False))
        assert len(da.boxes) > 0 and len(da.boxes) == len(db.boxes)
        np.testing.assert_allclose(da.boxes.boxes, db.boxes.boxes, atol=1e-5)
        np.testing.assert_allclose(da.boxes.scores, db.boxes.scores, atol=1e-6)


def test_real_scene_round_trip(real_root, tmp_path):
    src = NuScenesSource(real_root, REAL_VERSION)
    info = convert_scene(src, "scene-0916", str(tmp_path / "drive.mcap"))
    rec = RecordingSource(info["out"], info["rig"], cache_dir=str(tmp_path / "cache"))
    # The extract holds keyframe files only: its sweeps are index records without data, which a
    # recording cannot hold; one LiDAR and one radar sweep per frame compares what both have.
    cfg = load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"])
    a, b = FrameBuilder(src, "scene-0916", cfg), FrameBuilder(rec, rec.name, cfg)
    assert len(b.keyframe_references) == len(a.keyframe_references) == 41
    assert_same_frames(a, b, a.keyframe_references, b.keyframe_references, images_for=4)


def test_gnss_filter_against_synthetic_truth_with_outage(caplog):
    from perception.data.synthetic.generator import make_world
    from perception.data.synthetic.gnss import GnssConfig, simulate
    from perception.sync.gnss import GnssStreams, fuse

    world = make_world(0, 0, 60.0)
    t0 = world.t0 + 100_000
    s = simulate(world, t0, t0 + 59_000_000, np.random.default_rng(1), GnssConfig(outages=[(25.0, 35.0)]))
    streams = GnssStreams(s.fix_t, s.fix_lla, s.fix_status, s.fix_var, s.imu_t, s.gyro_z, None, s.odom_t, s.speed)
    with caplog.at_level(logging.WARNING, logger="perception.sync.gnss"):
        fp = fuse(streams, origin=s.origin)
    xy, yaw, _, _ = world.ego_state(fp.timestamps)
    err = np.hypot(*(fp.translations[:, :2] - xy).T)
    dyaw = np.degrees((fp.yaw - yaw + np.pi) % (2 * np.pi) - np.pi)
    assert np.sqrt((err ** 2).mean()) <= 0.5
    assert np.sqrt((dyaw ** 2).mean()) <= 0.5
    # the outage: reported once, ~10 s, the error bounded and within the reported uncertainty
    assert len(fp.outages) == 1 and 9.5 <= (fp.outages[0].end_us - fp.outages[0].start_us) * 1e-6 <= 10.5
    assert any("dead reckoning" in r.message for r in caplog.records)
    dr = fp.dead_reckoning
    assert dr.sum() > 500 and err[dr].max() < 1.5
    sigma = np.sqrt(fp.covariances[:, 0, 0] + fp.covariances[:, 1, 1])
    assert sigma[dr].max() > 2 * sigma[~dr].max() * 0.5 and (err[dr] < 3 * sigma[dr]).all()
    assert fp.rejected["no_fix_status"] > 100  # NO_FIX messages ignored, not fused
    # a raw GNSS track is much worse than the fused pose (the filter does something)
    assert np.sqrt((err ** 2).mean()) < 0.8


def test_recording_pose_from_gnss_when_no_tf(tiny, converted, tmp_path):
    """The tiny scene's recording read with pose.source gnss: the filter's pose, near the true ego pose."""
    src, scene = tiny
    info, rec = converted["mcap"]
    rig = open(info["rig"]).read().replace("  tf_parent: map", "  tf_parent: map\n  source: gnss\n"
                                                               "  origin: [42.336849169438615, -71.05785369873047, 0.0]")
    p = tmp_path / "gnss.rig.yaml"
    p.write_text(rig)
    r2 = RecordingSource(info["out"], str(p), cache_dir=str(tmp_path / "c"))
    assert r2.gnss_pose is not None
    truth = src.pose_stream(scene)
    t = truth.timestamps[(truth.timestamps >= r2.gnss_pose.timestamps[0]) & (truth.timestamps <= r2.gnss_pose.timestamps[-1])]
    d = np.linalg.norm(r2.pose_stream(scene).transforms(t)[:, :2, 3] - truth.transforms(t)[:, :2, 3], axis=1)
    assert np.sqrt((d ** 2).mean()) < 1.0  # 2 s of fixes: no long baseline to average over


def _write(path, items, ros1=False):
    from perception.data import rosmsg

    fac = rosmsg.MessageFactory(ros1)
    w = rosmsg.RecordingWriter(str(path), fac)
    for topic, typ, t, build in items:
        w.write(topic, typ, t, build(fac))
    w.close()


def _lidar_items(stamps, fields=("x", "y", "z", "intensity", "ring")):
    from perception.data import rosmsg

    pts = rosmsg.structured_points({f: np.arange(4, dtype=np.float32) + 5 for f in fields})
    items = [("/tf_static", rosmsg.TFMESSAGE, 1000, lambda f: f.tf_message([f.transform(1000, "base_link", "lidar", np.eye(4))])),
             ("/tf", rosmsg.TFMESSAGE, 1000, lambda f: f.tf_message([f.transform(1000, "map", "base_link", np.eye(4))])),
             ("/tf", rosmsg.TFMESSAGE, 9000, lambda f: f.tf_message([f.transform(9000, "map", "base_link", np.eye(4))]))]
    for k, t in enumerate(stamps):
        items.append(("/points", rosmsg.POINTCLOUD2, 1000 + k * 10, lambda f, t=t: f.point_cloud2(t, "lidar", pts)))
    return items


RIG = "base_frame: base_link\nchannels:\n  LIDAR_TOP: {topic: /points}\n"


@pytest.mark.parametrize("case", ["missing_topic", "no_xyz", "backwards", "unknown_type", "truncated", "ok"])
def test_bad_recordings_one_line_errors(case, tmp_path):
    from perception.data import rosmsg

    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG if case != "missing_topic" else RIG + "  RADAR_FRONT: {topic: /radar}\n")
    path = tmp_path / "r.mcap"
    items = _lidar_items([2000, 3000, 4000], ("a", "b", "c") if case == "no_xyz" else ("x", "y", "z", "intensity", "ring"))
    if case == "backwards":
        items = _lidar_items([2000, 4000, 3000])
    if case == "unknown_type":
        items = [it for it in items if it[0] != "/points"] + [
            ("/points", "std_msgs/msg/String", 2000, lambda f: f.T["std_msgs/msg/String"](data="x"))]
    _write(path, items)
    if case == "truncated":
        blob = path.read_bytes()
        path.write_bytes(blob[:len(blob) // 2])
    if case == "ok":
        rec = RecordingSource(str(path), str(rig), cache_dir=str(tmp_path / "c"))
        assert len(rec.index(rec.name).channels["LIDAR_TOP"]) == 3
        assert rec.load_lidar(rec.index(rec.name).channels["LIDAR_TOP"].messages[0]).shape == (4, 5)
        return
    with pytest.raises(RecordingError) as e:
        RecordingSource(str(path), str(rig), cache_dir=str(tmp_path / "c"))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    expect = {"missing_topic": ["/radar", "not in the recording"],
              "no_xyz": ["/points message 0", "without field(s) x, y, z"],
              "backwards": ["/points message 2", "before the previous"],
              "unknown_type": ["/points", "unknown message type std_msgs/msg/String"],
              "truncated": ["truncated"]}[case]
    for s in expect:
        assert s in msg, msg


def test_doctor_on_recording_reports_stamp_disagreement(tmp_path, converted):
    import doctor
    from perception.data import rosmsg

    # receive times 80 ms after the header stamps on one message
    items = _lidar_items([2000, 3000, 4000])
    items[5] = ("/points", rosmsg.POINTCLOUD2, 84_000, items[5][3])
    path = tmp_path / "late.mcap"
    _write(path, items)
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG)
    out = tmp_path / "doc.json"
    rc = doctor.main(["--recording", str(path), "--rig", str(rig), "--cache-dir", str(tmp_path / "c"), "--json", str(out), "-q"])
    rep = json.loads(out.read_text())
    assert rc == 1
    [p] = [p for p in rep["problems"] if p["kind"] == "stamp_disagreement"]
    assert p["where"] == "/points message 2" and "80.0 ms" in p["message"]
    info, _ = converted["mcap"]
    assert doctor.main(["--recording", info["out"], "--rig", info["rig"], "--cache-dir", str(tmp_path / "c2"), "-q"]) == 0


def _decode_foxglove(path):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from mcap.reader import make_reader

    classes, out = {}, {}
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            if schema.name not in classes:
                fds = descriptor_pb2.FileDescriptorSet.FromString(schema.data)
                pool = descriptor_pool.DescriptorPool()
                for fd in fds.file:
                    pool.Add(fd)
                classes[schema.name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
            out.setdefault(channel.topic, []).append((message.log_time, classes[schema.name].FromString(message.data)))
    return out


def test_replay_recording_writes_foxglove_mcap_with_every_frames_boxes(converted, tmp_path):
    import replay

    info, _ = converted["mcap"]
    cfg_path = tmp_path / "micro.yaml"
    cfg_path.write_text(MICRO_YAML)
    torch.manual_seed(0)
    from perception.models.build import build_model

    ckpt = tmp_path / "micro.pt"
    torch.save({"model": build_model(load_config(str(cfg_path))).state_dict()}, ckpt)
    out, fox = tmp_path / "r.mp4", tmp_path / "fox.mcap"
    rc = replay.main(["--recording", info["out"], "--rig", info["rig"], "--cache-dir", str(tmp_path / "c"),
                      "--config", str(cfg_path), "--checkpoint", str(ckpt), "--out", str(out), "--headless",
                      "--max-frames", "3", "--min-score", "0.0", "--no-track", "--renderer", "software",
                      "--foxglove", str(fox)])
    assert rc == 0
    log = json.loads(out.with_suffix(".json").read_text())
    msgs = _decode_foxglove(fox)
    dets = msgs["/detections"]
    assert len(dets) == len(log["frames"]) == 3
    for (t_ns, upd), rec in zip(dets, log["frames"]):
        assert t_ns == rec["timestamp"] * 1000
        assert len(upd.entities) == len(rec["detections"]) > 0
        e = upd.entities[0]
        assert e.frame_id == "base_link" and len(e.cubes) == 1 and rec["detections"][0]["label"] in e.texts[0].text
        np.testing.assert_allclose([e.cubes[0].pose.position.x, e.cubes[0].size.x],
                                   [rec["detections"][0]["box"][0], rec["detections"][0]["box"][3]], atol=1e-3)
    assert len(msgs["/lidar"]) == 3 and len(msgs["/tf"]) == 3 and "/CAM_FRONT/image" in msgs
    assert {t.child_frame_id for t in msgs["/tf"][0][1].transforms} >= {"base_link", "CAM_FRONT"}
