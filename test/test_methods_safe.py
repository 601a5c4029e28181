"""SAFE-Pruner: keyframes on attention shifts, forecast by correspondence, score formula."""

import pytest
import torch

from model_fixtures import make_observation, micro_config
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget, create_pruner
from vla_pruned_ros.pruning.correspondence import match_by_cosine


@pytest.fixture(scope='module')
def sharp_policy():
    """
    The micro model with a sharpened layer-0 attention.

    With random weights the last instruction token attends almost uniformly over the image,
    so its attention hardly moves whatever the scene; scaling the layer-0 queries makes it
    peaked and content dependent, as in a trained model.
    """
    policy = Policy.from_config(micro_config(), device='cpu', seed=0)
    with torch.no_grad():
        policy.model.decoder.layers[0].self_attn.q_proj.weight.mul_(100.0)
    return policy


def test_keyframe_on_an_abrupt_attention_change_then_pruning_resumes(sharp_policy):
    pruner = create_pruner('safe', keyframe_similarity=0.99)
    sharp_policy.configure(pruner, Budget(keep_ratio=0.25))
    sharp_policy.reset()
    scene, moved = make_observation(0), make_observation(1)  # the box moves, noise changes
    full, similarity = [], []
    for observation in (scene, scene, moved, moved, scene):
        _, stats = sharp_policy.step(observation)
        full.append(stats.full_step)
        similarity.append(pruner.last_similarity)
        assert stats.tokens_kept == (32 if stats.full_step else 8)
    # Step 0: first keyframe. Step 1: same scene, forecast == attention. Step 2: attention
    # moved away from the forecast -> keyframe (unpruned, cache refreshed). Step 3: the
    # refreshed cache forecasts it again. Step 4: back to the first scene -> keyframe.
    assert full == [True, False, True, False, True]
    assert similarity[1] == pytest.approx(1.0, abs=1e-6)
    assert similarity[2] < 0.99 < similarity[3]
    assert pruner.keyframes == 3


def test_forced_keyframe_interval(sharp_policy):
    pruner = create_pruner('safe', max_keyframe_interval=2, keyframe_similarity=-1.0)
    sharp_policy.configure(pruner, Budget(keep_ratio=0.25))
    sharp_policy.reset()
    observation = make_observation(0)
    full = [sharp_policy.step(observation)[1].full_step for _ in range(7)]
    assert full == [True, False, False, True, False, False, True]


def test_without_forecast_the_score_is_early_action_query_attention():
    policy = Policy.from_preset('tiny', device='cpu', seed=0)
    observation = make_observation(3)
    policy.configure('safe', Budget(tokens=20), pruner_config={'forecast_weight': 0.0})
    policy.reset()
    policy.step(observation)
    _, safe = policy.step(observation)
    assert not safe.full_step and safe.stages[0][0] == 'safe'
    policy.configure('fastv', Budget(tokens=20), pruner_config={'queries': 'action'})
    _, fastv = policy.step(observation)
    assert (safe.kept_2d, safe.kept_3d) == (fastv.kept_2d, fastv.kept_3d)
    # With the forecast on, keyframe saliency changes the choice.
    policy.configure('safe', Budget(tokens=20), pruner_config={'forecast_weight': 100.0})
    policy.reset()
    policy.step(observation)
    _, forecast = policy.step(observation)
    assert (forecast.kept_2d, forecast.kept_3d) != (fastv.kept_2d, fastv.kept_3d)


def test_correspondence_by_cosine_stays_within_a_modality():
    before = torch.eye(4)
    is_3d_before = torch.tensor([False, False, True, True])
    # Current tokens: permuted keyframe tokens, plus a 2D token most similar to a 3D one.
    now = torch.stack([before[1], before[0] * 2.0, before[3], before[2] + 0.1 * before[0],
                       before[2] + 0.2 * before[1]])
    is_3d_now = torch.tensor([False, False, True, True, False])
    match = match_by_cosine(now, before, is_3d_now, is_3d_before)
    assert match.tolist() == [1, 0, 3, 2, 1]
