"""Replay into an MCAP with Foxglove schemas (``foxglove-sdk``), to open and scrub in Foxglove Studio.

Topics, one message per replayed frame at the frame's reference time (log time = recorded time):

- ``/tf`` FrameTransforms: ``map -> base_link`` (the ego pose) and ``base_link -> <camera>`` for
  every camera (frames are in the ego frame at the reference time, so the cameras' transforms carry
  the compensation the synchronizer applied);
- ``/lidar`` PointCloud (frame ``base_link``): x, y, z, intensity (float32), every compensated sweep;
- ``/radar`` PointCloud (frame ``base_link``): x, y, z, rcs;
- ``/<CAMERA>/image`` CompressedImage (JPEG) of every present camera;
- ``/detections`` SceneUpdate (frame ``base_link``): one entity per box with a cube (coloured by
  class) and a text label "class score" (and the track ID when the tracker runs); an empty update for
  a frame without boxes, so the boxes of the previous frame disappear;
- ``/ground_truth`` SceneUpdate of the frame's annotations, when it has them.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..structures import CLASSES

BASE, MAP = "base_link", "map"


def _ts(t_us: int):
    from foxglove.messages import Timestamp

    return Timestamp(int(t_us // 1_000_000), int(t_us % 1_000_000) * 1000)


def _quat(R: np.ndarray):
    from foxglove.messages import Quaternion
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))


class FoxgloveWriter:
    """``write(frame, detections, tracks)`` per frame; ``close()`` finishes the file."""

    def __init__(self, path: str):
        import foxglove
        from foxglove.channels import FrameTransformsChannel, PointCloudChannel, SceneUpdateChannel

        self.path = path
        self.ctx = foxglove.Context()  # its own context: nothing leaks to (or from) the global one
        self.writer = foxglove.open_mcap(path, allow_overwrite=True, context=self.ctx)
        self.tf = FrameTransformsChannel("/tf", context=self.ctx)
        self.lidar = PointCloudChannel("/lidar", context=self.ctx)
        self.radar = PointCloudChannel("/radar", context=self.ctx)
        self.det = SceneUpdateChannel("/detections", context=self.ctx)
        self.gt = SceneUpdateChannel("/ground_truth", context=self.ctx)
        self.images = {}
        self.frames = 0

    def _cloud(self, t_us: int, pts: np.ndarray, names):
        """pts: float[N, len(names)] ego frame, metres."""
        from foxglove.messages import PackedElementField, PackedElementFieldNumericType, PointCloud

        data = np.ascontiguousarray(pts, np.float32)
        fields = [PackedElementField(name=n, offset=4 * i, type=PackedElementFieldNumericType.Float32)
                  for i, n in enumerate(names)]
        return PointCloud(timestamp=_ts(t_us), frame_id=BASE, point_stride=4 * len(names), fields=fields,
                          data=data.tobytes())

    def _scene(self, t_us: int, boxes: Optional[np.ndarray], labels, scores, ids, prefix: str):
        """boxes: float[N, >= 7] (x, y, z, l, w, h, yaw, ...) ego frame, metres / rad."""
        from foxglove.messages import (Color, CubePrimitive, Duration, KeyValuePair, Pose, SceneEntity,
                                       SceneUpdate, TextPrimitive, Vector3)
        from foxglove.messages import Quaternion

        from ..viz.palette import class_color

        entities = []
        for i in range(0 if boxes is None else len(boxes)):
            x, y, z, l, w, h, yaw = (float(v) for v in boxes[i, :7])
            r, g, b = (c / 255.0 for c in class_color(int(labels[i]))[:3])
            q = Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))
            label = CLASSES[int(labels[i])] + (f" {float(scores[i]):.2f}" if scores is not None else "")
            if ids is not None:
                label = f"#{int(ids[i])} " + label
            entities.append(SceneEntity(
                timestamp=_ts(t_us), frame_id=BASE, id=f"{prefix}{i}", lifetime=Duration(0, 0),
                metadata=[KeyValuePair(key="class", value=CLASSES[int(labels[i])]),
                          KeyValuePair(key="score", value=f"{float(scores[i]):.4f}" if scores is not None else "1")],
                cubes=[CubePrimitive(pose=Pose(position=Vector3(x=x, y=y, z=z), orientation=q),
                                     size=Vector3(x=l, y=w, z=h), color=Color(r=r, g=g, b=b, a=0.4))],
                texts=[TextPrimitive(pose=Pose(position=Vector3(x=x, y=y, z=z + h / 2 + 0.5),
                                               orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
                                     billboard=True, font_size=14.0, scale_invariant=True,
                                     color=Color(r=1.0, g=1.0, b=1.0, a=1.0), text=label)]))
        return SceneUpdate(entities=entities)

    def write(self, frame, det=None, tracks=None) -> None:
        import cv2
        from foxglove.channels import CompressedImageChannel
        from foxglove.messages import CompressedImage, FrameTransform, FrameTransforms, Vector3

        t = int(frame.timestamp)
        ns = t * 1000
        T = frame.T_global_from_ego
        tfs = [FrameTransform(timestamp=_ts(t), parent_frame_id=MAP, child_frame_id=BASE,
                              translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                              rotation=_quat(T[:3, :3]))]
        for cam in frame.cameras:
            C = cam.T_ego_from_cam
            tfs.append(FrameTransform(timestamp=_ts(t), parent_frame_id=BASE, child_frame_id=cam.channel,
                                      translation=Vector3(x=float(C[0, 3]), y=float(C[1, 3]), z=float(C[2, 3])),
                                      rotation=_quat(C[:3, :3])))
        self.tf.log(FrameTransforms(transforms=tfs), log_time=ns)
        self.lidar.log(self._cloud(t, frame.lidar_points[:, :4], ("x", "y", "z", "intensity")), log_time=ns)
        self.radar.log(self._cloud(t, frame.radar_points[:, :4], ("x", "y", "z", "rcs")), log_time=ns)
        for cam in frame.cameras:
            if not cam.present or cam.image is None:
                continue
            ch = self.images.get(cam.channel)
            if ch is None:
                ch = self.images[cam.channel] = CompressedImageChannel(f"/{cam.channel}/image", context=self.ctx)
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(cam.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            ch.log(CompressedImage(timestamp=_ts(t), frame_id=cam.channel, data=jpg.tobytes(), format="jpeg"), log_time=ns)
        if tracks is not None and len(tracks):
            ego = tracks.in_ego(T).boxes
            upd = self._scene(t, ego, tracks.labels, tracks.scores, tracks.ids, "track")
        elif det is not None:
            b = det.boxes
            upd = self._scene(t, b.boxes, b.labels, b.scores, None, "det")
        else:
            upd = self._scene(t, None, [], None, None, "det")
        self.det.log(upd, log_time=ns)
        if frame.gt is not None:
            g = frame.gt
            self.gt.log(self._scene(t, g.boxes, g.labels, None, None, "gt"), log_time=ns)
        self.frames += 1

    def close(self) -> None:
        self.writer.close()
