"""Synthetic drive generator: complete nuScenes v1.0 data roots with physically consistent camera,
LiDAR, radar and GPS/IMU, for demos, tests and benchmarks without the real dataset.

    from perception.data.synthetic import generate, preset
    generate("/tmp/synth", preset("default"), seed=0)
"""
from .generator import PRESETS, Failures, GeneratorConfig, generate, preset, scene_names  # noqa: F401
