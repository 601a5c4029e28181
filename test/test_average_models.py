"""tools/average_models.py: the weighted mean of models of one architecture, or a clear refusal."""

from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch

from average_models import AverageError, average_models
from vla_pruned_ros.model.checkpoint import load_model, save_model
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.env import TabletopEnv


def _save(directory: Path, preset: str = 'tiny', seed: int = 0) -> Policy:
    policy = Policy.from_preset(preset, seed=seed, device='cpu')
    save_model(policy.model, policy.tokenizer, str(directory))
    return policy


def test_the_mean_of_two_seeds_is_a_model_with_every_weight_in_between(tmp_path):
    first = _save(tmp_path / 'a', seed=0)
    second = _save(tmp_path / 'b', seed=1)
    script = Path(__file__).resolve().parents[1] / 'tools' / 'average_models.py'
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / 'a'), str(tmp_path / 'b'),
         '--weights', '0.25', '0.75', '--out', str(tmp_path / 'mean')],
        check=True, capture_output=True, text=True, timeout=300)
    assert 'the mean of 2 models' in result.stdout
    mean, _ = load_model(str(tmp_path / 'mean'))
    a, b = first.model.state_dict(), second.model.state_dict()
    changed = 0
    for name, tensor in mean.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.25 * a[name] + 0.75 * b[name])
            changed += not torch.equal(a[name], b[name])
    assert changed > 10  # decoder, tower and head weights all differ between the seeds
    # The averaged directory is a working policy.
    policy = Policy.from_pretrained(str(tmp_path / 'mean'), device='cpu')
    size = policy.config.vision.image_size
    with TabletopEnv('reach', 0, 'train', image_size=(size, size), points_stride=2) as env:
        actions, _ = policy.step(env.reset())
    assert actions.shape[1] == 7 and np.isfinite(actions).all()


def test_models_that_cannot_be_averaged_are_refused(tmp_path):
    _save(tmp_path / 'a')
    with pytest.raises(AverageError, match='at least two'):
        average_models([str(tmp_path / 'a')])
    with pytest.raises(AverageError, match='not a model directory'):
        average_models([str(tmp_path / 'a'), str(tmp_path)])
    with pytest.raises(AverageError, match='sum to 1'):
        average_models([str(tmp_path / 'a')] * 2, [0.7, 0.7])
    with pytest.raises(AverageError, match='non-negative'):
        average_models([str(tmp_path / 'a')] * 2, [float('nan'), 1.0])
    with pytest.raises(AverageError, match='2 weights for 3'):
        average_models([str(tmp_path / 'a')] * 3, [0.5, 0.5])
    other = Policy.from_preset('tiny', seed=1, device='cpu')
    with torch.no_grad():
        other.model.action_std.mul_(2.0)
    save_model(other.model, other.tokenizer, str(tmp_path / 'scaled'))
    with pytest.raises(AverageError, match='action_std'):
        average_models([str(tmp_path / 'a'), str(tmp_path / 'scaled')])
    _save(tmp_path / 'sim', preset='sim')
    with pytest.raises(AverageError, match='another configuration'):
        average_models([str(tmp_path / 'a'), str(tmp_path / 'sim')])
