"""Synthetic vehicles have a front and a back that the LiDAR and the cameras see (issue 15: heading).

A parked car is put beside the ego in an otherwise empty world; its LiDAR returns and its rendering
are checked in the car's own box frame.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perception.data.synthetic import rig
from perception.data.synthetic.camera import CameraConfig, render
from perception.data.synthetic.lidar import (VEHICLE_PARTS, LidarConfig, T_global_from_ego, shape_parts,
                                             simulate_sweep)
from perception.data.synthetic.world import CLASS_SIZE, Agent, build_world

T0 = 1_533_000_000_000_000


def _world_with_car(side_m: float, yaw_offset: float):
    """An empty world (no statics, no other agents) with one parked car ``side_m`` to the ego's left,
    turned by ``yaw_offset`` from the ego's heading."""
    world = build_world(np.random.default_rng(3), T0, 5.0)
    xy, yaw, _, _ = world.ego_state(T0)
    c, s = np.cos(yaw[0]), np.sin(yaw[0])
    centre = xy[0] + np.array([-s, c]) * side_m + np.array([c, s]) * 1.0
    car = Agent(cls="car", category="vehicle.car", attribute="vehicle.parked", p0=centre, v=np.zeros(2),
                yaw=float(yaw[0] + yaw_offset), size=CLASS_SIZE["car"], color=np.array([0.7, 0.1, 0.1]),
                color2=np.array([0.2, 0.2, 0.2]), rcs=10.0)
    world = dataclasses.replace(world, statics=np.zeros((0, 7)), static_kind=np.zeros(0, np.int64),
                                static_color=np.zeros((0, 3)), agents=[car])
    return world, car


def _car_points_box_frame(world, car):
    """LiDAR returns on the car in its box-local unit coordinates (u back->front, w bottom->top)."""
    pts = simulate_sweep(world, T0, LidarConfig(azimuth_steps=2048, dropout=0.0, range_noise=0.0),
                         np.random.default_rng(0))
    xy, yaw, _, _ = world.ego_state(T0)
    T = T_global_from_ego(xy[0], yaw[0]) @ rig.T_ego_from_sensor("LIDAR_TOP")
    g = pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    L, W, H = car.size
    c, s = np.cos(car.yaw), np.sin(car.yaw)
    d = g[:, :2] - car.p0
    lx, ly = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    on = (np.abs(lx) < L / 2 + 0.05) & (np.abs(ly) < W / 2 + 0.05) & (g[:, 2] > 0.05) & (g[:, 2] < H + 0.05)
    return lx[on] / L + 0.5, g[on, 2] / H


@pytest.mark.parametrize("yaw_offset", [0.0, np.pi])
def test_lidar_sees_bonnet_in_front_of_cabin(yaw_offset):
    world, car = _world_with_car(7.0, yaw_offset)
    u, w = _car_points_box_frame(world, car)
    assert len(u) > 100
    bonnet_w = VEHICLE_PARTS["car"][0][5]
    high = w > bonnet_w + 0.05
    # The cabin's returns lie in its span; above the bonnet in front of the cabin there is nothing.
    assert np.sum(high & (u > 0.2) & (u < 0.65)) > 20
    assert np.sum(high & (u > 0.75)) == 0
    # The mirror image differs: the rear overhang above the body is short, the bonnet long.
    assert np.sum(~high & (u > 0.75)) > 5


def test_shape_parts_tile_the_box_and_leave_other_classes_whole():
    boxes = np.array([[10.0, -3.0, 0.87, 4.6, 2.0, 1.74, 0.7, 1.0, 0.5],
                      [0.0, 0.0, 0.9, 0.7, 0.7, 1.8, 0.1, 0.0, 0.0]])
    parts, owner, uvw0, scale = shape_parts(boxes, ["car", "pedestrian"])
    assert owner.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(parts[2], boxes[1])
    # every part lies inside its owner's box, and keeps its yaw and velocity
    for p, o in zip(parts, owner):
        c, s = np.cos(boxes[o, 6]), np.sin(boxes[o, 6])
        d = p[:2] - boxes[o, :2]
        lx, ly = c * d[0] + s * d[1], -s * d[0] + c * d[1]
        assert abs(lx) + p[3] / 2 <= boxes[o, 3] / 2 + 1e-9
        assert abs(ly) + p[4] / 2 <= boxes[o, 4] / 2 + 1e-9
        assert abs(p[2] - boxes[o, 2]) + p[5] / 2 <= boxes[o, 5] / 2 + 1e-9
        np.testing.assert_array_equal(p[6:], boxes[o, 6:])
    # the parts' box-local spans are the owner's coordinates of the part (the camera's appearance uses them)
    cabin = VEHICLE_PARTS["car"][1]
    np.testing.assert_allclose(uvw0[1], [cabin[0], cabin[2], cabin[4]])
    np.testing.assert_allclose(scale[1], [cabin[1] - cabin[0], cabin[3] - cabin[2], cabin[5] - cabin[4]])


def test_camera_counts_each_pixel_of_a_shaped_car_once():
    """An unoccluded car drawn as two parts is fully visible: visible pixels == covered pixels (the
    body's top under the cabin is covered by both parts and must count once)."""
    world, car = _world_with_car(6.0, 0.3)
    xy, yaw, _, _ = world.ego_state(T0)
    image, visible, covered = render(world, "CAM_FRONT_LEFT", T0, CameraConfig(), np.random.default_rng(0),
                                     xy[0], float(yaw[0]))
    assert covered[0] > 200
    assert visible[0] == covered[0]
