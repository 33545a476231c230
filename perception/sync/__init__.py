"""Time alignment, ego-pose interpolation, calibration and motion compensation."""
