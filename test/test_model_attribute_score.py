"""The pointer's attribute score: P(named colour) x P(named kind) per group, and its labels."""

import pytest
import torch

from test_model_object_context import CAMERA_TO_BASE, _groups, _surface, random_pointer_inputs
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import InstructionPointer, attribute_loss, pointer_loss
from vla_pruned_ros.model.presets import SIM_COLOURS, preset_config

PALETTE = ((0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.9), (0.9, 0.8, 0.1))
SHAPES = ('cube', 'block', 'sphere')
PLACES = ((-0.12, 0.0), (0.0, 0.08), (0.12, 0.0))
NONE_COLOUR, NONE_KIND = len(PALETTE), len(SHAPES)


def _scene(colour: int, shape: int, generator: torch.Generator):
    """
    Three objects on a table, the named (colour, shape) pair and two half-matches.

    One shares its colour, one its shape; their places are shuffled. Returns the instruction
    ids (1-4 colours, 5-7 shapes, 9 filler), centres [1, G, 3], neighbourhoods [1, G, 16, 6],
    the target's group labels [1, G] and the groups' colour and kind classes [1, G].
    """
    other_colour = (colour + int(torch.randint(1, 4, (1,), generator=generator))) % 4
    other_shape = (shape + int(torch.randint(1, 3, (1,), generator=generator))) % 3
    objects = [(colour, shape), (colour, other_shape), (other_colour, shape)]
    places = torch.randperm(3, generator=generator).tolist()
    parts, colours, kinds, target = [], [], [], []
    for index, (c, s) in enumerate(objects):
        points = _surface(SHAPES[s], PLACES[places[index]])
        parts.append((points, PALETTE[c]))
        groups = len(points) // 16
        colours += [c] * groups
        kinds += [s] * groups
        target += [float(index == 0)] * groups
    centres, neighbourhoods = _groups(parts)
    ids = torch.tensor([[9, colour + 1, shape + 5]])
    return (ids, centres, neighbourhoods, torch.tensor([target]), torch.tensor([colours]),
            torch.tensor([kinds]))


def _batch(pairs, count: int, generator: torch.Generator):
    chosen = torch.randint(len(pairs), (count,), generator=generator).tolist()
    scenes = [_scene(*pairs[i], generator) for i in chosen]
    return [torch.cat(parts) for parts in zip(*scenes)]


def _pointer() -> InstructionPointer:
    return InstructionPointer(
        width=32, num_pointers=1, text_length=3, num_heads=2, vocab_size=10,
        point_features=6, proprio_dim=7, camera_to_base=CAMERA_TO_BASE.tolist(),
        object_context=True, attributes=(len(PALETTE), len(SHAPES)))


def test_the_attribute_score_finds_colour_shape_pairs_training_never_showed():
    pairs = [(c, s) for c in range(4) for s in range(3)]
    unseen = [(0, 0), (1, 1), (2, 2), (3, 0)]  # every colour and every shape named elsewhere
    seen = [p for p in pairs if p not in unseen]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pointer = _pointer()
    pool = _batch(seen, 96, generator)
    optimiser = torch.optim.Adam(pointer.parameters(), lr=3e-3)
    for _ in range(150):
        rows = torch.randint(len(pool[0]), (32,), generator=generator)
        ids, centres, neighbourhoods, target, colours, kinds = (part[rows] for part in pool)
        output = pointer(ids, centres, neighbourhoods)
        named = torch.stack([ids[:, 1] - 1, ids[:, 2] - 5], dim=-1)[:, None]
        loss = pointer_loss(output.logits[:, 0], target) + attribute_loss(
            output.attributes, named, colours, kinds)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    ids, centres, neighbourhoods, target, _, _ = _batch(unseen, 48, generator)
    with torch.no_grad():
        output = pointer(ids, centres, neighbourhoods)
    # most of the mass on the named object's groups, in scenes with both of its half-matches
    mass = (torch.softmax(output.logits[:, 0], -1) * target).sum(-1)
    assert (mass > 0.5).float().mean() > 0.9
    # and the point lies on it (the mean of its groups' centres), not between objects
    truth = (centres * target[..., None]).sum(1) / target.sum(1, keepdim=True)
    assert (output.points[:, 0] - truth).norm(dim=-1).median() < 0.02


def test_attribute_loss_counts_known_labels_only():
    torch.manual_seed(0)
    pointer = _pointer()
    ids, centres, neighbourhoods, _, colours, kinds = _scene(0, 0, torch.Generator())
    output = pointer(ids, centres, neighbourhoods)
    attributes = output.attributes
    assert attributes.text_colour.shape == (1, 1, len(PALETTE))
    assert attributes.group_kind.shape == (1, centres.shape[1], len(SHAPES) + 1)
    unknown = torch.full_like(colours, -1)
    nothing = attribute_loss(attributes, torch.full((1, 1, 2), -1), unknown, unknown)
    assert float(nothing.detach()) == 0.0
    nothing.backward()  # a gradient path even when nothing counts
    named = torch.tensor([[[0, 0]]])
    some = attribute_loss(attributes, named, colours, kinds)
    # a label of the 'none' class counts; -1 does not
    assert float(some.detach()) > 0
    with_none = attribute_loss(attributes, named, torch.full_like(colours, NONE_COLOUR),
                               torch.full_like(kinds, NONE_KIND))
    assert float(with_none.detach()) != float(some.detach())


def test_attribute_settings_are_checked_and_reach_the_model():
    identity = [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    config = preset_config('sim-attribute')
    assert config.pointer_score == 'attribute' and config.object_context
    assert tuple(config.pointer_colours) == SIM_COLOURS and 'zone' in config.pointer_kinds
    with pytest.raises(ValueError, match='object_context'):
        MVLAConfig(pointers=['object'], pointer_score='attribute', camera_to_base=identity,
                   pointer_colours=['red'], pointer_kinds=['cube'])
    data = config.to_dict()
    data['pointer_kinds'] = ['cube', 'cube']
    with pytest.raises(ValueError, match='distinct pointer_kinds'):
        MVLAConfig.from_dict(data)
    with pytest.raises(ValueError, match='attribute score'):
        InstructionPointer(16, 1, 4, 2, 10, point_features=6, proprio_dim=7,
                           camera_to_base=identity, attributes=(2, 2))
    # the round trip keeps the classes, and the model has no joint key to score with
    again = MVLAConfig.from_dict(config.to_dict())
    assert again.pointer_kinds == config.pointer_kinds
    tiny = preset_config('tiny')
    tiny.points.colour = True
    tiny.object_context, tiny.pointer_score = True, 'attribute'
    tiny.pointer_colours, tiny.pointer_kinds = ['red', 'blue'], ['cube', 'zone']
    torch.manual_seed(0)
    model = MultiModalVLA(tiny).eval()
    assert not hasattr(model.pointer, 'key')
    assert model.pointer.group_kind[-1].out_features == 3  # two kinds and none
    ids, centres, neighbourhoods = random_pointer_inputs(tiny)
    output = model.point(ids, centres, neighbourhoods)
    assert output.logits.shape == (1, 2, centres.shape[1])
    assert torch.isfinite(output.logits).all()
    assert (output.logits <= 1e-6).all()  # logs of probabilities


def test_sharpness_concentrates_the_point_on_the_best_matching_groups():
    torch.manual_seed(0)
    soft, sharp = _pointer(), _pointer()
    sharp.sharpness = 10.0
    sharp.load_state_dict(soft.state_dict())
    ids, centres, neighbourhoods, _, _, _ = _scene(1, 2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        one, ten = soft(ids, centres, neighbourhoods), sharp(ids, centres, neighbourhoods)
    # the scores (what the pointer loss and the pruners read) are the same ...
    torch.testing.assert_close(ten.logits, one.logits)
    best = one.logits[0, 0].argmax()
    # ... the point moves towards the best group's centre
    assert ((ten.points[0, 0] - centres[0, best]).norm()
            < (one.points[0, 0] - centres[0, best]).norm())
    # the setting reaches the model and is checked
    config = preset_config('sim-attribute')
    assert MultiModalVLA(config).pointer.sharpness == config.pointer_sharpness
    for bad in (0.0, -1.0, float('nan')):
        data = dict(config.to_dict(), pointer_sharpness=bad)
        with pytest.raises(ValueError, match='pointer_sharpness'):
            MVLAConfig.from_dict(data)


def test_the_sim_attribute_classes_are_the_benchmarks_vocabulary():
    """The preset repeats the simulator's names (a preset may not import MuJoCo)."""
    from vla_pruned_ros.model.presets import SIM_KINDS
    from vla_pruned_ros.sim.scene import COLOURS, SHAPES
    from vla_pruned_ros.sim.tasks import ZONE_COLOURS
    from vla_pruned_ros.train.dataset import ZONE_KIND

    assert tuple(COLOURS) == SIM_COLOURS and set(ZONE_COLOURS) <= set(SIM_COLOURS)
    assert (*SHAPES, ZONE_KIND) == SIM_KINDS
