"""VLA-Pruner: warm-up, history weights, smoothed action score, diversity filter."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from model_fixtures import make_observation
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget, create_pruner
from vla_pruned_ros.pruning.diversity import (
    PICKED_BASE,
    cosine_distance,
    diversity_scores,
    max_min_order,
)
from vla_pruned_ros.pruning.vla_pruner import history_weights


@pytest.fixture(scope='module')
def policy():
    return Policy.from_preset('tiny', device='cpu', seed=0)


def test_history_weights_in_both_documented_orders():
    # Newest first. Released code: [g^(w-1) .. g^0] on av_hist[-1 - i] -> newest gets 0.64.
    assert history_weights(3, 3, 0.8, 'code') == pytest.approx([0.64, 0.8, 1.0])
    # Paper: recent = heavier.
    assert history_weights(3, 3, 0.8, 'paper') == pytest.approx([1.0, 0.8, 0.64])
    assert history_weights(2, 3, 0.8, 'code') == pytest.approx([0.64, 0.8])


def test_warmup_steps_do_not_prune(policy):
    observation = make_observation(0)
    for warmup, expected in ((None, [True, True, True, False, False]),
                             (1, [True, False, False, False, False])):
        policy.configure('vla_pruner', Budget(keep_ratio=0.25),
                         pruner_config={'warmup_steps': warmup})
        policy.reset()
        full = [policy.step(observation)[1].full_step for _ in expected]
        assert full == expected


def test_action_score_is_the_weighted_normalised_history(policy):
    """S_act = sum_i w_i a_(t-1-i) / total, with each order's weights; pruned enter as 0."""
    base = make_observation(0)
    # Same depth (same 3D groups, so no centre matching), different images: distinct entries.
    frames = [replace(base, rgb=make_observation(seed).rgb) for seed in (1, 2, 3, 4)]
    scores = {}
    for order in ('code', 'paper'):
        # Action attention read after the cut (layer 3 of 4), as layer 15 of 32 is after K=3.
        pruner = create_pruner('vla_pruner', weight_order=order, action_layer=3)
        policy.configure(pruner, Budget(keep_ratio=0.25))
        policy.reset()
        for frame in frames[:3]:
            assert policy.step(frame)[1].full_step  # warm-up fills the history
        history = [values.copy() for values, _ in pruner._history]  # oldest first
        _, stats = policy.step(frames[3])
        assert not stats.full_step
        weights = history_weights(3, 3, 0.8, order)  # newest first
        expected = sum(w * h for w, h in zip(weights, reversed(history)))
        scores[order] = pruner.last_action_score.numpy()
        np.testing.assert_allclose(scores[order], expected / expected.sum(), rtol=1e-5,
                                   atol=1e-8)
        # Pruned positions enter the history as zeros (the released code's behaviour).
        newest = pruner._history[-1][0]
        kept = sorted(stats.kept_2d + [64 + i for i in stats.kept_3d])
        dropped = np.setdiff1d(np.arange(96), kept)
        assert np.all(newest[dropped] == 0.0) and np.all(newest[kept] > 0.0)
    assert not np.allclose(scores['code'], scores['paper'])


def test_max_min_diversity_picks_the_farthest_tokens():
    # Two tight clusters along x and y, one lone token along z, a near-duplicate of the z one.
    features = torch.tensor([
        [1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [1.0, 0.0, 0.01],
        [0.0, 1.0, 0.0], [0.01, 1.0, 0.0],
        [0.0, 0.0, 1.0], [0.0, 0.02, 1.0],
    ])
    picks, nearest = max_min_order(features, 3)
    # First pick maximises its second-smallest distance: the x cluster's members have a
    # close neighbour, so do y's and z's; the largest such distance is z's pair (0.02 apart).
    distance = cosine_distance(features)
    second = torch.sort(distance, dim=0).values[1]
    assert int(picks[0]) == int(torch.argmax(second))
    # Three picks cover the three directions: min pairwise distance is maximal (~1).
    chosen = features[picks]
    assert {int(torch.argmax(row)) for row in chosen} == {0, 1, 2}
    assert nearest[picks].tolist() == [0.0, 0.0, 0.0]
    scores = diversity_scores(features, 3, candidates=torch.tensor([0, 1, 3, 5]))
    assert torch.isinf(scores[[2, 4, 6]]).all()
    top = torch.topk(scores, 3).indices
    assert sorted(top.tolist()) == [0, 3, 5] or sorted(top.tolist()) == [1, 3, 5]
    assert float(scores[top].min()) > PICKED_BASE


def test_union_then_diversity_reaches_the_budget(policy):
    pruner = create_pruner('vla_pruner', warmup_steps=0)
    policy.configure(pruner, Budget(tokens=16))
    policy.reset()
    _, stats = policy.step(make_observation(0))
    # With no history the action score is all zeros; the union is still at least the budget.
    assert stats.tokens_kept == 16 and stats.stages[0][0] == 'vla_pruner'
    policy.reset()
    for _ in range(4):
        _, stats = policy.step(make_observation(1))
    assert stats.tokens_kept == 16


def test_mean_prefill_semantic_variant_uses_all_query_rows(policy):
    from vla_pruned_ros.model.runner import AttentionProbe

    pruner = create_pruner('vla_pruner', semantic='mean_prefill', warmup_steps=0)
    policy.configure(pruner, Budget(tokens=16))
    policy.reset()
    policy.step(make_observation(0))
    assert pruner._semantic_probe() == AttentionProbe(2, 'all')
