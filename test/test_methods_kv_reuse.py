"""KV reuse in the layer runner: exact when inputs are unchanged, probes over cached keys."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, LlamaConfig, Qwen2Config

from vla_pruned_ros.model.kv_reuse import KVReuse
from vla_pruned_ros.model.runner import AttentionProbe, LayerRunner
from vla_pruned_ros.tokens.layout import TokenLayout

N_2D, N_3D, N_TEXT, N_ACTION = 12, 8, 5, 3
REUSED = torch.tensor([1, 2, 5, 6, 7, 13, 15])


def _decoder(family: str) -> torch.nn.Module:
    shape = {'vocab_size': 50, 'hidden_size': 64, 'num_hidden_layers': 4,
             'num_attention_heads': 4, 'num_key_value_heads': 2, 'intermediate_size': 96}
    config = Qwen2Config(**shape) if family == 'qwen2' else LlamaConfig(**shape)
    torch.manual_seed(0)
    return AutoModel.from_config(config, attn_implementation='sdpa').eval()


def _layout() -> TokenLayout:
    return TokenLayout(N_2D, N_3D, N_TEXT, 0, N_ACTION, grid_shape=(3, 4),
                       centres_3d=np.zeros((N_3D, 3), np.float32),
                       patch_of_3d=np.full(N_3D, -1, np.int64))


def _computed(layout: TokenLayout) -> torch.Tensor:
    keep = ~torch.isin(torch.arange(layout.length), REUSED)
    return torch.nonzero(keep).flatten()


@pytest.fixture(params=['qwen2', 'llama'])
def family(request):
    return request.param


@torch.no_grad()
def test_reused_keys_give_the_full_result_and_probes(family):
    runner, layout = LayerRunner(_decoder(family)), _layout()
    embeds = torch.randn(1, layout.length, 64)
    probes = [AttentionProbe(0, 'last_text'), AttentionProbe(2, 'text')]
    full = runner.run(embeds, layout, probes=probes, capture_kv=True)
    assert full.kv.reusable_positions().tolist() == list(range(layout.n_visual))
    computed = _computed(layout)
    out = runner.run(embeds[:, computed], layout, probes=probes, positions=computed,
                     reuse=KVReuse(REUSED, full.kv), capture_kv=True)
    assert out.n_reused == REUSED.numel()
    assert out.tokens_per_layer == [computed.numel()] * 4
    torch.testing.assert_close(out.normed, full.normed[:, computed], rtol=1e-5, atol=1e-5)
    for probe in probes:  # probes see the cached keys too, in position order
        assert torch.equal(out.probes[probe].key_positions, torch.arange(layout.length))
        torch.testing.assert_close(out.probes[probe].weights, full.probes[probe].weights,
                                   rtol=1e-5, atol=1e-6)
    # The new cache holds computed and reused tokens alike, ready for the next step.
    for layer_full, layer_out in zip(full.kv.layers, out.kv.layers):
        torch.testing.assert_close(layer_out.keys, layer_full.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer_out.values, layer_full.values, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_reuse_is_really_read_and_combines_with_a_drop_mid_stack(family):
    runner, layout = LayerRunner(_decoder(family)), _layout()
    embeds = torch.randn(1, layout.length, 64)
    full = runner.run(embeds, layout, capture_kv=True)
    computed = _computed(layout)
    # Computed visual tokens surviving layer 2. Only tokens after every reused one are dropped,
    # so (causal attention) the reused tokens' keys are the same as without the drop.
    kept_after = torch.tensor([0, 3, 4, 8, 9, 10, 11, 12, 14, 17])
    reference = runner.run(embeds, layout, prune_layers={2},
                           on_prune=lambda state: torch.sort(torch.cat([kept_after, REUSED]))[0])
    out = runner.run(embeds[:, computed], layout, positions=computed, prune_layers={2},
                     on_prune=lambda state: kept_after, reuse=KVReuse(REUSED, full.kv),
                     capture_kv=True)
    text = slice(-(N_TEXT + N_ACTION), None)
    torch.testing.assert_close(out.normed[:, text], reference.normed[:, text],
                               rtol=1e-5, atol=1e-5)
    # Dropped mid-stack: no keys at the last layers, so not reusable next step.
    reusable = set(out.kv.reusable_positions().tolist())
    assert reusable == set(kept_after.tolist()) | set(REUSED.tolist())
    # Stale cached values change the result: the cache is what the layers read.
    for layer in full.kv.layers:
        layer.values.mul_(2.0)
    stale = runner.run(embeds[:, computed], layout, positions=computed,
                       reuse=KVReuse(REUSED, full.kv))
    assert (stale.normed[:, text] - reference.normed[:, text]).abs().max() > 1e-3


def test_reusing_positions_the_cache_lacks_is_an_error():
    runner, layout = LayerRunner(_decoder('qwen2')), _layout()
    embeds = torch.randn(1, layout.length, 64)
    with torch.no_grad():
        full = runner.run(embeds[:, 3:], layout, positions=torch.arange(3, layout.length),
                          capture_kv=True)
        with pytest.raises(ValueError, match='does not hold'):
            runner.run(embeds[:, 1:], layout, positions=torch.arange(1, layout.length),
                       reuse=KVReuse(torch.tensor([0]), full.kv))
