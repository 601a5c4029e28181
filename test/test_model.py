"""The reference VLA: presets, checkpoints, pretrained parts, FLOPs model, devices, Policy.step."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model_fixtures import make_observation
from vla_pruned_ros.device import resolve_device, resolve_dtype
from vla_pruned_ros.model.checkpoint import CheckpointError, load_model, save_model
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.flops import DecoderShape, FlopsModel, PointShape, VisionShape
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import PointerOutput
from vla_pruned_ros.model.presets import PRESETS, preset_config
from vla_pruned_ros.policy import Policy


@pytest.fixture(scope='module')
def policy():
    return Policy.from_preset('tiny', device='cpu', seed=0)


def test_decoder_layer_flops_hand_count():
    shape = DecoderShape(hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, layers=1)
    # n = 3 tokens: q 2*3*8*8 = 384, k+v 2*(2*3*8*4) = 384, scores+values 2*2*3*3*8 = 288,
    # out 2*3*8*8 = 384, SwiGLU 3*2*3*8*16 = 2304 -> 3744
    assert shape.layer_flops(3) == 3744
    assert shape.probe_flops(query_rows=2, keys=3) == 2 * 2 * 3 * 8


def test_vision_and_point_flops_hand_count():
    vision = VisionShape(patch_size=2, hidden=4, layers=1, intermediate=8, extra_tokens=0)
    # 2 patches: embed 2*2*12*4 = 192; qkv 2*2*4*12 = 192; attn 2*2*2*2*4 = 64; out 2*2*4*4 = 64;
    # mlp 2*2*4*8*2 = 256 -> 768
    assert vision.flops(2) == 768
    points = PointShape(group_size=2, hidden_dims=(4,), out_dim=2)
    # point mlp 2*2*3*4 = 48; projection 2*4*2 = 16; centre mlp 2*3*4 + 2*4*2 = 40 -> 104
    assert points.flops_per_group() == 104


def test_analytic_flops_match_torch_flop_counter(policy):
    """
    The analytic decoder and tower counts agree with what torch really multiplies.

    torch's counter does not see inside the CPU SDPA kernel, so the attention part (checked by
    hand above) is added to its count.
    """
    model, flops = policy.model, policy.flops
    embeds = torch.randn(1, 40, model.width)
    with FlopCounterMode(display=False) as counter:
        model.decoder(inputs_embeds=embeds)
    attention = 4 * 2 * 2.0 * 40 * 40 * model.width  # 4 layers, scores + values
    measured = counter.get_total_flops() + attention
    assert flops.decoder_layers([40] * 4) == pytest.approx(measured, rel=1e-6)
    pixels = model.vision.preprocess(make_observation().rgb)
    with FlopCounterMode(display=False) as counter:
        model.encode_2d(pixels)
    attention = 2 * 2 * 2.0 * 64 * 64 * model.vision.hidden_size  # 2 layers
    measured = counter.get_total_flops() + attention
    assert flops.vision_tower(64) == pytest.approx(measured, rel=1e-6)


def test_pointer_flops_match_torch_flop_counter(policy):
    model, flops = policy.model, policy.flops
    ids = torch.randint(2, 50, (1, model.config.instruction_tokens))
    for groups in (32, 5):
        centres, neighbourhoods = torch.randn(1, groups, 3), torch.randn(1, groups, 16, 3)
        with FlopCounterMode(display=False) as counter:
            output = model.point(ids, centres, neighbourhoods)
            model.pointer.embed(output)
        # the text layer's attention runs in a kernel the counter does not see: added by hand
        length, width = model.config.instruction_tokens, model.width
        measured = counter.get_total_flops() + 2 * 2.0 * length * length * width
        assert flops.pointers(groups) == pytest.approx(measured, rel=1e-6)
    assert flops.pointers(5) < flops.pointers(32)  # pruned groups are not scored


@pytest.mark.parametrize('hidden, line', [(0, False), (32, False), (32, True)])
def test_action_head_flops_match_torch_flop_counter(hidden, line):
    config = preset_config('tiny')
    config.head_hidden = hidden
    config.line_features = line
    model = MultiModalVLA(config)
    assert model.config.camera_to_base is not None
    flops = FlopsModel.from_model(model)
    states = torch.randn(1, model.config.horizon, model.width)
    output = PointerOutput(logits=torch.zeros(1, 2, 0), points=torch.randn(1, 2, 3))
    with FlopCounterMode(display=False) as counter:
        model.head(states, output, torch.randn(1, 7))
    assert flops.action_head() == pytest.approx(counter.get_total_flops(), rel=1e-6)


def test_policy_step_shapes_and_stats(policy):
    policy.configure('dense')
    actions, stats = policy.step(make_observation(3))
    assert actions.shape == (8, 7) and actions.dtype == np.float32
    assert np.isfinite(actions).all()
    assert (stats.tokens_2d_in, stats.tokens_3d_in) == (64, 32)
    assert stats.latency_ms >= stats.decoder_ms > 0
    assert stats.tokenize_ms > 0 and stats.action_head_ms > 0
    assert stats.stamp_ns == make_observation(3).stamp_ns
    assert stats.flops_dense > 0


def test_policy_rejects_invalid_observation(policy):
    from vla_pruned_ros.convert import ConversionError

    observation = make_observation(0)
    observation.depth = np.full_like(observation.depth, np.nan)
    with pytest.raises(ConversionError):
        policy.step(observation)


def test_checkpoint_round_trip(policy, tmp_path):
    save_model(policy.model, policy.tokenizer, str(tmp_path / 'model'))
    assert (tmp_path / 'model' / 'decoder' / 'config.json').exists()
    assert (tmp_path / 'model' / 'vision' / 'config.json').exists()
    loaded = Policy.from_pretrained(str(tmp_path / 'model'), device='cpu')
    observation = make_observation(5)
    policy.configure('dense')
    expected, _ = policy.step(observation)
    actions, _ = loaded.step(observation)
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
    config = MVLAConfig.load(str(tmp_path / 'model' / 'config.json'))
    assert config.decoder.pretrained_dir == 'decoder'
    with pytest.raises(CheckpointError):
        load_model(str(tmp_path / 'missing'))


def test_model_starts_from_a_local_pretrained_decoder_and_tower(policy, tmp_path):
    """A decoder / tower written by save_pretrained is loaded as the model's backbone."""
    policy.model.decoder.save_pretrained(tmp_path / 'qwen')
    policy.model.vision.save_pretrained(str(tmp_path / 'siglip'))
    config = preset_config('tiny')
    config.decoder.pretrained_dir = str(tmp_path / 'qwen')
    config.vision.pretrained_dir = str(tmp_path / 'siglip')
    config.vocab_size = policy.config.vocab_size
    fresh = Policy.from_config(config, device='cpu', seed=1)
    for name, tensor in policy.model.decoder.state_dict().items():
        torch.testing.assert_close(fresh.model.decoder.state_dict()[name], tensor)
    for name, tensor in policy.model.vision.state_dict().items():
        torch.testing.assert_close(fresh.model.vision.state_dict()[name], tensor)


def test_presets_shapes():
    small = preset_config('small')
    assert small.vision.grid_size == (16, 16)  # 256 2D tokens
    assert small.points.num_groups == 256
    assert (small.decoder.hidden_size, small.decoder.num_layers) == (896, 24)
    mla = preset_config('mla-7b')
    assert (mla.decoder.family, mla.decoder.hidden_size, mla.decoder.num_layers) == (
        'llama', 4096, 32)
    assert set(PRESETS) >= {'tiny', 'small', 'mla-7b'}
    with pytest.raises(ValueError, match='unknown preset'):
        preset_config('huge')


def test_devices_and_dtypes():
    assert resolve_device('cpu').type == 'cpu'
    assert resolve_device('auto').type in ('cpu', 'cuda')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            resolve_device('cuda')
    with pytest.raises(ValueError, match='unknown device'):
        resolve_device('gpu')
    assert resolve_dtype('bf16') is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype('int3')


def test_bf16_policy_runs_and_stays_close_to_fp32(policy):
    bf16 = Policy(policy.model.__class__(policy.config), policy.tokenizer, device='cpu',
                  dtype='bf16')
    bf16.model.load_state_dict({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                for k, v in policy.model.state_dict().items()})
    bf16.model.action_mean = bf16.model.action_mean.float()
    bf16.model.action_std = bf16.model.action_std.float()
    policy.configure('dense')
    observation = make_observation(4)
    expected, _ = policy.step(observation)
    actions, stats = bf16.step(observation)
    assert stats.device == 'cpu'
    assert np.abs(actions - expected).max() < 0.1 * (np.abs(expected).max() + 1e-3) + 0.05


@pytest.mark.parametrize('score, context', [('factored', False), ('factored', True),
                                            ('attribute', True)])
def test_factored_and_attribute_pointer_flops_match_torch_flop_counter(score, context):
    """The colour part and the object context are counted (its elementwise part estimated)."""
    from vla_pruned_ros.model.object_context import PAIR_FLOPS

    config = preset_config('tiny')
    config.points.colour = True
    config.pointer_score, config.object_context = score, context
    config.pointer_colours, config.pointer_kinds = ['red', 'green', 'blue'], ['cube', 'zone']
    torch.manual_seed(0)
    model = MultiModalVLA(config).eval()
    flops = FlopsModel.from_model(model)
    ids = torch.randint(2, 50, (1, config.instruction_tokens))
    groups, size = 12, config.points.group_size
    centres = torch.randn(1, groups, 3) * 0.1 + torch.tensor([0.0, 0.0, 0.5])
    neighbourhoods = torch.cat([torch.randn(1, groups, size, 3) * 0.01,
                                torch.rand(1, groups, size, 3)], dim=-1)
    with FlopCounterMode(display=False) as counter:
        output = model.point(ids, centres, neighbourhoods)
        model.pointer.embed(output)
    length, width = config.instruction_tokens, model.width
    measured = counter.get_total_flops() + 2 * 2.0 * length * length * width
    if context:  # distances and masked reductions: not matrix products, estimated
        measured += PAIR_FLOPS * groups * groups * size
    assert flops.pointers(groups) == pytest.approx(measured, rel=1e-6)
