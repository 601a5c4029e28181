"""
2D visual tokens: an RGB image becomes a row-major grid of patch tokens from a vision tower.

The tower is a transformers ``SiglipVisionModel`` or ``ViTModel``, built from a small config
or loaded from a local directory written by ``save_pretrained`` (never downloaded).

Pixel-to-patch contract
-----------------------
:meth:`VisionTower2D.preprocess` squashes the whole image (no crop, aspect ratio not kept) onto
the tower's patch grid of ``rows x cols`` patches. So pixel (u, v) of an H x W original image
(u = column, v = row, integer pixel indices) lands in patch ``row = floor(v * rows / H)``,
``col = floor(u * cols / W)``, which is token ``row * cols + col`` of the tower output.
:func:`patch_of_pixel` computes exactly this; 3D tokens use it to find the patch they project
into. When ``image_size`` is not a multiple of ``patch_size`` (e.g. SigLIP 384 / 14), the patch
convolution ignores the last ``image_size % patch_size`` pixels, so the image is resized to
``cols * patch_size`` pixels and zero-padded to ``image_size``: the padding is never seen and the
contract still holds.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
import json
import os
from typing import Any, Optional

import numpy as np
import torch

KINDS = ('siglip', 'vit')

# Normalisation the checkpoints of each family were trained with.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NORMALISATION = {
    'siglip': (SIGLIP_MEAN, SIGLIP_STD),
    'vit': (IMAGENET_MEAN, IMAGENET_STD),
}

# transformers config.json model_type -> tower kind.
MODEL_TYPES = {'siglip': 'siglip', 'siglip_vision_model': 'siglip', 'vit': 'vit'}
PREPROCESSOR_FILE = 'preprocessor_config.json'


class TokenizationError(ValueError):
    """
    Sensor data that cannot be turned into visual tokens.

    Raised by both tokenizers for input of the wrong shape or type, and by the 3D tokenizer
    when no valid point is left after cleaning and cropping.
    """


@dataclass
class VisionTowerConfig:
    """
    Shape of the 2D vision tower and the normalisation of its input.

    ``kind`` is 'siglip' (``SiglipVisionModel``, no pooling head) or 'vit' (``ViTModel``
    without pooler; its CLS token is dropped). ``image_mean``/``image_std`` default to the
    family's values (SigLIP 0.5/0.5, ViT ImageNet). When ``pretrained_dir`` is set, every other
    field is read from that directory instead: kind and shapes from its ``config.json``,
    normalisation from its ``preprocessor_config.json`` (family defaults when absent).
    """

    kind: str = 'siglip'
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    pretrained_dir: Optional[str] = None
    image_mean: Optional[tuple[float, float, float]] = None
    image_std: Optional[tuple[float, float, float]] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f'vision tower kind must be one of {KINDS}, got {self.kind!r}')
        default_mean, default_std = DEFAULT_NORMALISATION[self.kind]
        self.image_mean = _triple('image_mean', self.image_mean or default_mean)
        self.image_std = _triple('image_std', self.image_std or default_std)
        if min(self.image_std) <= 0:
            raise ValueError(f'image_std must be positive, got {self.image_std}')
        if not 0 < self.patch_size <= self.image_size:
            raise ValueError(
                f'need 0 < patch_size <= image_size, got {self.patch_size} and {self.image_size}'
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}'
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols) the tower produces."""
        side = self.image_size // self.patch_size
        return side, side

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (tuples become lists)."""
        data = asdict(self)
        data['image_mean'] = list(self.image_mean)
        data['image_std'] = list(self.image_std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'VisionTowerConfig':
        """Inverse of :meth:`to_dict`; an unknown key raises ``ValueError``."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown vision tower config keys: {unknown}')
        return cls(**data)


def _triple(name: str, values: Any) -> tuple[float, float, float]:
    values = tuple(float(value) for value in values)
    if len(values) != 3:
        raise ValueError(f'{name} needs one value per RGB channel, got {values}')
    return values


def _build_model(config: VisionTowerConfig) -> torch.nn.Module:
    # Imported here: transformers takes seconds to import and only the tower needs it.
    from transformers import SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTModel

    shape = {
        'image_size': config.image_size,
        'patch_size': config.patch_size,
        'hidden_size': config.hidden_size,
        'num_hidden_layers': config.num_layers,
        'num_attention_heads': config.num_heads,
        'intermediate_size': config.intermediate_size,
        'num_channels': 3,
    }
    if config.kind == 'siglip':
        # The attention-pooling head only feeds image-level outputs, which are not used.
        hf_config = SiglipVisionConfig(**shape, vision_use_head=False)
        hf_config._attn_implementation = 'sdpa'
        return SiglipVisionModel(hf_config)
    hf_config = ViTConfig(**shape)
    hf_config._attn_implementation = 'sdpa'
    return ViTModel(hf_config, add_pooling_layer=False)


def _load_model(config: VisionTowerConfig) -> tuple[torch.nn.Module, VisionTowerConfig]:
    from transformers import SiglipVisionModel, ViTModel

    directory = config.pretrained_dir
    config_path = os.path.join(directory, 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f'vision tower pretrained_dir {directory!r} has no config.json '
            '(expected a directory written by save_pretrained)'
        )
    with open(config_path, encoding='utf-8') as stream:
        model_type = json.load(stream).get('model_type')
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f'{config_path} holds a {model_type!r} model; supported: {sorted(MODEL_TYPES)}'
        )
    kind = MODEL_TYPES[model_type]
    if kind == 'siglip':
        model = SiglipVisionModel.from_pretrained(
            directory, local_files_only=True, attn_implementation='sdpa'
        )
    else:
        model = ViTModel.from_pretrained(
            directory, local_files_only=True, attn_implementation='sdpa', add_pooling_layer=False
        )
    mean, std = DEFAULT_NORMALISATION[kind]
    preprocessor_path = os.path.join(directory, PREPROCESSOR_FILE)
    if os.path.isfile(preprocessor_path):
        with open(preprocessor_path, encoding='utf-8') as stream:
            preprocessor = json.load(stream)
        mean = preprocessor.get('image_mean', mean)
        std = preprocessor.get('image_std', std)
    hf_config = model.config
    resolved = replace(
        config,
        kind=kind,
        image_size=int(hf_config.image_size),
        patch_size=int(hf_config.patch_size),
        hidden_size=int(hf_config.hidden_size),
        num_layers=int(hf_config.num_hidden_layers),
        num_heads=int(hf_config.num_attention_heads),
        intermediate_size=int(hf_config.intermediate_size),
        image_mean=tuple(mean),
        image_std=tuple(std),
    )
    return model, resolved


class VisionTower2D(torch.nn.Module):
    """
    RGB image -> [B, rows * cols, hidden] patch tokens in row-major order.

    ``config`` holds the effective configuration (read from ``pretrained_dir`` when that is
    set). See the module docstring for the pixel-to-patch contract of :meth:`preprocess`.
    """

    def __init__(self, config: VisionTowerConfig) -> None:
        super().__init__()
        if config.pretrained_dir:
            self.model, self.config = _load_model(config)
        else:
            self.model, self.config = _build_model(config), replace(config)
        self._mean = np.asarray(self.config.image_mean, dtype=np.float32)
        self._std = np.asarray(self.config.image_std, dtype=np.float32)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        return self.config.grid_size

    @property
    def num_tokens(self) -> int:
        """Patch tokens per image (rows * cols)."""
        rows, cols = self.grid_size
        return rows * cols

    @property
    def hidden_size(self) -> int:
        """Width of each patch token."""
        return self.config.hidden_size

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """
        Turn an H x W x 3 uint8 RGB image into normalised pixel values [1, 3, S, S] float32.

        The whole image is resized with ``cv2.INTER_AREA`` (no crop), scaled to [0, 1] and
        normalised with the config's mean and std. Raises ``TokenizationError`` for anything
        but a non-empty H x W x 3 uint8 array.
        """
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            shape = getattr(rgb, 'shape', type(rgb).__name__)
            raise TokenizationError(f'expected an H x W x 3 RGB image, got {shape}')
        if rgb.dtype != np.uint8:
            raise TokenizationError(f'expected a uint8 RGB image, got dtype {rgb.dtype}')
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise TokenizationError(f'empty RGB image of shape {rgb.shape}')
        import cv2

        size = self.config.image_size
        rows, cols = self.grid_size
        # Only the first rows/cols * patch_size pixels reach a patch (see the module docstring).
        covered_h, covered_w = rows * self.config.patch_size, cols * self.config.patch_size
        resized = cv2.resize(
            np.ascontiguousarray(rgb), (covered_w, covered_h), interpolation=cv2.INTER_AREA
        )
        normalised = (resized.astype(np.float32) * (1.0 / 255.0) - self._mean) / self._std
        pixels = np.zeros((3, size, size), dtype=np.float32)
        pixels[:, :covered_h, :covered_w] = normalised.transpose(2, 0, 1)
        return torch.from_numpy(pixels).unsqueeze(0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Encode pixel values [B, 3, S, S] into patch tokens [B, rows * cols, hidden].

        Inputs are moved to the tower's device and dtype. Raises ``TokenizationError`` when the
        input shape does not match the tower.
        """
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise TokenizationError(
                f'pixel_values must be [B, 3, {size}, {size}], got {list(pixel_values.shape)}'
            )
        parameter = next(self.model.parameters())
        hidden = self.model(
            pixel_values=pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        ).last_hidden_state
        # ViT prepends a CLS token; the patch tokens follow in row-major order.
        return hidden[:, 1:] if self.config.kind == 'vit' else hidden

    def save_pretrained(self, directory: str) -> None:
        """
        Write the tower to ``directory`` for loading through ``pretrained_dir``.

        Saves the transformers model and a ``preprocessor_config.json`` with the normalisation.
        """
        self.model.save_pretrained(directory)
        preprocessor = {
            'image_mean': list(self.config.image_mean),
            'image_std': list(self.config.image_std),
            'size': {'height': self.config.image_size, 'width': self.config.image_size},
        }
        with open(os.path.join(directory, PREPROCESSOR_FILE), 'w', encoding='utf-8') as stream:
            json.dump(preprocessor, stream, indent=2)


def patch_of_pixel(
    uv: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> np.ndarray:
    """
    Return the row-major patch index (int64, N) of each pixel coordinate (u, v) in ``uv`` (N x 2).

    ``uv`` uses the ROS/OpenCV convention (integer coordinates are pixel centres), so a
    coordinate is first rounded to the pixel it lies in; that pixel maps to patch
    (floor(v * rows / H), floor(u * cols / W)) as :meth:`VisionTower2D.preprocess` lays it out.
    Pixels outside the image and NaN coordinates give -1. ``image_hw`` is (H, W) of the original
    image, ``grid_hw`` (rows, cols) of the patch grid.
    """
    coords = np.asarray(uv, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise TokenizationError(f'pixel coordinates must be an (N, 2) array, got {coords.shape}')
    height, width = (int(value) for value in image_hw)
    rows, cols = (int(value) for value in grid_hw)
    pixel = np.floor(coords + 0.5)
    # NaN compares False, so NaN coordinates count as outside.
    inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < width) & (pixel[:, 1] >= 0)
    inside &= pixel[:, 1] < height
    # Integer arithmetic keeps patch borders exact.
    u = np.where(inside, pixel[:, 0], 0).astype(np.int64)
    v = np.where(inside, pixel[:, 1], 0).astype(np.int64)
    index = (v * rows // height) * cols + u * cols // width
    return np.where(inside, index, -1)
