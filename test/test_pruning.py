"""Pruning framework, baselines and tri_stage on a real tiny model."""

import numpy as np
import pytest
import torch

from model_fixtures import check_budget_contract, make_observation, micro_config
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import (
    Budget,
    BudgetError,
    available_pruners,
    create_pruner,
    select_top_k,
)

# The framework's own pruners; test_methods_framework.py runs the same contract (and more) over
# ties, vla_pruner, info_entropy and safe.
PRUNING = ['random', 'fastv', 'tri_stage']


@pytest.fixture(scope='module')
def policy():
    torch.manual_seed(0)
    return Policy.from_preset('tiny', device='cpu', seed=0)


def _pruned_step(policy, name, budget, observations, **config):
    """Reset, then step until the pruner actually prunes (tri_stage starts with a full step)."""
    policy.configure(name, budget, pruner_config=config or None)
    policy.reset()
    for observation in observations:
        actions, stats = policy.step(observation)
        if not stats.full_step:
            return actions, stats
    raise AssertionError(f'{name} never pruned')


def test_select_top_k_exact_with_floors_and_ties():
    scores = torch.tensor([5.0, 5.0, 1.0, 0.0, 9.0, 0.5])
    is_3d = torch.tensor([False, False, False, True, True, True])
    assert select_top_k(scores, is_3d, 2).tolist() == [0, 4]  # tie broken by lower index
    kept = select_top_k(scores, is_3d, 3, floor_3d=2)
    assert kept.tolist() == [0, 4, 5]
    assert select_top_k(scores, is_3d, 4, floor_2d=3, floor_3d=1).tolist() == [0, 1, 2, 4]
    with pytest.raises(BudgetError):
        select_top_k(scores, is_3d, 7)


def test_budget_validation_and_resolution():
    assert Budget().resolve(64, 32) == 96
    assert Budget(tokens=500).resolve(64, 32) == 96
    assert Budget(keep_ratio=0.25).resolve(64, 32) == 24
    with pytest.raises(BudgetError, match='exceed the budget'):
        Budget(tokens=4, floor_2d=3, floor_3d=2).resolve(64, 32)
    for bad in ({'tokens': 0}, {'keep_ratio': 0.0}, {'keep_ratio': 1.5},
                {'tokens': 3, 'keep_ratio': 0.5}, {'floor_2d': -1}):
        with pytest.raises(BudgetError):
            Budget(**bad)


@pytest.fixture(scope='module')
def micro_policy():
    return Policy.from_config(micro_config(), device='cpu', seed=0)


@pytest.mark.parametrize('name', PRUNING)
def test_budget_met_exactly_at_every_budget(micro_policy, name):
    policy = micro_policy
    observations = [make_observation(seed) for seed in range(2)]
    n_visual = 16 + 16
    for tokens in range(1, n_visual + 1):
        floors = {'floor_2d': 2, 'floor_3d': 2} if tokens >= 4 else {}
        policy.configure(name, Budget(tokens=tokens, **floors))
        policy.reset()
        for observation in observations:
            check_budget_contract(policy.step(observation)[1], tokens, floors)


@torch.no_grad()
def test_dense_equals_unpruned_forward(policy):
    observation = make_observation(1)
    policy.configure('dense', Budget())
    actions, stats = policy.step(observation)
    assert stats.full_step and stats.tokens_kept == 96
    model = policy.model
    from vla_pruned_ros.tokens.points_3d import sample_groups

    groups = sample_groups(observation.cloud(), model.config.points)
    expected = model.denormalize(model.forward_dense(
        model.vision.preprocess(observation.rgb),
        torch.as_tensor(groups.neighbourhoods)[None],
        torch.as_tensor(groups.centres)[None],
        torch.tensor([policy.instructions.encode(observation.instruction)]),
        torch.as_tensor(observation.ee_pose)[None],
    ))[0].numpy()
    np.testing.assert_allclose(actions, expected, rtol=1e-4, atol=1e-5)
    assert stats.flops_actual == pytest.approx(stats.flops_dense)


@pytest.mark.parametrize('name', PRUNING)
def test_deterministic_and_reset_restores_episode_start(policy, name):
    observations = [make_observation(seed) for seed in range(4)]

    def episode():
        policy.configure(name, Budget(keep_ratio=0.25))
        policy.reset()
        return [policy.step(observation) for observation in observations]

    first, second = episode(), episode()
    for (actions_a, stats_a), (actions_b, stats_b) in zip(first, second):
        assert stats_a.kept_2d == stats_b.kept_2d and stats_a.kept_3d == stats_b.kept_3d
        np.testing.assert_array_equal(actions_a, actions_b)


def test_pruning_reduces_flops_and_changes_actions(policy):
    observations = [make_observation(seed) for seed in range(6)]  # vla_pruner warms up 3 steps
    for name in PRUNING:
        actions, stats = _pruned_step(policy, name, Budget(keep_ratio=0.25), observations)
        assert stats.flops_actual < stats.flops_dense, name
        if name in ('random', 'tri_stage'):  # these cut before the decoder, not at layer 3 of 4
            assert stats.flops_actual < 0.7 * stats.flops_dense, name
        assert np.isfinite(actions).all()


def test_fastv_keeps_the_tokens_the_last_instruction_token_attends_to(policy):
    from vla_pruned_ros.model.runner import AttentionProbe, LayerRunner

    observation = make_observation(2)
    policy.configure('fastv', Budget(tokens=10), pruner_config={'layer': 3})
    _, stats = policy.step(observation)
    assert stats.stages == [('fastv', stats.tokens_2d_kept, stats.tokens_3d_kept)]
    assert stats.tokens_kept == 10
    # Recompute layer-2 attention of the last instruction token on the unpruned sequence.
    captured = {}

    class Spy(type(create_pruner('dense'))):
        def plan(self, ctx):
            from vla_pruned_ros.pruning import StepPlan
            return StepPlan(probes={AttentionProbe(2, 'last_text')}, full_step=True)

        def after_step(self, ctx, outcome):
            captured['received'] = outcome.probes[AttentionProbe(2, 'last_text')].received()

    policy.configure(Spy())
    policy.step(observation)
    received = captured['received'][:96]
    expected = torch.sort(torch.topk(received, 10).indices).values.tolist()
    assert stats.kept_2d + [64 + i for i in stats.kept_3d] == expected
    assert isinstance(policy.runner, LayerRunner)


def test_tri_stage_first_step_is_full_then_prunes_before_and_inside_decoder(policy):
    policy.configure('tri_stage', Budget(keep_ratio=0.25))
    policy.reset()
    _, first = policy.step(make_observation(0))
    assert first.full_step and first.tokens_kept == 96
    _, second = policy.step(make_observation(0))
    assert not second.full_step
    names = [stage[0] for stage in second.stages]
    assert names == ['stage1_modality', 'stage2_semantic']
    stage1 = second.stages[0][1] + second.stages[0][2]
    assert stage1 == round(24 * 1.5)  # stage-2 slack
    assert second.tokens_kept == 24


def test_tri_stage_stage_switches(policy):
    observations = [make_observation(0)] * 3
    budget = Budget(keep_ratio=0.25)
    _, no_s2 = _pruned_step(policy, 'tri_stage', budget, observations, stage2=False)
    assert [s[0] for s in no_s2.stages] == ['stage1_modality']
    assert no_s2.stages[0][1] + no_s2.stages[0][2] == 24  # straight to the budget
    _, no_s1 = _pruned_step(policy, 'tri_stage', budget, observations, stage1=False)
    assert [s[0] for s in no_s1.stages] == ['stage2_semantic']
    with pytest.raises(ValueError, match='stage1 or stage2'):
        create_pruner('tri_stage', stage1=False, stage2=False)


def test_tri_stage_segmentation_needs_stage3(policy):
    """A threshold of 0 makes every shift a new segment, unless stage 3 is off."""
    observations = [make_observation(seed) for seed in range(6)]
    budget = Budget(keep_ratio=0.25)
    for stage3, expect_full_again in ((True, True), (False, False)):
        policy.configure('tri_stage', budget, pruner_config={
            'stage3': stage3, 'shift_threshold': 0.0, 'min_segment_steps': 1})
        policy.reset()
        full = [policy.step(observation)[1].full_step for observation in observations]
        assert full[0] and not full[1]
        assert any(full[2:]) == expect_full_again


def test_tri_stage_segments_last_at_least_min_segment_steps(policy):
    """Shifts on every step (threshold 0) open a segment only every min_segment_steps."""
    observations = [make_observation(seed) for seed in range(10)]
    for min_steps in (1, 3):
        policy.configure('tri_stage', Budget(keep_ratio=0.25), pruner_config={
            'shift_threshold': 0.0, 'min_segment_steps': min_steps})
        policy.reset()
        full = [policy.step(observation)[1].full_step for observation in observations]
        starts = [index for index, value in enumerate(full) if value]
        assert starts[0] == 0
        # every segment runs min_steps pruned steps before the next full step
        assert all(b - a - 1 >= min_steps for a, b in zip(starts, starts[1:]))
        assert len(starts) >= (2 if min_steps == 3 else 3)
    with pytest.raises(ValueError, match='min_segment_steps'):
        create_pruner('tri_stage', min_segment_steps=0)


def test_tri_stage_modality_split_follows_salience(policy):
    """Stage 1 gives the modality with the larger L1 salience share the larger quota."""
    pruner = create_pruner('tri_stage', stage2=False, min_modality_share=0.0)
    policy.configure(pruner, Budget(tokens=40))
    policy.reset()
    policy.step(make_observation(0))  # full step: salience of every token measured
    share_2d, share_3d = pruner._share.value
    _, stats = policy.step(make_observation(0))
    quota_2d, quota_3d = stats.stages[0][1], stats.stages[0][2]
    assert (quota_2d > quota_3d) == (share_2d > share_3d)
    assert quota_2d == pytest.approx(40 * share_2d, abs=1)


def test_tri_stage_stage2_split_keeps_stage1_shares_in_the_decoder(policy):
    """stage2_split: stage 2 keeps per modality what stage 1's split gives, not attention's."""
    observations = [make_observation(0)] * 3
    budget = Budget(tokens=24, floor_2d=0, floor_3d=0)
    kept_3d = {}
    for split in (False, True):
        pruner = create_pruner('tri_stage', stage2_split=split, min_modality_share=0.5)
        _, stats = _pruned_step(policy, pruner, budget, observations)
        stage1, stage2 = stats.stages
        assert stage2[1] + stage2[2] == 24
        kept_3d[split] = stage2[2]
        if split:  # a share of 0.5 each pins stage 1's split of the 24 at 12 + 12
            assert (stage2[1], stage2[2]) == (12, 12)
            assert stage1[1] == stage1[2] == 18  # 36 = 24 x (1 + slack), split alike
    assert kept_3d[False] != 12  # attention alone splits otherwise


def test_tri_stage_pointer_protect_keeps_the_groups_the_pointers_name(policy):
    """Extension: the 3D groups the model's pointers name survive stage 1 and stage 2."""
    observation = make_observation(0)
    policy.configure('dense')
    policy.reset()
    policy.step(observation)
    mass = torch.softmax(policy.last_pointer.logits[0].float(), dim=-1).sum(dim=0).numpy()
    named = set(np.argsort(-mass)[:3].tolist())  # the three groups the pointers name most
    threshold = float(np.sort(mass)[-3])
    for protect in (True, False):
        pruner = create_pruner('tri_stage', pointer_protect=protect, pointer_min_mass=threshold)
        policy.configure(pruner, Budget(tokens=12, floor_3d=0))
        policy.reset()
        assert policy.step(observation)[1].full_step  # the pointers see every group
        if protect:  # StepContext.pointer_mass: both pointers' probabilities, summed
            np.testing.assert_allclose(pruner._pointer_3d, mass, rtol=1e-5)
            assert pruner._pointer_3d.sum() == pytest.approx(2.0, abs=1e-5)
        _, stats = policy.step(observation)
        assert not stats.full_step
        if protect:
            assert named <= set(stats.kept_3d)
            # carried mass: the groups the pointers saw this step (stage 1's survivors) take
            # this step's mass (spread over fewer groups, so larger), the others keep the full
            # step's value
            seen = policy.last_pointer.logits.shape[-1]
            changed = ~np.isclose(pruner._pointer_3d, mass, rtol=1e-5)
            assert changed[stats.kept_3d].all() and changed.sum() == seen < len(mass)
    # without the extension the small budget does not keep them all
    assert not named <= set(stats.kept_3d)


def test_tri_stage_pointer_first_keeps_the_groups_this_steps_pointers_name(policy):
    """pointer_first: the pointers score every group before stage 1, which keeps the named."""
    previous, current = make_observation(0), make_observation(1)
    policy.configure('dense')
    policy.reset()
    policy.step(current)
    dense_pointer = policy.last_pointer
    mass = torch.softmax(dense_pointer.logits[0].float(), dim=-1).sum(dim=0).numpy()
    named = set(np.argsort(-mass)[:3].tolist())
    threshold = float(np.sort(mass)[-3])
    kept = {}
    for first in (True, False):
        pruner = create_pruner('tri_stage', pointer_protect=True, pointer_first=first,
                               pointer_min_mass=threshold)
        policy.configure(pruner, Budget(tokens=12, floor_3d=0))
        policy.reset()
        assert policy.step(previous)[1].full_step  # the carried pointer is of another scene
        _, stats = policy.step(current)
        assert not stats.full_step
        kept[first] = set(stats.kept_3d)
        scored = policy.last_pointer.logits.shape[-1]
        if first:  # the pointers saw what the dense policy's saw, and answered alike
            assert scored == len(mass)
            torch.testing.assert_close(policy.last_pointer.points, dense_pointer.points)
        else:
            assert scored == stats.stages[0][2] < len(mass)  # stage 1's 3D survivors
    assert named <= kept[True]
    assert not named <= kept[False]
    with pytest.raises(ValueError, match='pointer_protect'):
        create_pruner('tri_stage', pointer_first=True)


def test_every_registered_pruner_is_covered_by_a_contract_test():
    from test_methods_framework import METHODS

    assert set(available_pruners()) == {'dense', *PRUNING, *METHODS}


def test_unknown_pruner_and_config_are_rejected(policy):
    with pytest.raises(ValueError, match='unknown pruner'):
        policy.configure('nonexistent')
    with pytest.raises(ValueError, match='unknown'):
        policy.configure('fastv', pruner_config={'lyaer': 2})
