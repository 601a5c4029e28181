"""The shipped reference policy (models/default) and sample bag (data/sample) work together."""

from pathlib import Path

import numpy as np

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.cli import DEFAULT_MODEL_DIR
from vla_pruned_ros.train.dataset import read_episodes

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BAG = ROOT / 'data' / 'sample'
LIMIT_BYTES = 20 * 1024 * 1024


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file())


def test_shipped_files_stay_small():
    assert DEFAULT_MODEL_DIR == ROOT / 'models' / 'default'
    assert 0 < _size(DEFAULT_MODEL_DIR) <= LIMIT_BYTES
    assert 0 < _size(SAMPLE_BAG) <= LIMIT_BYTES


def test_default_policy_acts_on_the_sample_bag():
    policy = Policy.from_pretrained(str(DEFAULT_MODEL_DIR), device='cpu')
    assert policy.config.preset == 'sim-branch'
    # Trained normalisation, not the identity of an untrained model.
    assert not np.allclose(policy.model.action_std.numpy(), 1.0)
    episodes = list(read_episodes(SAMPLE_BAG))
    assert sorted({e.family for e in episodes}) == ['pick', 'push', 'reach']
    frames = episodes[0].frames
    assert frames[0].observation.rgb.shape == (96, 96, 3)
    policy.reset()
    for frame in frames[:3]:
        actions, stats = policy.step(frame.observation)
        assert actions.shape == frame.chunk.shape == (8, 7)
        assert np.isfinite(actions).all()
        assert (stats.tokens_2d_in, stats.tokens_3d_in) == (64, 64)
