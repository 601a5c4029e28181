"""The layer-by-layer runner reproduces the transformers decoder exactly, probes included."""

import pytest
import torch
from transformers import AutoModel, LlamaConfig, Qwen2Config

from vla_pruned_ros.model.runner import AttentionProbe, LayerRunner
from vla_pruned_ros.tokens.layout import TokenLayout

N_2D, N_3D, N_TEXT, N_ACTION = 12, 8, 5, 3


def _decoder(family: str, attn: str = 'sdpa') -> torch.nn.Module:
    shape = {'vocab_size': 50, 'hidden_size': 64, 'num_hidden_layers': 4,
             'num_attention_heads': 4, 'num_key_value_heads': 2, 'intermediate_size': 96}
    config = Qwen2Config(**shape) if family == 'qwen2' else LlamaConfig(**shape)
    torch.manual_seed(0)
    return AutoModel.from_config(config, attn_implementation=attn).eval()


def _layout() -> TokenLayout:
    import numpy as np

    return TokenLayout(N_2D, N_3D, N_TEXT, 0, N_ACTION, grid_shape=(3, 4),
                       centres_3d=np.zeros((N_3D, 3), np.float32),
                       patch_of_3d=np.full(N_3D, -1, np.int64))


def _causal(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]


def _reference(decoder, hidden, positions, first_layer=0):
    """Layers with an explicit causal mask over the kept tokens and RoPE at their positions."""
    cos_sin = decoder.rotary_emb(hidden, positions[None])
    for layer in decoder.layers[first_layer:]:
        hidden = layer(hidden, attention_mask=_causal(len(positions)), position_embeddings=cos_sin)
    return decoder.norm(hidden)


@pytest.fixture(params=['qwen2', 'llama'])
def family(request):
    return request.param


@torch.no_grad()
def test_no_drop_equals_model_forward(family):
    decoder = _decoder(family)
    embeds = torch.randn(1, _layout().length, 64)
    reference = decoder(inputs_embeds=embeds).last_hidden_state
    out = LayerRunner(decoder).run(embeds, _layout())
    torch.testing.assert_close(out.normed, reference, rtol=1e-5, atol=1e-5)
    assert out.tokens_per_layer == [_layout().length] * 4


@torch.no_grad()
def test_drop_before_decoder_equals_forward_over_kept_tokens_at_original_positions(family):
    decoder = _decoder(family)
    layout = _layout()
    embeds = torch.randn(1, layout.length, 64)
    keep_visual = torch.tensor([0, 3, 4, 9, 13, 17])
    positions = torch.cat([keep_visual, torch.arange(layout.n_visual, layout.length)])
    kept = embeds[:, positions]
    reference = _reference(decoder, kept, positions)
    out = LayerRunner(decoder).run(kept, layout, positions=positions)
    torch.testing.assert_close(out.normed, reference, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_drop_between_layers_keeps_rotary_positions(family):
    decoder = _decoder(family)
    layout = _layout()
    embeds = torch.randn(1, layout.length, 64)
    keep_visual = torch.tensor([1, 2, 5, 12, 19])
    drop_at = 2

    out = LayerRunner(decoder).run(
        embeds, layout, prune_layers={drop_at}, on_prune=lambda state: keep_visual
    )
    full = decoder(inputs_embeds=embeds, output_hidden_states=True).hidden_states
    positions = torch.cat([keep_visual, torch.arange(layout.n_visual, layout.length)])
    reference = _reference(decoder, full[drop_at][:, positions], positions, first_layer=drop_at)
    torch.testing.assert_close(out.normed, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.positions, positions)
    assert out.tokens_per_layer == [layout.length] * 2 + [len(positions)] * 2


@torch.no_grad()
def test_probes_equal_eager_attention_while_layers_use_sdpa(family):
    sdpa = _decoder(family)
    eager = _decoder(family, attn='eager')
    eager.load_state_dict(sdpa.state_dict())
    layout = _layout()
    embeds = torch.randn(1, layout.length, 64)
    attentions = eager(inputs_embeds=embeds, output_attentions=True).attentions
    probes = [AttentionProbe(1, 'last_text'), AttentionProbe(2, 'action'),
              AttentionProbe(0, 'text'), AttentionProbe(3, 'all')]
    out = LayerRunner(sdpa).run(embeds, layout, probes=probes)
    rows = {'last_text': [layout.n_visual + N_TEXT - 1],
            'action': list(range(layout.length - N_ACTION, layout.length)),
            'text': list(range(layout.n_visual, layout.n_visual + N_TEXT)),
            'all': list(range(layout.length))}
    for probe in probes:
        expected = attentions[probe.layer][0].mean(dim=0)[rows[probe.queries]]
        torch.testing.assert_close(out.probes[probe].weights, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_probe_after_drop_reports_surviving_keys():
    decoder = _decoder('qwen2')
    layout = _layout()
    keep_visual = torch.tensor([0, 5, 15])
    probe = AttentionProbe(3, 'last_text')
    out = LayerRunner(decoder).run(torch.randn(1, layout.length, 64), layout, probes=[probe],
                                   prune_layers={1}, on_prune=lambda state: keep_visual)
    result = out.probes[probe]
    assert torch.equal(result.key_positions[:3], keep_visual)
    assert result.weights.shape == (1, 3 + N_TEXT + N_ACTION)
    torch.testing.assert_close(result.weights.sum(dim=-1), torch.ones(1))


def test_a_dropped_token_cannot_come_back():
    decoder = _decoder('qwen2')
    layout = _layout()
    calls = iter([torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3])])
    with pytest.raises(ValueError, match='cannot come back'):
        LayerRunner(decoder).run(torch.randn(1, layout.length, 64), layout,
                                 prune_layers={1, 2}, on_prune=lambda state: next(calls))


def test_layers_past_the_last_are_refused_not_skipped():
    decoder = _decoder('qwen2')
    layout = _layout()
    runner = LayerRunner(decoder)
    last = runner.num_layers - 1
    embeds = torch.randn(1, layout.length, 64)
    with pytest.raises(ValueError, match=f'prune layer {last + 1} outside 0..{last}'):
        runner.run(embeds, layout, prune_layers={last + 1}, on_prune=lambda state: None)
    with pytest.raises(ValueError, match=f'probe layer {last + 1} outside 0..{last}'):
        runner.run(embeds, layout, probes=[AttentionProbe(last + 1, 'last_text')])
