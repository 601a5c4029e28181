"""The geometry branch and refined pointer placement: what the sim-branch presets add."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model_fixtures import make_observation
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.flops import FlopsModel
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import PointerOutput, place_points
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget
from vla_pruned_ros.train.trainer import warm_start


def _model(mode: str = 'add', hidden: int = 32, summary: int = 4, seed: int = 0):
    config = preset_config('tiny')
    config.head_branch, config.head_branch_summary = hidden, summary
    config.head_branch_mode = mode
    torch.manual_seed(seed)
    return MultiModalVLA(config).eval()


def _inputs(batch: int = 2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    config = preset_config('tiny')
    states = torch.randn(batch, config.horizon, config.decoder.hidden_size, generator=generator)
    points = torch.randn(batch, len(config.pointers), 3, generator=generator) * 0.1
    points[..., 2] += 0.5
    pose = torch.cat([torch.randn(batch, 3, generator=generator) * 0.1,
                      torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(batch, -1)], dim=1)
    return states, PointerOutput(torch.zeros(batch, 2, 0), points), pose


def test_a_model_warm_started_without_the_branch_acts_as_its_source():
    source = MultiModalVLA(preset_config('tiny')).eval()
    target = _model('add')
    warm_start(target, source)
    states, output, pose = _inputs()
    with torch.no_grad():
        assert torch.allclose(target.head(states, output, pose),
                              source.head(states, output, pose))


def test_the_branch_reads_the_points_and_the_states_through_its_summary_only():
    model = _model('only')
    for parameter in model.branch.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    states, output, pose = _inputs()
    with torch.no_grad():
        reference = model.head(states, output, pose)
        assert reference.shape == (2, model.config.horizon, model.config.action_dim)
        moved = PointerOutput(output.logits, output.points + torch.tensor([0.05, 0.0, 0.0]))
        assert not torch.allclose(model.head(states, moved, pose), reference)
        assert not torch.allclose(model.head(states + 1.0, output, pose), reference)
        # 'only': the action head does not reach the actions
        torch.nn.init.normal_(model.action_head[0].weight, std=1.0)
        assert torch.allclose(model.head(states, output, pose), reference)
        # only the mean over the action queries reaches the branch: permuting them changes
        # nothing, and the summary is ``head_branch_summary`` values wide
        assert torch.allclose(model.head(states.flip(1), output, pose), reference, atol=1e-6)
    assert model.branch.summary.out_features == 4


def test_without_a_summary_the_branch_is_blind_to_the_decoder():
    model = _model('only', summary=0)
    for parameter in model.branch.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    states, output, pose = _inputs()
    with torch.no_grad():
        assert torch.allclose(model.head(states, output, pose),
                              model.head(torch.randn_like(states), output, pose))


def test_the_head_stage_trains_the_branch():
    model = _model('add')
    names = {id(p) for p in model.head_parameters()}
    assert all(id(p) in names for p in model.branch.parameters())
    assert not any(id(p) in names for p in model.pointer_parameters())


@pytest.mark.parametrize('mode', ['add', 'only'])
def test_branch_flops_match_torch_flop_counter(mode):
    model = _model(mode)
    flops = FlopsModel.from_model(model)
    states, output, pose = _inputs(batch=1)
    with FlopCounterMode(display=False) as counter:
        model.head(states, output, pose)
    assert flops.action_head() == pytest.approx(counter.get_total_flops(), rel=1e-6)
    without = FlopsModel.from_model(MultiModalVLA(preset_config('tiny')))
    assert flops.geometry_branch() > 0 and without.geometry_branch() == 0
    assert (flops.action_head() < without.action_head()) == (mode == 'only')


@pytest.mark.parametrize('overrides, message', [
    ({'head_branch': -1}, '>= 0'),
    ({'head_branch': 8, 'head_branch_summary': -2}, '>= 0'),
    ({'head_branch': 8, 'head_branch_mode': 'replace'}, 'head_branch_mode'),
    ({'head_branch': 8, 'pointers': [], 'camera_to_base': None}, 'needs pointers'),
])
def test_bad_branch_settings_are_refused(overrides, message):
    data = preset_config('tiny').to_dict()
    data.update(overrides)
    with pytest.raises(ValueError, match=message):
        MVLAConfig.from_dict(data)


def test_the_branch_presets_build_and_round_trip(tmp_path):
    for name, mode in (('sim-branch', 'add'), ('sim-branch-only', 'only'),
                       ('sim-branch-lite', 'add'), ('sim-branch-narrow', 'add')):
        config = preset_config(name)
        assert (config.head_branch, config.head_branch_mode) == (256, mode)
        config.save(str(tmp_path / 'config.json'))
        assert MVLAConfig.load(str(tmp_path / 'config.json')) == config


def test_the_lite_preset_is_the_branch_preset_with_half_the_layers_and_less_arithmetic():
    full, lite = preset_config('sim-branch'), preset_config('sim-branch-lite')
    assert (lite.decoder.num_layers, lite.vision.num_layers) == (2, 2)
    # the same tokens, widths and pointers: only the depth differs
    for config in (full, lite):
        config.preset = ''
        config.decoder.num_layers = config.vision.num_layers = 0
    assert lite == full
    flops = {name: FlopsModel.from_model(MultiModalVLA(preset_config(name)))
             for name in ('sim-branch', 'sim-branch-lite')}
    tokens = [153] * 4
    ratio = (flops['sim-branch-lite'].step(64, 64, 64, 64, tokens[:2])
             / flops['sim-branch'].step(64, 64, 64, 64, tokens))
    assert 0.5 < ratio < 0.6


def test_the_narrow_preset_is_the_lite_preset_two_thirds_as_wide_with_half_its_arithmetic():
    lite, narrow = preset_config('sim-branch-lite'), preset_config('sim-branch-narrow')
    assert (narrow.decoder.hidden_size, narrow.vision.hidden_size, narrow.points.out_dim) == (
        128, 128, 128)
    # heads as wide as the lite preset's, so the width is fewer heads, not thinner ones
    assert narrow.decoder.hidden_size // narrow.decoder.num_heads == 32
    assert narrow.vision.hidden_size // narrow.vision.num_heads == 64
    policy = Policy.from_config(narrow, device='cpu')
    # semantic_layer 1: the default cuts before layer 2, which a 2-layer decoder lacks
    policy.configure('tri_stage', Budget(keep_ratio=0.25), pruner_config={'semantic_layer': 1})
    for seed in (0, 1):  # an episode's first step is a full one
        chunk, stats = policy.step(make_observation(seed))
        assert chunk.shape == (narrow.horizon, narrow.action_dim) and np.isfinite(chunk).all()
    kept, visual = (stats.tokens_2d_kept + stats.tokens_3d_kept,
                    stats.tokens_2d_in + stats.tokens_3d_in)
    assert (visual, kept) == (128, 32)
    model = policy.model
    # the same tokens, depth, pointers and head: only the widths differ
    lite, narrow = preset_config('sim-branch-lite'), preset_config('sim-branch-narrow')
    for config in (lite, narrow):
        config.preset = ''
        config.decoder.hidden_size = config.decoder.num_heads = 0
        config.decoder.intermediate_size = config.vision.intermediate_size = 0
        config.vision.hidden_size = config.vision.num_heads = config.points.out_dim = 0
    assert narrow == lite
    tokens = [153] * 2
    ratio = (FlopsModel.from_model(model).step(64, 64, 64, 64, tokens)
             / FlopsModel.from_model(MultiModalVLA(preset_config('sim-branch-lite')))
             .step(64, 64, 64, 64, tokens))
    assert 0.45 < ratio < 0.55


def test_refined_points_average_the_best_groups_neighbours_only():
    # one object's three groups (its left edge scoring a little higher), and a partial match
    # 20 cm away
    centres = torch.tensor([[[0.00, 0.0, 0.5], [0.02, 0.0, 0.5], [0.04, 0.0, 0.5],
                             [0.24, 0.0, 0.5]]])
    logits = torch.tensor([[[0.0, -0.3, -0.6, -0.5]]], requires_grad=True)
    plain = place_points(logits, centres)
    # at sharpness 1 the partial match pulls the point off the object
    assert plain[0, 0, 0] > 0.05
    refined = place_points(logits, centres, radius=0.08)
    weights = torch.softmax(logits[0, 0, :3], dim=-1)
    expected = (weights[:, None] * centres[0, :3]).sum(dim=0)
    torch.testing.assert_close(refined[0, 0], expected)
    # a high sharpness also keeps the far group out, but leaves the point on the edge group
    sharp = place_points(logits, centres, sharpness=10.0)
    assert sharp[0, 0, 0] < 0.005 < 0.01 < refined[0, 0, 0] < 0.03
    refined.sum().backward()  # differentiable in the logits of the groups that count
    assert logits.grad[0, 0, :3].abs().sum() > 0 and logits.grad[0, 0, 3] == 0
    torch.testing.assert_close(place_points(logits, centres, radius=0.0), plain)


def test_the_refine_radius_is_a_setting_of_the_model():
    config = preset_config('tiny')
    config.pointer_refine_radius = 0.05
    model = MultiModalVLA(config)
    assert model.pointer.refine_radius == 0.05
    with pytest.raises(ValueError, match='pointer_refine_radius'):
        MVLAConfig.from_dict({**preset_config('tiny').to_dict(), 'pointer_refine_radius': -0.1})


def test_a_tracking_point_stays_on_its_object_unless_elsewhere_is_much_better():
    # two objects 20 cm apart, two groups each; the other object scores a little higher now
    centres = torch.tensor([[[0.0, 0.0, 0.5], [0.02, 0.0, 0.5],
                             [0.20, 0.0, 0.5], [0.22, 0.0, 0.5]]])
    logits = torch.tensor([[[-0.5, -0.6, 0.0, -0.1]]])
    previous = torch.tensor([[[0.01, 0.0, 0.5]]])

    def place(margin: float, prior=previous) -> torch.Tensor:
        return place_points(logits, centres, radius=0.05, previous=prior, track_radius=0.1,
                            track_margin=margin)[0, 0]

    assert place(1.0)[0] < 0.03  # 0.5 below the best: it stays
    assert place(0.3)[0] > 0.19  # more than the margin below: it moves
    assert place(1.0, prior=None)[0] > 0.19  # an episode's first step: the best group
    far = torch.tensor([[[0.5, 0.5, 0.5]]])
    assert place(1.0, prior=far)[0] > 0.19  # nothing near the last point: the best group
    # without tracking settings the previous points change nothing
    torch.testing.assert_close(
        place_points(logits, centres, radius=0.05, previous=previous),
        place_points(logits, centres, radius=0.05))


def test_tracking_needs_a_refined_point():
    data = preset_config('tiny').to_dict()
    with pytest.raises(ValueError, match='needs pointer_refine_radius'):
        MVLAConfig.from_dict({**data, 'pointer_track_radius': 0.1})
    with pytest.raises(ValueError, match='pointer_track_margin'):
        MVLAConfig.from_dict({**data, 'pointer_refine_radius': 0.05, 'pointer_track_radius': 0.1,
                              'pointer_track_margin': float('nan')})


def test_a_policy_tracks_within_an_episode_and_forgets_at_a_reset():
    config = preset_config('tiny')
    config.pointer_refine_radius, config.pointer_track_radius = 0.05, 0.1
    policy = Policy.from_config(config, device='cpu')
    seen = []
    point = policy.model.point

    def recording(*args):
        seen.append(args[3] if len(args) > 3 else None)
        return point(*args)

    policy.model.point = recording
    policy.step(make_observation(0))
    policy.step(make_observation(1))
    policy.reset()
    policy.step(make_observation(2))
    assert seen[0] is None and seen[2] is None  # first steps of an episode
    assert seen[1] is not None and seen[1].shape == (1, len(config.pointers), 3)
