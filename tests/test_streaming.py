"""The streaming synchronizer makes the offline Synchronizer's choices, message by message, with
bounded buffers; a silent sensor does not stall it."""
import numpy as np
import pytest

from perception.config import load_config
from perception.data.nuscenes_source import ChannelIndex, SceneIndex
from perception.structures import LIDAR_CHANNEL
from perception.sync.streaming import SILENT_REASON, StreamingSynchronizer
from perception.sync.synchronizer import FrameBuilder, Synchronizer


def stream(ss, messages):
    out = []
    for m in messages:
        for r in ss.push(m):
            out.append((r, ss.clock_us))
    out += [(r, ss.clock_us) for r in ss.flush()]
    return out


def same_choices(a, b):
    assert a.keys() == b.keys()
    for ch in a:
        assert [m.token for m in a[ch].messages] == [m.token for m in b[ch].messages], ch
        assert a[ch].offset_us == b[ch].offset_us, ch


@pytest.mark.parametrize("camera_match", ["trigger", "nearest"])
def test_streaming_equals_offline_on_real_scenes(real_source, camera_match):
    cfg = load_config(None, [f"sync.camera_match={camera_match}"])
    keyframes = 0
    for scene in real_source.scene_names():
        fb = FrameBuilder(real_source, scene, cfg)
        ss = StreamingSynchronizer.for_builder(fb)
        got = stream(ss, real_source.messages(scene))
        # one selection per LiDAR message (keyframes and sweeps), in order
        assert [r.reference.token for r, _ in got] == [m.token for m in fb.references]
        for r, _ in got:
            offline = fb.sync.select(r.reference)
            same_choices(r.selection.choices, offline.choices)
            for ch, c in offline.choices.items():
                assert r.selection.choices[ch].reason == c.reason
            keyframes += r.reference.is_key_frame
        # bounded: ~0.55 s of 20 Hz LiDAR, 12 Hz cameras, 13 Hz radars, whatever the scene length
        assert max(ss.max_buffered.values()) <= 16, ss.max_buffered
        assert ss.max_pending <= 4
        assert sum(ss.buffer_sizes().values()) <= 16 * len(ss.buffer_sizes())
        # a selection is final at most the radar tolerance (+ one message gap) after its reference
        assert max(r.clock_us - r.reference.timestamp for r, _ in got) <= cfg.sync.radar_tolerance_us + 50_000
    assert keyframes == 81


def test_silent_sensors_do_not_stall_and_match_offline(real_source):
    """CAM_BACK never sends, RADAR_FRONT dies halfway: selections still come out promptly and equal
    the offline ones over the same messages."""
    cfg = load_config(None)
    fb = FrameBuilder(real_source, "scene-0523", cfg)
    msgs = list(real_source.messages("scene-0523"))
    t_mid = (msgs[0].timestamp + msgs[-1].timestamp) // 2
    kept = [m for m in msgs if m.channel != "CAM_BACK" and not (m.channel == "RADAR_FRONT" and m.timestamp > t_mid)]
    per = {}
    for m in kept:
        per.setdefault(m.channel, []).append(m)
    index = SceneIndex(fb.index.scene_token, "filtered", {
        ch: ChannelIndex(ch, np.array([m.timestamp for m in v], np.int64), v) for ch, v in per.items()}, [])
    offline = Synchronizer(index, fb.rig, cfg.sync, fb.cameras, fb.radars)
    ss = StreamingSynchronizer.for_builder(fb)
    got = stream(ss, kept)
    assert len(got) == len(per[LIDAR_CHANNEL])
    for r, _ in got[:-3]:  # the last ones come out at the end of the stream
        assert r.clock_us - r.reference.timestamp <= cfg.sync.radar_tolerance_us + 50_000
    late = 0
    for r, _ in got:
        same_choices(r.selection.choices, offline.select(r.reference).choices)
        assert r.selection.choices["CAM_BACK"].reason == SILENT_REASON
        if r.reference.timestamp > t_mid + 100_000:
            late += 1
            assert not r.selection.choices["RADAR_FRONT"].messages
    assert late > 50
    assert max(ss.max_buffered.values()) <= 16


def test_messages_out_of_order_are_refused(real_source):
    fb = FrameBuilder(real_source, "scene-0916", load_config(None))
    ss = StreamingSynchronizer.for_builder(fb)
    msgs = list(real_source.messages("scene-0916"))
    assert msgs[20].timestamp > msgs[0].timestamp
    ss.push(msgs[20])
    with pytest.raises(ValueError, match="timestamp order"):
        ss.push(msgs[0])
