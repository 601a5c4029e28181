"""Configuration of the reference 2D+3D VLA, saved as JSON next to the weights."""

from dataclasses import asdict, dataclass, field
import json
import math
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.model.geometry_branch import BRANCH_MODES
from vla_pruned_ros.model.pointer import POINTER_SCORES, POINTER_TARGETS
from vla_pruned_ros.tokens.points_3d import PointTokenizerConfig
from vla_pruned_ros.tokens.vision_2d import VisionTowerConfig

DECODER_FAMILIES = ('qwen2', 'llama')


@dataclass
class DecoderConfig:
    """
    Shape of the transformers decoder (Qwen2 or Llama family).

    ``pretrained_dir`` points to a local directory written with ``save_pretrained``; when set,
    the decoder (and its shape) is loaded from there instead of being built from these fields.
    """

    family: str = 'qwen2'
    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    pretrained_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.family not in DECODER_FAMILIES:
            raise ValueError(
                f'decoder family must be one of {DECODER_FAMILIES}, not {self.family}'
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


def _rigid_transform(matrix: Any) -> list[list[float]]:
    """Check a 4 x 4 rigid transform (rotation and translation) and return it as lists."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (4, 4) or not np.isfinite(array).all():
        raise ValueError(f'camera_to_base must be a finite 4 x 4 matrix, got shape {array.shape}')
    rotation = array[:3, :3]
    if (not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)
            or not np.allclose(array[3], (0, 0, 0, 1)) or np.linalg.det(rotation) < 0):
        raise ValueError('camera_to_base must be a rigid transform: an orthonormal rotation '
                         '(det +1), a translation and a last row of 0 0 0 1')
    return array.tolist()


@dataclass
class MVLAConfig:
    """
    The whole model: 2D tower, 3D tokenizer, decoder, action queries and head.

    Actions are chunks of ``horizon`` steps x ``action_dim`` values (dx dy dz droll dpitch dyaw
    gripper). The head regresses normalised actions; ``action_mean``/``action_std`` (set by
    training from the demonstrations) map them back to physical units. ``pointers`` names the
    instruction-guided pointers over the 3D tokens (see :mod:`vla_pruned_ros.model.pointer`;
    empty = none), each one of ``POINTER_TARGETS``. ``camera_to_base`` (4 x 4, row-major) is the
    camera optical frame's pose in the frame of the end-effector pose that the model was trained
    with; given it, a model with pointers also feeds the head the pointed positions in that
    frame and their offsets from the end effector (``pointer.geometry_features``). The model is
    tied to its camera placement in any case (it learns from camera-frame clouds); this states
    it. ``head_hidden`` = 0 is the original head (one hidden layer of the decoder's width), > 0
    two hidden layers of that width. ``line_features`` also feeds the head the line from the
    first pointer's point to the second's (the push line, ``pointer.line_features``); it needs
    ``camera_to_base``, two pointers and the full pose (``proprio_dim`` 7). ``object_context``
    lets the pointers see the shape of the object around each 3D group
    (:mod:`vla_pruned_ros.model.object_context`); it needs ``camera_to_base`` and coloured points.
    ``pointer_score`` 'joint' scores a group's colour and shape together (one MLP), 'factored'
    as the sum of a colour-only and a colour-blind part, which carries over to colour / shape
    pairs training never showed (``pointer.InstructionPointer``; needs coloured points).
    'attribute' scores a group by what it is: the probability that its colour is the colour
    the instruction names times the probability that its kind (a shape, or 'zone') is the kind
    named, over the class names ``pointer_colours`` and ``pointer_kinds`` (which training
    labels from the recorder's metadata); it needs coloured points and ``object_context``.
    Its points are the group centres weighted by the softmax of its logits (the log of that
    product) times ``pointer_sharpness`` (> 0): at 1 the mass that partial matches (the named
    colour on another kind) keep pulls the point off the named object, higher values
    concentrate it on the best-matching groups (a choice of this package, docs/training.md,
    run 39). It changes the points only, not the logits the pointer loss and pruners read, so
    it can be set after training. So can ``pointer_refine_radius`` (metres, 0 = off): with it
    only the groups that near a pointer's best-scoring group place its point
    (``pointer.place_points``), for any score; with it, ``pointer_track_radius`` (metres,
    0 = off) keeps a policy's point near where it was the step before unless a group elsewhere
    scores ``pointer_track_margin`` (logit units) more. ``head_branch`` > 0 (its hidden width) adds
    the geometry branch (:mod:`vla_pruned_ros.model.geometry_branch`): an MLP from the
    pointed positions, the pose and a ``head_branch_summary``-value linear summary of the
    action-query states to the chunk, added to the head's (``head_branch_mode`` 'add') or in
    its place ('only'); it needs pointers.
    """

    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    points: PointTokenizerConfig = field(default_factory=PointTokenizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    horizon: int = 8
    action_dim: int = 7
    control_dt: float = 0.1
    proprio_dim: int = 7
    instruction_tokens: int = 16
    vocab_size: int = 512
    action_space: str = 'eef_delta_xyz_rpy_gripper'
    action_mean: list[float] = field(default_factory=lambda: [0.0] * 7)
    action_std: list[float] = field(default_factory=lambda: [1.0] * 7)
    preset: str = 'custom'
    pointers: list[str] = field(default_factory=list)
    camera_to_base: Optional[list[list[float]]] = None
    head_hidden: int = 0
    line_features: bool = False
    object_context: bool = False
    pointer_score: str = 'joint'
    pointer_colours: list[str] = field(default_factory=list)
    pointer_kinds: list[str] = field(default_factory=list)
    pointer_sharpness: float = 1.0
    pointer_refine_radius: float = 0.0
    pointer_track_radius: float = 0.0
    pointer_track_margin: float = 2.0
    head_branch: int = 0
    head_branch_summary: int = 8
    head_branch_mode: str = 'add'

    def __post_init__(self) -> None:
        self.pointers = list(self.pointers)
        if self.head_hidden < 0:
            raise ValueError(f'head_hidden must be >= 0, got {self.head_hidden}')
        if self.head_branch < 0 or self.head_branch_summary < 0:
            raise ValueError(f'head_branch and head_branch_summary must be >= 0, got '
                             f'{self.head_branch} and {self.head_branch_summary}')
        if self.head_branch and not self.pointers:
            raise ValueError('head_branch reads the pointed positions: it needs pointers')
        if self.head_branch_mode not in BRANCH_MODES:
            raise ValueError(f'head_branch_mode must be one of {BRANCH_MODES}, got '
                             f'{self.head_branch_mode!r}')
        if self.camera_to_base is not None:
            self.camera_to_base = _rigid_transform(self.camera_to_base)
            if not self.pointers or self.proprio_dim < 3:
                raise ValueError('camera_to_base gives the head where the pointed things are '
                                 'relative to the end effector: it needs pointers and '
                                 'proprio_dim >= 3')
        if self.line_features and (self.camera_to_base is None or len(self.pointers) < 2
                                   or self.proprio_dim < 7):
            raise ValueError('line_features reads the line between the first two pointers '
                             'relative to the end-effector pose: it needs camera_to_base, two '
                             'pointers and proprio_dim 7')
        if self.object_context and (self.camera_to_base is None or not self.points.colour):
            raise ValueError('object_context measures shapes with z up and objects by colour: '
                             'it needs camera_to_base and points.colour')
        if self.pointer_score not in POINTER_SCORES:
            raise ValueError(f'pointer_score must be one of {POINTER_SCORES}, got '
                             f'{self.pointer_score!r}')
        if self.pointer_score == 'factored' and not self.points.colour:
            raise ValueError("pointer_score 'factored' has a colour part: it needs points.colour")
        self.pointer_colours = list(self.pointer_colours)
        self.pointer_kinds = list(self.pointer_kinds)
        if not (math.isfinite(self.pointer_sharpness) and self.pointer_sharpness > 0):
            raise ValueError(f'pointer_sharpness must be a positive number, got '
                             f'{self.pointer_sharpness}')
        if not (math.isfinite(self.pointer_refine_radius) and self.pointer_refine_radius >= 0):
            raise ValueError(f'pointer_refine_radius must be >= 0 (metres), got '
                             f'{self.pointer_refine_radius}')
        for name in ('pointer_track_radius', 'pointer_track_margin'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be >= 0, got {value}')
        if self.pointer_track_radius and not self.pointer_refine_radius:
            raise ValueError('pointer_track_radius chooses the group a refined point is placed '
                             'around: it needs pointer_refine_radius')
        if self.pointer_score == 'attribute':
            if not self.object_context:
                raise ValueError("pointer_score 'attribute' tells kinds apart by the object "
                                 'context: it needs object_context')
            for name, classes in (('pointer_colours', self.pointer_colours),
                                  ('pointer_kinds', self.pointer_kinds)):
                if not classes or len(set(classes)) != len(classes):
                    raise ValueError(f"pointer_score 'attribute' needs distinct {name}, got "
                                     f'{classes}')
        unknown = [name for name in self.pointers if name not in POINTER_TARGETS]
        if unknown or len(set(self.pointers)) != len(self.pointers):
            raise ValueError(f'pointers must be distinct names from {POINTER_TARGETS}, got '
                             f'{self.pointers}')

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        data = asdict(self)
        data['vision'] = self.vision.to_dict()
        data['points'] = self.points.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'MVLAConfig':
        """Inverse of :meth:`to_dict`; unknown keys are an error, so typos do not pass."""
        data = dict(data)
        vision = VisionTowerConfig.from_dict(data.pop('vision', {}))
        points = PointTokenizerConfig.from_dict(data.pop('points', {}))
        decoder = DecoderConfig(**data.pop('decoder', {}))
        return cls(vision=vision, points=points, decoder=decoder, **data)

    def save(self, path: str) -> None:
        """Write the configuration as JSON."""
        with open(path, 'w', encoding='utf-8') as stream:
            json.dump(self.to_dict(), stream, indent=2)

    @classmethod
    def load(cls, path: str) -> 'MVLAConfig':
        """Read a configuration written by :meth:`save`."""
        with open(path, encoding='utf-8') as stream:
            return cls.from_dict(json.load(stream))
