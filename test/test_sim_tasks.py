"""Task families, instructions and the train/heldout split of the MuJoCo tabletop benchmark."""

import pytest

from vla_pruned_ros.sim.scene import COLOURS, SHAPES
from vla_pruned_ros.sim.tasks import (
    FAMILIES,
    HELDOUT_PAIRS,
    MAX_DISTRACTORS,
    MIN_DISTRACTORS,
    TEMPLATES,
    TaskError,
    make_task,
)

SEEDS = range(100)


@pytest.fixture(scope='module')
def tasks():
    return {
        (family, split): [make_task(family, seed, split) for seed in SEEDS]
        for family in FAMILIES
        for split in ('train', 'heldout')
    }


def _pairs(task):
    return [(o.colour, o.shape) for o in task.scene.objects]


def test_train_never_shows_a_heldout_combination(tasks):
    for family in FAMILIES:
        for task in tasks[family, 'train']:
            assert not set(_pairs(task)) & HELDOUT_PAIRS, task.metadata()
            assert task.template_index != len(TEMPLATES[family]) - 1
            assert TEMPLATES[family][-1].split('{')[0] not in task.instruction


def test_heldout_targets_and_wording_are_the_heldout_ones(tasks):
    for family in FAMILIES:
        for task in tasks[family, 'heldout']:
            target = task.target_object
            assert (target.colour, target.shape) in HELDOUT_PAIRS
            assert task.template_index == len(TEMPLATES[family]) - 1


def test_training_still_covers_every_colour_and_shape_as_target(tasks):
    targets = [t.target_object for f in FAMILIES for t in tasks[f, 'train']]
    assert {o.colour for o in targets} == set(COLOURS)
    assert {o.shape for o in targets} == set(SHAPES)
    assert len(COLOURS) >= 6


def test_layouts_of_the_two_splits_differ_for_the_same_seed(tasks):
    for family in FAMILIES:
        for train, heldout in zip(tasks[family, 'train'], tasks[family, 'heldout']):
            assert train.scene != heldout.scene


def test_instruction_names_exactly_one_object_among_distractors(tasks):
    for (family, _), family_tasks in tasks.items():
        for task in family_tasks:
            pairs = _pairs(task)
            assert len(set(pairs)) == len(pairs), 'two objects answer to the same words'
            assert MIN_DISTRACTORS <= len(pairs) - 1 <= MAX_DISTRACTORS
            assert task.target_object.phrase in task.instruction
            if family == 'push':
                assert len(task.scene.zones) == 2
                assert f'{task.target_zone.colour} zone' in task.instruction
                assert task.target_object.shape != 'sphere'


def test_distractors_share_colour_or_shape_with_the_target_in_some_scenes(tasks):
    # Otherwise a policy could solve the benchmark by reading one word.
    shares_colour = shares_shape = 0
    for task in tasks['pick', 'train']:
        target = task.target_object
        others = [o for o in task.scene.objects if o.name != task.target]
        shares_colour += any(o.colour == target.colour for o in others)
        shares_shape += any(o.shape == target.shape for o in others)
    assert shares_colour >= 10 and shares_shape >= 10


def test_several_templates_per_family_are_used(tasks):
    for family in FAMILIES:
        used = {t.template_index for t in tasks[family, 'train']}
        assert len(used) >= 3


def test_same_seed_gives_the_same_task():
    assert make_task('push', 17, 'heldout') == make_task('push', 17, 'heldout')
    assert make_task('pick', 3) != make_task('pick', 4)


def test_bad_arguments_raise_task_error():
    with pytest.raises(TaskError, match='family'):
        make_task('stack', 0)
    with pytest.raises(TaskError, match='split'):
        make_task('reach', 0, 'test')
    with pytest.raises(TaskError, match='seed'):
        make_task('reach', -1)
