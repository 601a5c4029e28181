"""
Task families, instructions, seeded layouts, train/heldout splits and success predicates.

Families:

- ``reach``: bring the gripper just above the named object.
- ``push``: push the named object into the zone of the named colour (two zones on the table).
- ``pick``: grasp the named object and lift it ``LIFT_HEIGHT`` above its resting height.

Every scene has 2-4 distractor objects, and no two objects share both colour and shape, so the
instruction names exactly one object; distractors often share its colour or its shape, so a
policy has to read both words and look.

Splits: ``heldout`` differs from ``train`` in three ways, none of which training ever sees:

1. targets: the (colour, shape) pairs in ``HELDOUT_PAIRS`` are heldout targets; train scenes
   contain none of them, not even as distractors (every colour and every shape still appears
   in training, only these combinations are new);
2. wording: the last instruction template of each family is used only in ``heldout``;
3. layouts: a seed draws its layout from a separate range per split (``SPLIT_SEED_BASE``).
"""

from dataclasses import dataclass
import math
from typing import Optional

import numpy as np

from vla_pruned_ros.sim.scene import (
    COLOURS,
    FINGER_HALF_SIZE,
    FINGER_MAX_OPENING,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    TabletopScene,
    ZoneSpec,
)

FAMILIES = ('reach', 'push', 'pick')
SPLITS = ('train', 'heldout')

# Instruction templates per family; the LAST one of each is reserved for the heldout split.
TEMPLATES: dict[str, tuple[str, ...]] = {
    'reach': (
        'reach the {obj}',
        'move the gripper to the {obj}',
        'go to the {obj}',
        'put the gripper right above the {obj}',
        'hover over the {obj}',
    ),
    'push': (
        'push the {obj} to the {zone} zone',
        'slide the {obj} into the {zone} zone',
        'push the {obj} onto the {zone} zone',
        'move the {obj} to the {zone} zone by pushing it',
        'shove the {obj} over to the {zone} zone',
    ),
    'pick': (
        'pick up the {obj}',
        'lift the {obj}',
        'grasp the {obj} and lift it',
        'pick the {obj} up off the table',
        'raise the {obj} into the air',
    ),
}

# Target (colour, shape) pairs only the heldout split uses: each colour once, each shape twice.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ('red', 'sphere'),
    ('green', 'cylinder'),
    ('blue', 'cube'),
    ('yellow', 'block'),
    ('orange', 'cube'),
    ('purple', 'cylinder'),
    ('cyan', 'block'),
    ('pink', 'sphere'),
})

# Spheres roll away from a pusher, so push targets are the shapes that slide.
TARGET_SHAPES: dict[str, tuple[str, ...]] = {
    'reach': tuple(SHAPES),
    'push': ('cube', 'block', 'cylinder'),
    'pick': tuple(SHAPES),
}
ZONE_COLOURS = ('green', 'blue', 'red', 'yellow')

# Layout seeds: split base + seed, with 0 <= seed < SEEDS_PER_SPLIT.
SEEDS_PER_SPLIT = 1_000_000
SPLIT_SEED_BASE = {'train': 0, 'heldout': SEEDS_PER_SPLIT}

MIN_DISTRACTORS = 2
MAX_DISTRACTORS = 4
# Area where object centres may be placed (world x, y).
OBJECT_AREA_LOW = (-0.19, -0.13)
OBJECT_AREA_HIGH = (0.19, 0.17)
# Free space kept between two objects' footprints so an open finger fits between them.
OBJECT_CLEARANCE = 2 * (FINGER_HALF_SIZE[1] + 0.01)

# Success thresholds (metres).
REACH_HORIZONTAL_TOLERANCE = 0.03
REACH_MAX_HEIGHT_ABOVE_TOP = 0.07
PUSH_ZONE_MARGIN = 0.015
LIFT_HEIGHT = 0.08


class TaskError(ValueError):
    """An unknown family or split, or a seed outside ``[0, SEEDS_PER_SPLIT)``."""


@dataclass(frozen=True)
class Task:
    """One episode's task: the scene to build, what to do in it, and how it was drawn."""

    family: str
    split: str
    seed: int
    instruction: str
    template_index: int
    scene: SceneSpec
    target: str
    zone: Optional[str] = None

    @property
    def target_object(self) -> ObjectSpec:
        """The object the instruction names."""
        return next(o for o in self.scene.objects if o.name == self.target)

    @property
    def target_zone(self) -> Optional[ZoneSpec]:
        """The zone the instruction names (push only)."""
        return next((z for z in self.scene.zones if z.name == self.zone), None)

    def metadata(self) -> dict:
        """Return a JSON-ready summary: family, split, seed, instruction and the scene."""
        return {
            'family': self.family,
            'split': self.split,
            'seed': self.seed,
            'instruction': self.instruction,
            'template_index': self.template_index,
            'target': self.target_object.phrase,
            'zone': self.target_zone.colour if self.target_zone else None,
            'objects': [
                {'name': o.name, 'colour': o.colour, 'shape': o.shape, 'size': list(o.size),
                 'x': o.x, 'y': o.y, 'yaw': o.yaw}
                for o in self.scene.objects
            ],
            'zones': [
                {'name': z.name, 'colour': z.colour, 'x': z.x, 'y': z.y, 'radius': z.radius}
                for z in self.scene.zones
            ],
        }


def _check(family: str, split: str) -> None:
    if family not in FAMILIES:
        raise TaskError(f'unknown task family {family!r}; known: {list(FAMILIES)}')
    if split not in SPLITS:
        raise TaskError(f'unknown split {split!r}; known: {list(SPLITS)}')


def target_pairs(family: str, split: str) -> list[tuple[str, str]]:
    """Return the (colour, shape) pairs that may be the target of ``family`` in ``split``."""
    _check(family, split)
    pairs = [(c, s) for c in COLOURS for s in TARGET_SHAPES[family]]
    if split == 'heldout':
        return [p for p in pairs if p in HELDOUT_PAIRS]
    return [p for p in pairs if p not in HELDOUT_PAIRS]


def scene_pairs(split: str) -> list[tuple[str, str]]:
    """Return the (colour, shape) pairs any object (target or distractor) may have in ``split``."""
    _check(FAMILIES[0], split)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == 'train':
        return [p for p in pairs if p not in HELDOUT_PAIRS]
    return pairs


def template_indices(family: str, split: str) -> list[int]:
    """Return the indices into ``TEMPLATES[family]`` that ``split`` uses."""
    _check(family, split)
    last = len(TEMPLATES[family]) - 1
    return [last] if split == 'heldout' else list(range(last))


def _draw_size(shape: str, rng: np.random.Generator) -> tuple[float, ...]:
    if shape == 'cube':
        return (float(rng.uniform(0.018, 0.026)),) * 3
    if shape == 'block':
        # The long side (2 x 0.04-0.048) does not fit the 9 cm gripper opening.
        return (
            float(rng.uniform(0.040, 0.048)),
            float(rng.uniform(0.016, 0.020)),
            float(rng.uniform(0.018, 0.024)),
        )
    if shape == 'cylinder':
        # Not taller than about its diameter, so that a push slides it rather than tips it.
        return (float(rng.uniform(0.020, 0.026)), float(rng.uniform(0.020, 0.030)))
    return (float(rng.uniform(0.020, 0.027)),)


def _draw_yaw(shape: str, rng: np.random.Generator) -> float:
    # Round shapes look the same at any yaw; boxes are symmetric under a half turn.
    return float(rng.uniform(-math.pi / 2, math.pi / 2)) if SHAPES[shape] == 'box' else 0.0


def _segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(point - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(point - (a + t * ab)))


def _uniform_xy(rng: np.random.Generator, margin: float = 0.0) -> np.ndarray:
    low = np.add(OBJECT_AREA_LOW, margin)
    high = np.subtract(OBJECT_AREA_HIGH, margin)
    return rng.uniform(low, high)


def _layout(family: str, split: str, rng: np.random.Generator) -> Optional[tuple]:
    """Draw one layout; return None when a placement constraint could not be met."""
    target_pair = target_pairs(family, split)[rng.integers(len(target_pairs(family, split)))]
    n_distractors = int(rng.integers(MIN_DISTRACTORS, MAX_DISTRACTORS + 1))
    others = [p for p in scene_pairs(split) if p != target_pair]
    picks = rng.choice(len(others), size=n_distractors, replace=False)
    pairs = [target_pair] + [others[i] for i in picks]
    objects: list[ObjectSpec] = []
    zones: list[ZoneSpec] = []

    if family == 'push':
        zone_colours = rng.choice(len(ZONE_COLOURS), size=2, replace=False)
        for k, colour_index in enumerate(zone_colours):
            for _ in range(50):
                xy = _uniform_xy(rng, margin=0.03)
                if all(np.hypot(xy[0] - z.x, xy[1] - z.y) > 2 * z.radius + 0.04 for z in zones):
                    zones.append(ZoneSpec(f'zone{k}', ZONE_COLOURS[colour_index], *map(float, xy)))
                    break
            else:
                return None

    for k, (colour, shape) in enumerate(pairs):
        size = _draw_size(shape, rng)
        for _ in range(100):
            x, y = map(float, _uniform_xy(rng))
            candidate = ObjectSpec(f'obj{k}', colour, shape, size, x, y, _draw_yaw(shape, rng))
            if _fits(candidate, objects, zones, family):
                objects.append(candidate)
                break
        else:
            return None
    return objects, zones


def _fits(
    candidate: ObjectSpec, placed: list[ObjectSpec], zones: list[ZoneSpec], family: str
) -> bool:
    """Check a new object against the ones already placed (the first one is the target)."""
    xy = np.array([candidate.x, candidate.y])
    for other in placed:
        gap = np.hypot(candidate.x - other.x, candidate.y - other.y)
        if gap < candidate.footprint_radius + other.footprint_radius + OBJECT_CLEARANCE:
            return False
    for zone in zones:
        if np.hypot(candidate.x - zone.x, candidate.y - zone.y) < zone.radius + 0.01 + (
            candidate.footprint_radius
        ):
            return False
    if family != 'push':
        return True
    goal = np.array([zones[0].x, zones[0].y])
    if not placed:
        # The target: far enough from its zone to need a push, with room behind it to start.
        distance = float(np.linalg.norm(goal - xy))
        if not 0.12 <= distance <= 0.24:
            return False
        start = xy - (goal - xy) / distance * (candidate.footprint_radius + 0.05)
        return bool(np.all(start >= (-0.26, -0.22)) and np.all(start <= (0.26, 0.26)))
    # A distractor keeps out of the corridor the target travels along.
    target = placed[0]
    direction = (goal - np.array([target.x, target.y]))
    direction /= np.linalg.norm(direction)
    behind = np.array([target.x, target.y]) - direction * (target.footprint_radius + 0.06)
    corridor = target.footprint_radius + FINGER_MAX_OPENING + 0.02
    return _segment_distance(xy, behind, goal) > corridor + candidate.footprint_radius


def make_task(family: str, seed: int, split: str = 'train') -> Task:
    """
    Draw the task of ``family`` for ``seed`` in ``split``; the same arguments give the same task.

    Raises ``TaskError`` for an unknown family or split, or a seed outside
    ``[0, SEEDS_PER_SPLIT)``.
    """
    _check(family, split)
    if not 0 <= int(seed) < SEEDS_PER_SPLIT:
        raise TaskError(f'seed must lie in [0, {SEEDS_PER_SPLIT}), got {seed}')
    layout_seed = SPLIT_SEED_BASE[split] + int(seed)
    rng = np.random.default_rng([FAMILIES.index(family), layout_seed])
    for _ in range(200):
        layout = _layout(family, split, rng)
        if layout is not None:
            break
    else:  # pragma: no cover - the area is large enough that this never happens in practice
        raise TaskError(f'could not place the objects of {family} seed {seed}')
    objects, zones = layout
    template_index = int(rng.choice(template_indices(family, split)))
    target = objects[0]
    zone = zones[0] if zones else None
    instruction = TEMPLATES[family][template_index].format(
        obj=target.phrase, zone=zone.colour if zone else ''
    )
    # Shuffle the object order so that 'obj0' is not always the target.
    order = rng.permutation(len(objects))
    renamed = [
        ObjectSpec(f'obj{i}', o.colour, o.shape, o.size, o.x, o.y, o.yaw)
        for i, o in enumerate(objects[j] for j in order)
    ]
    target_name = f'obj{int(np.flatnonzero(order == 0)[0])}'
    # The gripper starts low over the empty front edge, below the camera's rays to the
    # objects, turned crosswise so that its palm does not reach into the view.
    start = (
        float(rng.uniform(-0.08, 0.08)),
        float(rng.uniform(-0.25, -0.22)),
        float(rng.uniform(0.06, 0.09)),
        float(math.pi / 2 + rng.uniform(-0.3, 0.3)),
    )
    scene = SceneSpec(objects=tuple(renamed), zones=tuple(zones), gripper_start=start)
    return Task(
        family=family,
        split=split,
        seed=int(seed),
        instruction=instruction,
        template_index=template_index,
        scene=scene,
        target=target_name,
        zone=zone.name if zone else None,
    )


def is_success(task: Task, scene: TabletopScene) -> bool:
    """Return True when the scene's current state satisfies the task."""
    target = task.target_object
    position = scene.object_position(target.name)
    if task.family == 'reach':
        tcp = scene.tcp_position()
        horizontal = float(np.hypot(*(tcp[:2] - position[:2])))
        above_top = float(tcp[2] - (position[2] + target.half_height))
        return horizontal < REACH_HORIZONTAL_TOLERANCE and (
            0.0 < above_top < REACH_MAX_HEIGHT_ABOVE_TOP
        )
    if task.family == 'push':
        zone = task.target_zone
        inside = np.hypot(position[0] - zone.x, position[1] - zone.y) < (
            zone.radius - PUSH_ZONE_MARGIN
        )
        on_table = position[2] < target.half_height + 0.01
        return bool(inside and on_table)
    lifted = position[2] > target.half_height + LIFT_HEIGHT
    held = scene.touching(target.name, 'finger_left') or scene.touching(
        target.name, 'finger_right'
    )
    return bool(lifted and held)
