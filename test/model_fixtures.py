"""Shared builders for model and pruning tests: a tiny real policy and RGB-D observations."""

from dataclasses import replace

import numpy as np

from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.observation import Observation

SIZE = 64


def make_observation(seed: int = 0, instruction: str = 'pick up the red cube') -> Observation:
    """A table plane with a box on it, seen by a 64 x 64 RGB-D camera, plus noise."""
    rng = np.random.default_rng(seed)
    intrinsics = CameraIntrinsics.from_fov(SIZE, SIZE, 60.0)
    depth = np.full((SIZE, SIZE), 0.9, np.float32) + 0.01 * rng.random((SIZE, SIZE), np.float32)
    rgb = np.full((SIZE, SIZE, 3), 90, np.uint8)
    top, left = 20 + seed % 7, 18 + (3 * seed) % 11
    depth[top:top + 16, left:left + 14] = 0.75
    rgb[top:top + 16, left:left + 14] = (200, 30, 30)
    rgb += rng.integers(0, 20, rgb.shape, dtype=np.uint8)
    return Observation(
        rgb=rgb, depth=depth, points=None, intrinsics=intrinsics, stamp_ns=seed * 100_000_000,
        instruction=instruction, ee_pose=np.array([0.1, 0.0, 0.3, 0, 0, 0, 1], np.float32),
        joint_state=None,
    )


def micro_config():
    """The tiny preset cut to 16 2D + 16 3D tokens: cheap enough to sweep every budget."""
    config = preset_config('tiny')
    config.vision = replace(config.vision, image_size=32, patch_size=8)
    config.points = replace(config.points, num_points=128, num_groups=16, group_size=8)
    return config
