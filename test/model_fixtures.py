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


def check_budget_contract(stats, tokens: int, floors: dict, n_2d: int = 16,
                          n_visual: int = 32) -> bool:
    """
    Assert the framework's contract on one step; return True when the step was pruned.

    Kept indices are valid, unique and sorted; a full step keeps every token and reuses none;
    a pruned step computes exactly ``tokens`` visual tokens and honours the floors.
    """
    kept = stats.kept_2d + [n_2d + i for i in stats.kept_3d]
    assert kept == sorted(set(kept))
    assert all(0 <= i < n_visual for i in kept)
    if stats.full_step:
        assert stats.tokens_kept == n_visual and stats.tokens_reused == 0
        return False
    assert stats.tokens_kept == tokens, (stats.pruner, tokens, stats.stages)
    assert stats.tokens_kept + stats.tokens_reused <= n_visual
    if floors:
        assert stats.tokens_2d_kept >= floors['floor_2d']
        assert stats.tokens_3d_kept >= floors['floor_3d']
    return True
