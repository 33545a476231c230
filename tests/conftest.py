import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
REAL_ROOT = os.path.normpath(os.path.join(PROJECT, "..", "shared", "data", "nuscenes-real", "trainval-extract"))
REAL_VERSION = "v1.0-trainval"


def require_real_root():
    if not os.path.isdir(os.path.join(REAL_ROOT, REAL_VERSION)):
        pytest.skip(f"real nuScenes extract not found at {REAL_ROOT}")
    return REAL_ROOT


@pytest.fixture(scope="session")
def real_root():
    return require_real_root()


@pytest.fixture(scope="session")
def real_source(real_root):
    from perception.data.nuscenes_source import NuScenesSource

    return NuScenesSource(real_root, REAL_VERSION)
