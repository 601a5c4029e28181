"""The pointer's shape cue (object context) and its factored colour + shape score."""

import pytest
import torch

from vla_pruned_ros.camera import look_at_pose
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.object_context import OBJECT_CONTEXT_WIDTH, object_descriptors
from vla_pruned_ros.model.pointer import InstructionPointer, pointer_loss
from vla_pruned_ros.model.presets import preset_config

CAMERA_TO_BASE = torch.tensor(look_at_pose((0.0, -0.36, 0.42), (0.0, 0.03, 0.0)),
                              dtype=torch.float32)
# The descriptor's columns (object_context.object_descriptors)
HEIGHT, TOP, MAJOR, MINOR, LARGEST, RMS, UPPER, CORNER_RATIO, TOP_RATIO, COUNT = range(10)


def _surface(shape: str, centre_xy: 'tuple[float, float]', n: int = 240) -> torch.Tensor:
    """Points [n, 3] (base frame, z up, table at 0) on the upper surface of a shape."""
    generator = torch.Generator().manual_seed(hash(shape) % 1000)
    u = torch.rand(n, 3, generator=generator)
    if shape == 'sphere':  # the upper hemisphere of radius 2.4 cm resting on the table
        direction = torch.randn(n, 3, generator=generator)
        direction[:, 2] = direction[:, 2].abs()
        points = 0.024 * direction / direction.norm(dim=1, keepdim=True)
        points[:, 2] += 0.024
    else:  # the top face and the sides of a box (cube 2.2 cm half size, block 4.4 x 1.8)
        half = (0.022, 0.022, 0.022) if shape == 'cube' else (0.044, 0.018, 0.022)
        points = (u * 2 - 1) * torch.tensor(half)
        face = torch.randint(3, (n,), generator=generator)
        points[face == 0, 2] = half[2]  # top
        points[face == 1, 0] = torch.sign(points[face == 1, 0]) * half[0]
        points[face == 2, 1] = torch.sign(points[face == 2, 1]) * half[1]
        points[:, 2] += half[2]
    return points + torch.tensor([*centre_xy, 0.0])


def _groups(objects: 'list[tuple[torch.Tensor, tuple]]', group_size: int = 16):
    """Camera-frame centres [1, G, 3] and coloured neighbourhoods [1, G, k, 6] of objects."""
    base_to_camera = torch.linalg.inv(CAMERA_TO_BASE)
    centres, neighbourhoods = [], []
    for points, colour in objects:
        camera = points @ base_to_camera[:3, :3].T + base_to_camera[:3, 3]
        for chunk in camera.split(group_size):
            centre = chunk.mean(0)
            rgb = torch.tensor(colour).expand(len(chunk), 3)
            neighbourhoods.append(torch.cat([chunk - centre, rgb], dim=1))
            centres.append(centre)
    return torch.stack(centres)[None], torch.stack(neighbourhoods)[None]



def random_pointer_inputs(config):
    """An instruction and coloured random groups in front of the camera, sized for ``config``."""
    groups = config.points.num_groups
    neighbourhoods = torch.cat([torch.randn(1, groups, 16, 3) * 0.01,
                                torch.rand(1, groups, 16, 3)], dim=-1)
    centres = torch.randn(1, groups, 3) * 0.1 + torch.tensor([0.0, 0.0, 0.5])
    ids = torch.randint(2, 100, (1, config.instruction_tokens))
    return ids, centres, neighbourhoods

def test_object_context_measures_the_object_each_group_lies_on():
    cube = _surface('cube', (0.0, 0.0))
    block = _surface('block', (0.15, 0.0))
    sphere = _surface('sphere', (-0.15, 0.0))
    # a green cube touching the red cube: near, but another colour, so another object
    neighbour = _surface('cube', (0.0, 0.045))
    centres, neighbourhoods = _groups([(cube, (0.8, 0.1, 0.1)), (block, (0.8, 0.1, 0.1)),
                                       (sphere, (0.8, 0.1, 0.1)), (neighbour, (0.1, 0.7, 0.1))])
    context = object_descriptors(neighbourhoods, centres, CAMERA_TO_BASE)[0]
    assert context.shape == (centres.shape[1], OBJECT_CONTEXT_WIDTH)
    per_object = context.split(15)  # 240 points = 15 groups of 16 per object
    cube_ctx, block_ctx, sphere_ctx = (part.mean(0) for part in per_object[:3])
    # heights in centimetres: the cube and block are 4.4 cm tall, the sphere 4.8 cm
    assert cube_ctx[HEIGHT] == pytest.approx(4.4, abs=0.3)
    assert cube_ctx[TOP] == pytest.approx(4.4, abs=0.1)
    assert sphere_ctx[TOP] == pytest.approx(4.8, abs=0.1)
    # a block's footprint is long, a cube's square; the sphere narrows towards its top
    assert block_ctx[MAJOR] / block_ctx[MINOR] > 1.8
    assert cube_ctx[MAJOR] / cube_ctx[MINOR] < 1.3
    assert sphere_ctx[TOP_RATIO] < 0.8 * cube_ctx[TOP_RATIO]
    # the green neighbour's points are not the red cube's: a group in the cube's middle
    # counts only red points (15 groups x 16 within 5 cm at most)
    assert (per_object[0][:, COUNT] * 50 <= 240 + 1e-3).all()
    assert (per_object[3][:, COUNT] * 50 <= 240 + 1e-3).all()


def test_object_context_is_an_input_and_handles_lonely_groups():
    centres, neighbourhoods = _groups([(_surface('cube', (0.0, 0.0))[:16], (0.5, 0.5, 0.5))])
    neighbourhoods.requires_grad_(True)
    context = object_descriptors(neighbourhoods, centres, CAMERA_TO_BASE)
    assert not context.requires_grad and torch.isfinite(context).all()
    with pytest.raises(ValueError, match='coloured'):
        object_descriptors(neighbourhoods[..., :3], centres, CAMERA_TO_BASE)


def _pair_scenes(batch: int, pairs: 'list[tuple[int, int]]', generator: torch.Generator):
    """
    Scenes of four objects, one group each, the target first.

    The target's (colour, shape) pair is drawn from ``pairs``; the others are one of the same
    colour and another shape, one of the same shape and another colour, one of neither. Word
    ids: 1-4 colours, 5-8 shapes, 9 filler.
    """
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.2, 0.9],
                            [0.9, 0.8, 0.1]])
    extents = torch.tensor([[0.02, 0.02, 0.02], [0.04, 0.01, 0.02], [0.01, 0.01, 0.04],
                            [0.03, 0.03, 0.005]])
    chosen = torch.tensor(pairs)[torch.randint(len(pairs), (batch,), generator=generator)]
    colour, shape = chosen[:, 0], chosen[:, 1]
    other_colour = (colour + torch.randint(1, 4, (batch,), generator=generator)) % 4
    other_shape = (shape + torch.randint(1, 4, (batch,), generator=generator)) % 4
    colours = torch.stack([colour, colour, other_colour, other_colour], 1)
    shapes = torch.stack([shape, other_shape, shape, other_shape], 1)
    noise = torch.randn(batch, 4, 8, 3, generator=generator)
    xyz = noise * extents[shapes][:, :, None]
    rgb = palette[colours][:, :, None].expand(-1, -1, 8, -1)
    neighbourhoods = torch.cat([xyz, rgb], dim=-1)
    centres = torch.rand(batch, 4, 3, generator=generator)
    input_ids = torch.stack([torch.full((batch,), 9), colour + 1, shape + 5], 1)
    labels = torch.zeros(batch, 4)
    labels[:, 0] = 1.0
    return input_ids, centres, neighbourhoods, labels


def test_the_factored_score_finds_colour_shape_pairs_training_never_showed():
    pairs = [(c, s) for c in range(4) for s in range(4)]
    unseen = [(c, c) for c in range(4)]  # each colour and each shape once, as the benchmark
    seen = [p for p in pairs if p not in unseen]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pointer = InstructionPointer(width=32, num_pointers=1, text_length=3, num_heads=2,
                                 vocab_size=10, point_features=6, factored=True)
    optimiser = torch.optim.Adam(pointer.parameters(), lr=2e-3)
    for _ in range(300):
        input_ids, centres, neighbourhoods, labels = _pair_scenes(64, seen, generator)
        loss = pointer_loss(pointer(input_ids, centres, neighbourhoods).logits[:, 0], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    input_ids, centres, neighbourhoods, labels = _pair_scenes(256, unseen, generator)
    with torch.no_grad():
        logits = pointer(input_ids, centres, neighbourhoods).logits[:, 0]
    # the target is the only group matching both words, on pairs it never saw
    assert (logits.argmax(-1) == 0).float().mean() > 0.9
    assert torch.softmax(logits, -1)[:, 0].mean() > 0.6


def test_shape_cue_settings_are_checked_and_reach_the_model():
    identity = [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match='object_context'):
        MVLAConfig(pointers=['object'], object_context=True)
    with pytest.raises(ValueError, match='object_context'):
        MVLAConfig(pointers=['object'], object_context=True, camera_to_base=identity)
    with pytest.raises(ValueError, match='pointer_score'):
        MVLAConfig(pointers=['object'], pointer_score='bilinear')
    with pytest.raises(ValueError, match='pointer_score'):
        MVLAConfig(pointers=['object'], pointer_score='factored')
    with pytest.raises(ValueError, match='coloured'):
        InstructionPointer(16, 1, 4, 2, 10, point_features=3, factored=True)
    # older models (neither key) load as joint pointers without the context
    config = MVLAConfig.from_dict(preset_config('tiny').to_dict())
    assert config.pointer_score == 'joint' and not config.object_context
    shape = preset_config('sim-shape')
    assert shape.object_context and shape.pointer_score == 'factored'
    assert not preset_config('sim').object_context  # run 30's architecture
    tiny = preset_config('tiny')
    tiny.points.colour = True
    tiny.object_context, tiny.pointer_score = True, 'factored'
    torch.manual_seed(0)
    model = MultiModalVLA(tiny).eval()
    # shape descriptors: centre, extent and the context; colour apart
    assert model.pointer.key[0].in_features == 6 + OBJECT_CONTEXT_WIDTH
    assert model.pointer.colour_key[0].in_features == 3
    ids, centres, neighbourhoods = random_pointer_inputs(tiny)
    output = model.point(ids, centres, neighbourhoods)
    assert output.logits.shape == (1, 2, centres.shape[1])
    assert torch.isfinite(output.points).all()
