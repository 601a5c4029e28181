"""
Save and load a whole model directory.

Layout of a model directory::

    config.json          MVLAConfig (vision/decoder point at the sub-directories below)
    model.safetensors    projectors, point encoder, action queries, head, normalisation stats
    decoder/             the transformers decoder, written with save_pretrained
    vision/              the transformers vision tower, written with save_pretrained
    tokenizer/           the instruction tokenizer, written with save_pretrained

The decoder and tower are ordinary transformers checkpoints, so a model can start from any
local pretrained Qwen2/Llama decoder or SigLIP/ViT tower, and loading one of our directories
exercises exactly that path. Nothing is ever fetched from a hub.
"""

from dataclasses import replace
import os
from typing import Any

from safetensors.torch import load_file, save_file
import torch

from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.text import load_tokenizer

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
_SUBMODULES = ('decoder.', 'vision.')


class CheckpointError(ValueError):
    """A model directory that is missing files or does not match its configuration."""


def save_model(model: MultiModalVLA, tokenizer: Any, directory: str) -> None:
    """Write ``model`` and ``tokenizer`` to ``directory`` (created if needed)."""
    os.makedirs(directory, exist_ok=True)
    model.decoder.save_pretrained(os.path.join(directory, 'decoder'))
    model.vision.save_pretrained(os.path.join(directory, 'vision'))
    tokenizer.save_pretrained(os.path.join(directory, 'tokenizer'))
    config = replace(
        model.config,
        vision=replace(model.vision.config, pretrained_dir='vision'),
        decoder=replace(model.config.decoder, pretrained_dir='decoder'),
    )
    config.save(os.path.join(directory, CONFIG_FILE))
    rest = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith(_SUBMODULES)
    }
    save_file(rest, os.path.join(directory, WEIGHTS_FILE))


def load_model(directory: str) -> tuple[MultiModalVLA, Any]:
    """Load a model directory written by :func:`save_model` (CPU, fp32)."""
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f'{directory!r} is not a model directory: no {CONFIG_FILE}')
    config = MVLAConfig.load(config_path)
    # Sub-directories are stored relative to the model directory.
    if config.vision.pretrained_dir and not os.path.isabs(config.vision.pretrained_dir):
        config.vision = replace(
            config.vision, pretrained_dir=os.path.join(directory, config.vision.pretrained_dir)
        )
    if config.decoder.pretrained_dir and not os.path.isabs(config.decoder.pretrained_dir):
        config.decoder = replace(
            config.decoder, pretrained_dir=os.path.join(directory, config.decoder.pretrained_dir)
        )
    model = MultiModalVLA(config)
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise CheckpointError(f'{directory!r} has no {WEIGHTS_FILE}')
    state = load_file(weights_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.startswith(_SUBMODULES)]
    if missing or unexpected:
        raise CheckpointError(
            f'{weights_path} does not match config.json: missing {missing[:5]}, '
            f'unexpected {unexpected[:5]}'
        )
    tokenizer = load_tokenizer(os.path.join(directory, 'tokenizer'))
    return model.eval(), tokenizer


def to_device(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a model, keeping its action normalisation in fp32."""
    model = model.to(device=device, dtype=dtype)
    model.action_mean = model.action_mean.float()
    model.action_std = model.action_std.float()
    return model
