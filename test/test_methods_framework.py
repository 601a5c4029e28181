"""TIES, VLA-Pruner, VLA-InfoEntropy and SAFE-Pruner under the framework's contract."""

from dataclasses import replace

import numpy as np
import pytest

from model_fixtures import check_budget_contract, make_observation, micro_config
from vla_pruned_ros.policy import Policy, PrunerDepthError
from vla_pruned_ros.pruning import Budget, available_pruners, create_pruner

METHODS = ['ties', 'vla_pruner', 'info_entropy', 'safe']
# Short warm-ups so that every budget of the sweep reaches pruned steps.
SWEEP_CONFIG = {'vla_pruner': {'warmup_steps': 1}}


@pytest.fixture(scope='module')
def micro_policy():
    return Policy.from_config(micro_config(), device='cpu', seed=0)


def test_all_methods_are_registered():
    assert set(METHODS) <= set(available_pruners())


@pytest.mark.parametrize('name', METHODS)
def test_budget_met_exactly_at_every_budget(micro_policy, name):
    """Computed visual tokens == budget on every pruned step, floors held, indices valid."""
    policy = micro_policy
    base = make_observation(0)
    # Repeat, then change: temporal methods prune on repeats and re-plan on the change.
    observations = [base, replace(base, stamp_ns=7), make_observation(1)]
    n_visual = 16 + 16
    pruned = 0
    for tokens in range(1, n_visual + 1):
        floors = {'floor_2d': 2, 'floor_3d': 2} if tokens >= 4 else {}
        policy.configure(name, Budget(tokens=tokens, **floors),
                         pruner_config=SWEEP_CONFIG.get(name))
        policy.reset()
        for observation in observations:
            pruned += check_budget_contract(policy.step(observation)[1], tokens, floors)
    assert pruned >= n_visual - 1  # every budget below all tokens pruned at least once


@pytest.mark.parametrize('name', METHODS)
def test_deterministic_and_reset_clears_episode_state(micro_policy, name):
    """Same episode twice gives the same selections and actions, whatever ran in between."""
    policy = micro_policy
    episode_a = [make_observation(seed) for seed in (0, 0, 1, 2, 2)]
    episode_b = [make_observation(seed) for seed in (5, 4, 3)]

    def run(observations):
        policy.reset()
        return [policy.step(observation) for observation in observations]

    policy.configure(name, Budget(keep_ratio=0.25), pruner_config=SWEEP_CONFIG.get(name))
    first = run(episode_a)
    run(episode_b)
    again = run(episode_a)
    assert any(not stats.full_step for _, stats in first)
    for (actions_a, stats_a), (actions_b, stats_b) in zip(first, again):
        assert stats_a.full_step == stats_b.full_step
        assert stats_a.kept_2d == stats_b.kept_2d and stats_a.kept_3d == stats_b.kept_3d
        assert stats_a.tokens_reused == stats_b.tokens_reused
        np.testing.assert_array_equal(actions_a, actions_b)


@pytest.mark.parametrize('name', METHODS)
def test_pruned_steps_cost_fewer_flops(micro_policy, name):
    policy = micro_policy
    policy.configure(name, Budget(keep_ratio=0.25), pruner_config=SWEEP_CONFIG.get(name))
    policy.reset()
    steps = [policy.step(make_observation(seed))[1] for seed in (0, 0, 1, 1)]
    pruned = [stats for stats in steps if not stats.full_step]
    assert pruned and all(stats.flops_actual < stats.flops_dense for stats in pruned)
    assert all('tokens_reused' in stats.to_dict() for stats in steps)


@pytest.mark.parametrize('name', METHODS)
def test_bad_config_is_rejected_at_configure(micro_policy, name):
    with pytest.raises(ValueError, match='unknown'):
        micro_policy.configure(name, pruner_config={'no_such_field': 1})
    bad = {'ties': {'variant': 'medium'}, 'vla_pruner': {'weight_order': 'random'},
           'info_entropy': {'entropy_3d': 'colour'}, 'safe': {'layer': 0}}[name]
    with pytest.raises(ValueError):
        create_pruner(name, **bad)


# The layer each pruner cuts before by default, and the setting that moves it: a 2-layer
# decoder (the lite and narrow presets) has only layers 0 and 1.
DEPTH_SETTINGS = {'tri_stage': ('semantic_layer', 2), 'vla_pruner': ('layer', 3),
                  'safe': ('layer', 3), 'fastv': ('layer', 3)}


@pytest.mark.parametrize('name', sorted(DEPTH_SETTINGS))
def test_a_cut_past_the_last_layer_is_a_clear_error_and_a_shallower_one_runs(name):
    policy = _two_layer_policy()
    setting, default = DEPTH_SETTINGS[name]
    base = SWEEP_CONFIG.get(name, {})
    policy.configure(name, Budget(keep_ratio=0.25), pruner_config=base)
    observations = [make_observation(seed) for seed in (0, 0, 1, 1)]
    with pytest.raises(PrunerDepthError, match=f'layer {default}, .* has 2 layers'):
        for observation in observations:
            policy.step(observation)
    # the same policy, told to cut before layer 1, keeps the budget on its pruned steps
    policy.configure(name, pruner_config={**base, setting: 1})
    policy.reset()
    steps = [policy.step(observation)[1] for observation in observations]
    pruned = [stats for stats in steps if not stats.full_step]
    assert pruned and all(stats.tokens_kept == 8 for stats in pruned)


def test_ties_needs_two_layers_below_its_cut():
    # tau compares layers that have run by the cut: K = 1 leaves one, so a 2-layer decoder
    # cannot run TIES at all, and says so
    policy = _two_layer_policy()
    policy.configure('ties', Budget(keep_ratio=0.25))
    with pytest.raises(PrunerDepthError, match='layer 3, .* has 2 layers'):
        policy.step(make_observation(0))
    for bad in ({'layer': 1}, {'layer': 2, 'tau_layers': (0, 2)}):
        with pytest.raises(ValueError, match='below layer K'):
            policy.configure('ties', pruner_config=bad)


def _two_layer_policy() -> Policy:
    config = micro_config()
    config.decoder = replace(config.decoder, num_layers=2)
    return Policy.from_config(config, device='cpu', seed=0)
