"""TIES: Kendall tau-b, the tau -> split mapping, hard/soft variants, frame gate, calibration."""

from dataclasses import replace
import itertools
import json

import numpy as np
import pytest
import torch

from model_fixtures import make_observation
from vla_pruned_ros.cli import main
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget, create_pruner
from vla_pruned_ros.pruning.calibration import (
    CalibrationError,
    calibrate_ties,
    load_calibration,
    summarise,
)
from vla_pruned_ros.pruning.ties import kendall_tau_b, top_attention_weight, uniform_picks


@pytest.fixture(scope='module')
def policy():
    return Policy.from_preset('tiny', device='cpu', seed=0)


def _tau_by_counting(x, y):
    """Tau-b from explicit pair counts (the definition)."""
    p = q = t = u = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            t += 1
        elif sy == 0:
            u += 1
        elif sx == sy:
            p += 1
        else:
            q += 1
    return (p - q) / np.sqrt((p + q + t) * (p + q + u))


def test_kendall_tau_b_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, 9).astype(float)
        y = rng.integers(0, 4, 9).astype(float)
        expected = _tau_by_counting(x, y)
        assert kendall_tau_b(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected)
    ranks = torch.arange(6.0)
    assert kendall_tau_b(ranks, ranks) == pytest.approx(1.0)
    assert kendall_tau_b(ranks, -ranks) == pytest.approx(-1.0)
    assert kendall_tau_b(torch.ones(4), ranks[:4]) == 0.0  # all tied: undefined -> 0


def test_soft_weight_mapping_and_direction_flag():
    low, median, high = -0.2, 0.1, 0.4
    reliable = [top_attention_weight(t, low, median, high, 'high_reliable')
                for t in (-1.0, low, median, high, 1.0)]
    assert reliable == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    unreliable = top_attention_weight(0.25, low, median, high, 'high_unreliable')
    assert unreliable == pytest.approx(1.0 - top_attention_weight(0.25, low, median, high,
                                                                 'high_reliable'))
    assert unreliable == pytest.approx(0.25)


def test_uniform_picks_are_evenly_strided():
    assert uniform_picks(torch.arange(10), 5).tolist() == [1, 3, 5, 7, 9]
    assert uniform_picks(torch.arange(100, 104), 4).tolist() == [100, 101, 102, 103]
    assert uniform_picks(torch.arange(10), 0).numel() == 0


def _kept(stats):
    return stats.kept_2d + [64 + i for i in stats.kept_3d]


def test_hard_variant_switches_between_attention_and_sampling(policy):
    """
    Hard-TIES: tau above the threshold -> all tokens sampled, else all by attention.

    tau lies in [-1, 1]: a threshold of -1.1 is always exceeded, one of 1.1 never.
    """
    observation = make_observation(2)
    budget = Budget(tokens=12)
    policy.configure('ties', budget, pruner_config={'variant': 'hard', 'hard_threshold': -1.1})
    _, sampled = policy.step(observation)
    assert sampled.stages == [('ties', sampled.tokens_2d_kept, sampled.tokens_3d_kept)]
    assert _kept(sampled) == uniform_picks(torch.arange(96), 12).tolist()
    # Never above: every token by layer K-1 attention, i.e. FastV's choice at the same layer.
    policy.configure('ties', budget, pruner_config={'variant': 'hard', 'hard_threshold': 1.1})
    _, attention = policy.step(observation)
    policy.configure('fastv', budget, pruner_config={'layer': 3})
    _, fastv = policy.step(observation)
    assert _kept(attention) == _kept(fastv)
    # The direction flag mirrors the decision.
    policy.configure('ties', budget, pruner_config={
        'variant': 'hard', 'hard_threshold': -1.1, 'tau_direction': 'high_reliable'})
    _, mirrored = policy.step(observation)
    assert _kept(mirrored) == _kept(fastv)


def test_diverse_fill_and_soft_split(policy):
    pruner = create_pruner('ties', fill='diverse', tau_low=-1.0, tau_median=-1.0, tau_high=1.0,
                           tau_direction='high_reliable')
    policy.configure(pruner, Budget(tokens=20))
    policy.reset()
    _, stats = policy.step(make_observation(0))
    # w = 0.5 + 0.5 (tau + 1) / 2: n_top = floor(w * 20), the rest from the diverse fill.
    expected_w = 0.5 + 0.25 * (pruner.tau + 1.0)
    assert pruner.weight == pytest.approx(min(expected_w, 1.0))
    assert stats.tokens_kept == 20


def test_tau_is_recomputed_only_when_the_frame_moves_from_the_anchor(policy):
    pruner = create_pruner('ties')
    policy.configure(pruner, Budget(keep_ratio=0.25))
    policy.reset()
    base = make_observation(0)
    for _ in range(3):
        policy.step(base)
    assert pruner.recomputed == 1  # same frame: tau and the split are reused
    other = replace(base, rgb=255 - base.rgb)
    policy.step(other)
    assert pruner.recomputed == 2  # a different frame: new tau, new anchor
    always = create_pruner('ties', similarity_threshold=1.01)
    policy.configure(always)
    policy.reset()
    for _ in range(3):
        policy.step(base)
    assert always.recomputed == 3


def test_calibration_summary_and_file_round_trip(tmp_path, policy):
    calibration = calibrate_ties(policy, [make_observation(seed) for seed in range(3)])
    assert calibration.frames == 3 and len(calibration.taus) == 3
    assert calibration.tau_median == pytest.approx(float(np.median(calibration.taus)))
    path = tmp_path / 'ties.json'
    calibration.save(str(path))
    loaded = load_calibration(str(path))
    assert loaded == calibration
    pruner = create_pruner('ties', calibration_file=str(path), low_quantile=0.0,
                           high_quantile=1.0)
    assert pruner.tau_median == calibration.tau_median
    assert pruner.tau_low == pytest.approx(min(calibration.taus))
    assert pruner.tau_high == pytest.approx(max(calibration.taus))
    with pytest.raises(CalibrationError, match='layer K=3'):
        create_pruner('ties', calibration_file=str(path), layer=2)
    (tmp_path / 'bad.json').write_text(json.dumps({'tau_median': 0.1}))
    with pytest.raises(CalibrationError, match='not a TIES calibration'):
        create_pruner('ties', calibration_file=str(tmp_path / 'bad.json'))
    with pytest.raises(CalibrationError, match='cannot read'):
        create_pruner('ties', calibration_file=str(tmp_path / 'missing.json'))
    summary = summarise([0.0, 0.5, 1.0], layer=3, tau_layers=[0, 1, 2], queries='last_text',
                        rank_k=0, keep_ratio=0.25)
    assert summary.quantile(0.25) == pytest.approx(0.25)
    assert summary.quantile(0.5) == summary.tau_median == 0.5


def test_calibrate_command_on_a_recorded_bag(tmp_path, capsys):
    from vla_pruned_ros.sim.record import record_episodes

    bag = tmp_path / 'demo'
    record_episodes(bag, ['reach'], 1, seed=3, image_size=(64, 64))
    out = tmp_path / 'ties_calibration.json'
    assert main(['ties-calibrate', '--bag', str(bag), '--preset', 'tiny', '--device', 'cpu',
                 '--frames', '4', '--out', str(out)]) == 0
    assert 'median' in capsys.readouterr().out
    calibration = load_calibration(str(out))
    assert calibration.frames == 4 and calibration.sources == [str(bag)]
    assert calibration.model == 'preset:tiny'
    values = [calibration.quantile(q) for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert values == sorted(values) and -1.0 <= values[0] <= values[-1] <= 1.0
    with pytest.raises(SystemExit, match='ties-calibrate'):
        main(['ties-calibrate', '--bag', str(tmp_path / 'nothing'), '--out', str(out)])
