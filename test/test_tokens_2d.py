"""Tests of the 2D tokenizer: vision towers from small configs, preprocessing, patch mapping."""

import json

import numpy as np
import pytest
import torch

from vla_pruned_ros.tokens.vision_2d import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TokenizationError,
    VisionTower2D,
    VisionTowerConfig,
    patch_of_pixel,
)

TINY = {
    'image_size': 28,
    'patch_size': 7,
    'hidden_size': 32,
    'num_layers': 2,
    'num_heads': 4,
    'intermediate_size': 64,
}


def tiny_tower(kind: str, **overrides) -> VisionTower2D:
    torch.manual_seed(0)
    return VisionTower2D(VisionTowerConfig(kind=kind, **{**TINY, **overrides})).eval()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize('kind', ['siglip', 'vit'])
def test_tower_gives_one_token_per_patch(kind):
    tower = tiny_tower(kind)
    assert tower.grid_size == (4, 4)
    assert tower.num_tokens == 16
    assert tower.hidden_size == 32
    pixels = torch.cat([tower.preprocess(random_image(30, 50, seed)) for seed in range(2)])
    with torch.no_grad():
        tokens = tower(pixels)
        hidden = tower.model(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, 16, 32)
    # ViT's CLS token is dropped; SigLIP has none: the patch tokens are what remains.
    torch.testing.assert_close(tokens, hidden[:, 1:] if kind == 'vit' else hidden)


@pytest.mark.parametrize('kind', ['siglip', 'vit'])
def test_towers_use_sdpa_attention(kind):
    assert tiny_tower(kind).model.config._attn_implementation == 'sdpa'


def test_preprocess_shape_and_siglip_normalisation():
    tower = tiny_tower('siglip')
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red: channel order must be kept (RGB in, RGB out)
    pixels = tower.preprocess(image)
    assert pixels.shape == (1, 3, 28, 28)
    assert pixels.dtype == torch.float32
    assert torch.all(pixels[0, 0] == 1.0)
    assert torch.all(pixels[0, 1:] == -1.0)


def test_preprocess_vit_uses_imagenet_statistics():
    tower = tiny_tower('vit')
    pixels = tower.preprocess(np.full((20, 20, 3), 128, dtype=np.uint8))
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(
        pixels[0, :, 5, 5], torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    'bad',
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_preprocess_rejects_non_rgb8_input(bad):
    with pytest.raises(TokenizationError):
        tiny_tower('siglip').preprocess(bad)


def test_forward_rejects_wrong_pixel_shape():
    with pytest.raises(TokenizationError, match='pixel_values'):
        tiny_tower('siglip')(torch.zeros(1, 3, 32, 32))


def test_preprocess_puts_each_pixel_in_its_patch():
    # 56 x 84 squashed onto 28 x 28: each 7 x 7 patch covers exactly 14 rows x 21 columns.
    tower = tiny_tower('siglip')
    height, width = 56, 84
    base = np.zeros((height, width, 3), dtype=np.uint8)
    baseline = tower.preprocess(base)[0]
    rng = np.random.default_rng(1)
    pixels = [(0, 0), (width - 1, height - 1), (20, 13), (21, 14)]
    pixels += [tuple(rng.integers(0, (width, height))) for _ in range(6)]
    for u, v in pixels:
        image = base.copy()
        image[v, u] = 255
        changed = (tower.preprocess(image)[0] != baseline).any(dim=0).nonzero()
        touched = {(int(r) // 7) * 4 + int(c) // 7 for r, c in changed}
        expected = patch_of_pixel(np.array([[u, v]]), (height, width), (4, 4))[0]
        assert touched == {expected}, (u, v)


def test_image_size_not_multiple_of_patch_pads_unseen_border():
    # 30 / 7: the patch convolution covers 28 pixels; the last two are padding it never reads.
    tower = tiny_tower('siglip', image_size=30)
    assert tower.grid_size == (4, 4)
    pixels = tower.preprocess(random_image(33, 47))
    assert pixels.shape == (1, 3, 30, 30)
    assert torch.all(pixels[..., 28:, :] == 0) and torch.all(pixels[..., :, 28:] == 0)
    assert torch.any(pixels[..., :28, :28] != 0)
    noisy = pixels.clone()
    noisy[..., 28:, :] = 5.0
    noisy[..., :, 28:] = -5.0
    with torch.no_grad():
        torch.testing.assert_close(tower(noisy), tower(pixels), rtol=0, atol=0)


@pytest.mark.parametrize('kind', ['siglip', 'vit'])
def test_save_then_load_from_local_dir_gives_identical_tokens(kind, tmp_path):
    tower = tiny_tower(kind, image_mean=(0.1, 0.2, 0.3), image_std=(0.4, 0.5, 0.6))
    tower.save_pretrained(str(tmp_path))
    # Shapes, kind and normalisation come from the directory, not from these defaults.
    loaded = VisionTower2D(VisionTowerConfig(pretrained_dir=str(tmp_path))).eval()
    assert loaded.config.kind == kind
    assert loaded.grid_size == (4, 4) and loaded.hidden_size == 32
    assert loaded.config.image_mean == (0.1, 0.2, 0.3)
    image = random_image(40, 30)
    pixels = tower.preprocess(image)
    torch.testing.assert_close(loaded.preprocess(image), pixels, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), tower(pixels), rtol=0, atol=0)


def test_missing_pretrained_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json'):
        VisionTower2D(VisionTowerConfig(pretrained_dir=str(tmp_path)))


def test_config_round_trips_through_json():
    config = VisionTowerConfig(kind='vit', **TINY)
    restored = VisionTowerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.image_mean == IMAGENET_MEAN
    with pytest.raises(ValueError, match='patchsize'):
        VisionTowerConfig.from_dict({'patchsize': 16})
    with pytest.raises(ValueError, match='kind'):
        VisionTowerConfig(kind='clip')


def test_patch_of_pixel_on_non_square_image():
    image_hw, grid_hw = (480, 640), (4, 8)  # patches of 120 rows x 80 columns
    uv = np.array(
        [
            [0, 0],  # top-left corner
            [639, 0],  # top-right corner
            [0, 479],  # bottom-left corner
            [639, 479],  # bottom-right corner
            [79, 119],  # last pixel of the first patch
            [80, 120],  # first pixel of patch (1, 1)
            [-0.4, 0.0],  # rounds into pixel 0: inside
            [-0.6, 0.0],  # pixel -1: outside
            [640, 10],  # right of the image
            [10, 480],  # below the image
            [np.nan, 5],  # not projectable
        ]
    )
    expected = [0, 7, 24, 31, 0, 9, 0, -1, -1, -1, -1]
    result = patch_of_pixel(uv, image_hw, grid_hw)
    assert result.dtype == np.int64
    assert result.tolist() == expected


def test_patch_of_pixel_rejects_wrong_shape():
    with pytest.raises(TokenizationError):
        patch_of_pixel(np.zeros((3, 3)), (10, 10), (2, 2))
