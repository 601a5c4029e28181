"""VLA-InfoEntropy: entropies, attention relevance, timestep schedule and exact KV reuse."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from model_fixtures import make_observation
from vla_pruned_ros.model.runner import ProbeResult
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget, create_pruner, select_top_k
from vla_pruned_ros.pruning.info_entropy import (
    _minmax_per_modality,
    attention_relevance,
    geometric_entropy,
    gray_entropy,
    patch_pixels,
)
from vla_pruned_ros.tokens.points_3d import sample_groups


@pytest.fixture(scope='module')
def policy():
    return Policy.from_preset('tiny', device='cpu', seed=0)


def test_gray_entropy_in_bits():
    flat = np.full((1, 16, 3), 128, np.uint8)
    halves = np.concatenate([np.zeros((1, 8, 3)), np.full((1, 8, 3), 255)], axis=1)
    quarters = np.repeat(np.array([0, 80, 160, 240], np.uint8), 4)[None, :, None].repeat(3, 2)
    entropy = gray_entropy(np.concatenate([flat, halves.astype(np.uint8), quarters]), bins=32)
    np.testing.assert_allclose(entropy, [0.0, 1.0, 2.0], atol=1e-12)


def test_geometric_entropy_tells_lines_planes_and_blobs_apart():
    t = np.linspace(-1, 1, 9)
    line = np.stack([t, 0 * t, 0 * t], axis=1)
    plane = np.array([[x, y, 0.0] for x in (-1, 1) for y in (-1, 1)] * 2)
    blob = np.concatenate([np.eye(3), -np.eye(3), np.zeros((2, 3))])
    groups = np.stack([line[:8], plane, blob])
    entropy = geometric_entropy(groups, 'eigen', bins=8)
    np.testing.assert_allclose(entropy, [0.0, 1.0, np.log2(3)], atol=1e-9)
    shell = np.concatenate([np.eye(3), -np.eye(3), [[0.6, 0.8, 0]], [[0, 0.6, 0.8]]])[None]
    assert geometric_entropy(shell, 'distance', bins=8)[0] == pytest.approx(0.0)


def test_attention_relevance_rewards_mass_from_few_words():
    # Keys: visual 0 and 1, then 3 text tokens. Rows: the 3 text tokens.
    weights = torch.tensor([[0.6, 0.2, 0.2, 0.0, 0.0],
                            [0.0, 0.2, 0.4, 0.4, 0.0],
                            [0.0, 0.2, 0.3, 0.3, 0.2]])
    probe = ProbeResult(weights, torch.tensor([2, 3, 4]), torch.arange(5))
    positions, mass_focus = attention_relevance(probe, 2, 'mass_focus')
    _, focus = attention_relevance(probe, 2, 'focus')
    assert positions.tolist() == [0, 1]
    np.testing.assert_allclose(focus, [1.0, 0.0], atol=1e-6)  # one word vs all words
    np.testing.assert_allclose(mass_focus, [0.2, 0.0], atol=1e-6)


def test_kv_reuse_leaves_outputs_unchanged_when_the_observation_does_not_change(policy):
    observation = make_observation(0)
    policy.configure('dense', Budget())
    dense, _ = policy.step(observation)
    pruner = create_pruner('info_entropy')
    policy.configure(pruner, Budget(keep_ratio=0.25))
    policy.reset()
    _, first = policy.step(observation)
    assert first.full_step  # no cache yet: computed in full, keys/values kept
    actions, stats = policy.step(observation)
    assert not stats.full_step
    assert stats.tokens_kept == 24 and stats.tokens_reused == 96 - 24  # every other is static
    np.testing.assert_allclose(actions, dense, rtol=1e-4, atol=1e-5)
    assert stats.flops_actual < 0.6 * stats.flops_dense
    # Without reuse the same selection drops the 72 tokens and the actions move.
    policy.configure('info_entropy', Budget(keep_ratio=0.25), pruner_config={'reuse': False})
    policy.reset()
    policy.step(observation)
    dropped, stats = policy.step(observation)
    assert stats.tokens_reused == 0
    assert np.abs(dropped - dense).max() > 1e-3


def test_changed_patches_are_never_reused(policy):
    observation = make_observation(0)
    pruner = create_pruner('info_entropy')
    policy.configure(pruner, Budget(keep_ratio=0.25))
    policy.reset()
    policy.step(observation)
    painted = observation.rgb.copy()
    painted[:16, :16] = (0, 255, 0)  # the top-left 2 x 2 patches of the 8 x 8 grid
    _, stats = policy.step(replace(observation, rgb=painted))
    changed = [0, 1, 8, 9]
    assert not pruner.last_static[changed].any()
    assert pruner.last_static[[i for i in range(64) if i not in changed]].all()
    assert not set(changed) & set(pruner.last_reused.tolist())
    # Changed tokens outrank static ones for the computed budget (after the critical ones).
    assert set(changed) <= set(stats.kept_2d)
    assert stats.tokens_kept + stats.tokens_reused == 96


def test_schedule_moves_from_image_entropy_to_attention_relevance(policy):
    """Score (1 - a) entropy + a relevance with a = t / T; k(t) critical tokens, k1 -> k2."""
    observation = make_observation(0)
    pruner = create_pruner('info_entropy', reuse=False, k1=1.0, k2=0.5, transition_steps=4)
    policy.configure(pruner, Budget(tokens=20))
    policy.reset()
    assert policy.step(observation)[1].full_step  # t = 0: every token measured
    groups = sample_groups(observation.cloud(), policy.config.points)
    entropy = _minmax_per_modality(np.concatenate([
        gray_entropy(patch_pixels(observation.rgb, (8, 8), 14), 32),
        geometric_entropy(groups.neighbourhoods, 'eigen', 32),
    ]), 64)
    is_3d = torch.arange(96) >= 64
    selections = []
    for t in range(1, 6):
        alpha = min(t / 4, 1.0)
        relevance = _minmax_per_modality(pruner._relevance, 64)
        score = torch.as_tensor((1 - alpha) * entropy + alpha * relevance, dtype=torch.float32)
        _, stats = policy.step(observation)
        kept = stats.kept_2d + [64 + i for i in stats.kept_3d]
        # Without reuse every token is computed or dropped: the budget goes by score.
        assert kept == select_top_k(score, is_3d, 20).tolist(), t
        k_critical = round(20 * ((1 - alpha) * 1.0 + alpha * 0.5))
        assert pruner.last_critical.tolist() == select_top_k(score, is_3d, k_critical).tolist()
        selections.append(kept)
    assert len(pruner.last_critical) == 10  # t >= T: k2 x budget
    # The two ends of the schedule rank differently here, so the checks above discriminate.
    by_entropy = select_top_k(torch.as_tensor(entropy, dtype=torch.float32), is_3d, 20)
    assert by_entropy.tolist() != selections[-1]


def test_a_new_instruction_invalidates_the_cache(policy):
    observation = make_observation(0)
    policy.configure('info_entropy', Budget(keep_ratio=0.25))
    policy.reset()
    assert policy.step(observation)[1].full_step
    assert not policy.step(observation)[1].full_step
    _, stats = policy.step(replace(observation, instruction='open the drawer'))
    assert stats.full_step and stats.tokens_reused == 0
