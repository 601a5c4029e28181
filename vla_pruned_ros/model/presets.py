"""
Named model shapes.

- ``tiny``: for tests and CI (with the sim preset's pointers and head inputs, so every pruner is
  tested with them; one hidden head layer, which fits the short test runs faster); a step takes
  milliseconds on a CPU.
- ``small``: a SigLIP-base-sized vision tower (224 px, 14 px patches: 256 2D tokens), 256 3D
  tokens and a decoder with Qwen2-0.5B's shape (896 wide, 24 layers, 14 heads, 2 KV heads).
- ``sim``: the tabletop benchmark's reference policy (trained by ``vla-pruned-ros train``; the
  shipped ``models/default`` is its ``sim-branch`` variant below): 96 px images in 12 px
  patches (64 2D tokens), 64 coloured point groups of 16 (64 3D tokens) from the cloud cropped
  to the table's workspace with the table plane removed (coloured marks on it, the push zones,
  stay), a 4-layer 192-wide Qwen2-family decoder, pointers at the named object and zone
  (:mod:`vla_pruned_ros.model.pointer`) and a two-layer action head that also reads where they
  are relative to the gripper (through the simulator camera's pose, ``camera_to_base``); sized
  for a 2-core CPU (its ``sim-branch`` recipe takes about three hours there: docs/training.md).
- ``sim-shape``: ``sim`` whose pointers also see the shape of the object around each group
  (``object_context``) and score colour and shape apart (``pointer_score='factored'``): fewer
  grounding errors on the heldout colour / shape pairs, not (yet) more closed-loop successes
  (docs/training.md, runs 20-26).
- ``sim-attribute``: ``sim`` whose pointers score each group by the probability that its colour
  and its kind (a shape, or a zone) are the ones named, from two classifiers that never see
  each other's input (``pointer_score='attribute'``), trained with class labels from the
  recorder's metadata (docs/training.md, run 39).
- ``sim-branch`` (the shipped model's) and ``sim-branch-only``: ``sim-attribute`` with the
  geometry branch (:mod:`vla_pruned_ros.model.geometry_branch`) added to the action head or in
  its place, and pointers that place their points at the centre of the best-scoring thing and
  track it from step to step (docs/training.md, runs 43-46).
- ``sim-branch-lite``: ``sim-branch`` with a 2-layer decoder and a 2-layer vision tower (the
  same tokens and widths): 0.46 GFLOP a frame against 0.80, a training step about 0.6 s
  against 0.85-1.1 on the 2-core development CPU, the recipe 98 min against 153-211; dense at
  the benchmark's target, tri_stage at 25 % not in pick (docs/training.md, "A lighter
  trunk").
- ``sim-branch-narrow``: ``sim-branch-lite`` at 128 wide instead of 192 (decoder, vision tower
  and 3D tokens; heads as wide, fewer of them): 0.23 GFLOP a frame (docs/training.md, "A
  narrower trunk"). Its decoder has two layers, so pruners that cut inside it need their
  layer setting at 1 (``tri_stage:semantic_layer=1``, as the benchmark's setting has).
- ``mla-7b``: the tri-stage paper's MLA shape: LLaMA-2-7B decoder with 256 2D + 256 3D
  tokens. Random weights, for latency measurements only (use bf16 on a GPU).
"""

from collections.abc import Callable

from vla_pruned_ros.camera import look_at_pose
from vla_pruned_ros.model.config import DecoderConfig, MVLAConfig
from vla_pruned_ros.tokens.points_3d import PointTokenizerConfig
from vla_pruned_ros.tokens.vision_2d import VisionTowerConfig

# The tabletop camera's view of the table and the space above it (camera optical frame,
# metres): without this crop most FPS groups land on the floor beyond the table.
SIM_WORKSPACE_MIN = (-0.5, -0.6, 0.1)
SIM_WORKSPACE_MAX = (0.5, 0.6, 0.95)
# Where the tabletop camera sits and looks (world frame = the frame of the end-effector pose,
# metres): the simulator's fixed camera (sim.scene.CameraSpec), which the sim preset is trained
# with. A test checks the two agree.
SIM_CAMERA_POSITION = (0.0, -0.36, 0.42)
SIM_CAMERA_TARGET = (0.0, 0.03, 0.0)


def _tiny() -> MVLAConfig:
    return MVLAConfig(
        vision=VisionTowerConfig(
            kind='siglip', image_size=64, patch_size=8, hidden_size=64, num_layers=2,
            num_heads=2, intermediate_size=128,
        ),
        points=PointTokenizerConfig(
            num_points=256, num_groups=32, group_size=16, hidden_dims=(32, 64), out_dim=64,
        ),
        decoder=DecoderConfig(
            family='qwen2', hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
            intermediate_size=128,
        ),
        instruction_tokens=12,
        preset='tiny',
        pointers=['object', 'zone'],
        camera_to_base=look_at_pose(SIM_CAMERA_POSITION, SIM_CAMERA_TARGET).tolist(),
    )


def _sim() -> MVLAConfig:
    return MVLAConfig(
        vision=VisionTowerConfig(
            kind='siglip', image_size=96, patch_size=12, hidden_size=192, num_layers=3,
            num_heads=3, intermediate_size=384,
        ),
        points=PointTokenizerConfig(
            num_points=512, num_groups=64, group_size=16, hidden_dims=(64, 128), out_dim=192,
            workspace_min=SIM_WORKSPACE_MIN, workspace_max=SIM_WORKSPACE_MAX, colour=True,
            plane_distance=0.01, plane_keep_chroma=0.2,
        ),
        decoder=DecoderConfig(
            family='qwen2', hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2,
            intermediate_size=576,
        ),
        horizon=8,
        instruction_tokens=16,
        preset='sim',
        pointers=['object', 'zone'],
        camera_to_base=look_at_pose(SIM_CAMERA_POSITION, SIM_CAMERA_TARGET).tolist(),
        head_hidden=512,
        line_features=True,
    )


def _sim_shape() -> MVLAConfig:
    config = _sim()
    config.preset = 'sim-shape'
    config.object_context = True
    config.pointer_score = 'factored'
    return config


# The benchmark's vocabulary (vla_pruned_ros.sim.scene.COLOURS and SHAPES, and its push
# zones; that module needs MuJoCo, which a model preset must not): the attribute score's
# classes.
SIM_COLOURS = ('red', 'green', 'blue', 'yellow', 'orange', 'purple', 'cyan', 'pink')
SIM_KINDS = ('cube', 'block', 'cylinder', 'sphere', 'zone')


def _sim_attribute() -> MVLAConfig:
    config = _sim()
    config.preset = 'sim-attribute'
    config.object_context = True
    config.pointer_score = 'attribute'
    config.pointer_colours = list(SIM_COLOURS)
    config.pointer_kinds = list(SIM_KINDS)
    # Chosen on the selection set (heldout seeds 1000-1099) among 1, 4 and 10 (run 39).
    config.pointer_sharpness = 10.0
    return config


def _base_visual() -> dict:
    return {
        'vision': VisionTowerConfig(
            kind='siglip', image_size=224, patch_size=14, hidden_size=768, num_layers=12,
            num_heads=12, intermediate_size=3072,
        ),
        'points': PointTokenizerConfig(
            num_points=1024, num_groups=256, group_size=32, hidden_dims=(64, 128), out_dim=256,
        ),
    }


def _small() -> MVLAConfig:
    return MVLAConfig(
        decoder=DecoderConfig(
            family='qwen2', hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
            intermediate_size=4864,
        ),
        instruction_tokens=16,
        preset='small',
        **_base_visual(),
    )


# The geometry branch's hidden width: the state BC probe's MLP (tools/state_bc_probe.py).
SIM_BRANCH_HIDDEN = 256
# About an object's size plus the spacing of its groups: chosen on first frames of heldout
# seeds 100-139 among 4-10 cm (docs/training.md, run 45).
SIM_REFINE_RADIUS = 0.08
# A pushed or lifted object moves a few centimetres between two policy steps; margin 2 and 1
# solved the same push episodes of the selection set (run 46).
SIM_TRACK_RADIUS = 0.1
SIM_TRACK_MARGIN = 2.0


def _sim_branch(mode: str) -> MVLAConfig:
    config = _sim_attribute()
    config.preset = 'sim-branch' if mode == 'add' else 'sim-branch-only'
    config.head_branch = SIM_BRANCH_HIDDEN
    config.head_branch_mode = mode
    # The points at the centre of what scores best, not on its best group (run 45), and kept
    # on it from step to step (run 46; inference only: training frames have no previous step).
    config.pointer_sharpness = 1.0
    config.pointer_refine_radius = SIM_REFINE_RADIUS
    config.pointer_track_radius = SIM_TRACK_RADIUS
    config.pointer_track_margin = SIM_TRACK_MARGIN
    return config


def _sim_branch_lite() -> MVLAConfig:
    config = _sim_branch('add')
    config.preset = 'sim-branch-lite'
    # The decoder is three quarters of the arithmetic (FlopsModel.from_model).
    config.decoder.num_layers = 2
    config.vision.num_layers = 2
    return config


# The narrow trunk's width: two thirds of the sim presets' 192, heads kept 32 (decoder) and
# 64 (vision tower) wide, feed-forward layers kept 3 and 2 times the width.
SIM_NARROW_WIDTH = 128


def _sim_branch_narrow() -> MVLAConfig:
    config = _sim_branch_lite()
    config.preset = 'sim-branch-narrow'
    width = SIM_NARROW_WIDTH
    config.decoder.hidden_size = width
    config.decoder.num_heads = width // 32
    config.decoder.intermediate_size = 3 * width
    config.vision.hidden_size = width
    config.vision.num_heads = width // 64
    config.vision.intermediate_size = 2 * width
    config.points.out_dim = width
    return config


def _mla_7b() -> MVLAConfig:
    return MVLAConfig(
        decoder=DecoderConfig(
            family='llama', hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
            intermediate_size=11008, rope_theta=10000.0, rms_norm_eps=1e-5,
        ),
        instruction_tokens=24,
        preset='mla-7b',
        **_base_visual(),
    )


PRESETS: dict[str, Callable[[], MVLAConfig]] = {
    'tiny': _tiny,
    'small': _small,
    'sim': _sim,
    'sim-shape': _sim_shape,
    'sim-attribute': _sim_attribute,
    'sim-branch': lambda: _sim_branch('add'),
    'sim-branch-only': lambda: _sim_branch('only'),
    'sim-branch-lite': _sim_branch_lite,
    'sim-branch-narrow': _sim_branch_narrow,
    'mla-7b': _mla_7b,
}


def preset_config(name: str) -> MVLAConfig:
    """A fresh configuration for a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f'unknown preset {name!r}; available: {", ".join(PRESETS)}') from None
