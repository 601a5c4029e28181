"""Demonstration bags -> training samples through the project's conversion and sync code."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.sim.record import read_episode_metadata, record_episodes
from vla_pruned_ros.train.dataset import (
    APPROACH_DISTANCE_M,
    TOP_MARGIN_M,
    ZONE_MAX_HEIGHT_M,
    DatasetError,
    attribute_groups,
    find_bags,
    load_samples,
    named_attributes,
    named_zone,
    read_cached_samples,
    read_episodes,
    read_target_track,
    target_groups,
    target_half_height,
    target_position,
    tracked_target_groups,
    zone_groups,
)


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('demos') / 'bag'
    record_episodes(path, ['reach', 'push'], 1, image_size=(64, 64), points_stride=2)
    return path


@pytest.fixture(scope='module')
def model():
    return MultiModalVLA(preset_config('tiny'))


def test_every_action_step_becomes_one_frame_with_its_own_chunk(bag):
    metadata = read_episode_metadata(bag)
    episodes = list(read_episodes(bag))
    assert [e.family for e in episodes] == ['reach', 'push']
    for episode, meta in zip(episodes, metadata):
        assert episode.metadata['seed'] == meta['seed']
        # T steps: T observations with an action (the final outcome frame has none).
        assert len(episode.frames) == meta['steps']
        stamps = [f.observation.stamp_ns for f in episode.frames]
        assert stamps[0] == meta['start_ns'] and stamps == sorted(stamps)
        for frame in episode.frames:
            obs = frame.observation
            assert obs.instruction == meta['instruction']
            assert obs.rgb.shape == (64, 64, 3) and obs.points.shape[1] == 3
            assert obs.ee_pose is not None and obs.intrinsics is not None
            assert frame.chunk.shape == (8, 7)
        # Chunk t holds actions t..t+7, so consecutive chunks overlap by 7 actions: a frame
        # paired with a neighbour's chunk would break this.
        for before, after in zip(episode.frames, episode.frames[1:]):
            np.testing.assert_array_equal(before.chunk[1:], after.chunk[:-1])


def test_samples_hold_the_model_inputs_and_are_cached(bag, model, tmp_path):
    samples = load_samples([bag], model, cache_dir=tmp_path)
    steps = sum(m['steps'] for m in read_episode_metadata(bag))
    config = model.config
    assert len(samples) == steps
    assert samples.pixel_values.shape == (steps, 3, 64, 64)
    assert samples.neighbourhoods.shape == (steps, config.points.num_groups,
                                            config.points.group_size, 3)
    assert samples.actions.shape == (steps, config.horizon, 7)
    assert samples.families == ['reach', 'push']
    assert sorted(set(samples.family.tolist())) == [0, 1]
    assert samples.num_episodes == 2
    assert len(samples.instructions) == 2
    # The first frame's pixels are exactly what the policy's preprocessing gives.
    first = next(read_episodes(bag)).frames[0].observation
    expected = model.vision.preprocess(first.rgb)[0].numpy().astype(np.float16)
    np.testing.assert_array_equal(samples.pixel_values[0], expected)

    cached = list(tmp_path.glob('*.npz'))
    assert len(cached) == 1
    again = load_samples([bag], model, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.centres, samples.centres)
    np.testing.assert_array_equal(again.target_xy, samples.target_xy)
    assert again.instructions == samples.instructions
    # Another input configuration must not reuse those inputs.
    other = preset_config('tiny')
    other.points.num_groups = 16
    load_samples([bag], MultiModalVLA(other), cache_dir=tmp_path)
    assert len(list(tmp_path.glob('*.npz'))) == 2


def test_folders_of_bags_expand_and_episodes_are_numbered_across_bags(bag, model, tmp_path):
    assert find_bags([bag.parent]) == [bag]
    samples = load_samples([bag, bag], model)
    assert samples.num_episodes == 4
    assert len(samples.instructions) == 2


def test_paths_that_are_not_demonstration_bags_are_refused(tmp_path):
    with pytest.raises(DatasetError, match='not a rosbag2 folder'):
        find_bags([tmp_path])
    from rosbags.rosbag2 import Writer

    from vla_pruned_ros.convert import package_typestore, rosbags_types

    typestore = package_typestore()
    path = tmp_path / 'instructions_only'
    with Writer(path, version=9) as writer:
        connection = writer.add_connection('/instruction', 'std_msgs/msg/String',
                                           typestore=typestore)
        msg = rosbags_types()['std_msgs/msg/String'](data=json.dumps('reach'))
        writer.write(connection, 1, typestore.serialize_cdr(msg, 'std_msgs/msg/String'))
    with pytest.raises(DatasetError, match='lacks the demonstration topics'):
        list(read_episodes(path))


def test_target_offsets_come_from_the_episode_metadata(bag, model):
    samples = load_samples([bag], model)
    frames = [(e, f) for e in read_episodes(bag) for f in e.frames]
    for row, (episode, frame) in enumerate(frames):
        target = next(o for o in episode.metadata['objects']
                      if f"{o['colour']} {o['shape']}" == episode.metadata['target'])
        expected = np.array([target['x'], target['y']]) - frame.observation.ee_pose[:2]
        np.testing.assert_allclose(samples.target_xy[row], expected, atol=1e-5)
    # bags from elsewhere have no such metadata: the label is unknown, not zero
    assert np.isnan(target_position({})).all()
    assert np.isnan(target_position({'target': 'red cube', 'objects': [
        {'colour': 'blue', 'shape': 'cube', 'x': 0.1, 'y': 0.2}]})).all()


def test_grounding_probe_trains_on_a_runs_cache(bag, tmp_path):
    """tools/grounding_probe.py reads a training cache and reports baselines and a curve."""
    colour = preset_config('tiny')
    colour.points.colour = True
    load_samples([bag], MultiModalVLA(colour), cache_dir=tmp_path / 'cache')
    script = Path(__file__).resolve().parents[1] / 'tools' / 'grounding_probe.py'
    command = [sys.executable, str(script), str(tmp_path / 'cache'), '--steps', '3',
               '--eval-every', '2', '--val-every', '2', '--variant', 'pointer',
               '--group-weight', '1', '--approach-only', '--out', str(tmp_path / 'probe.json')]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / 'probe.json').read_text())
    assert report['variant'] == 'pointer' and report['approach_only']
    assert report['group_weight'] == 1
    assert set(report['curve'][-1]['val_l1_by_family']) <= {'reach', 'push'}
    assert [point['step'] for point in report['curve']] == [2, 3]
    assert all(np.isfinite(point['val_l1']) for point in report['curve'])
    assert report['baselines']['median'] > 0
    (tmp_path / 'empty').mkdir()
    empty = subprocess.run(command[:2] + [str(tmp_path / 'empty')], capture_output=True,
                           text=True, timeout=300)
    assert empty.returncode == 2 and 'no cached samples' in empty.stderr


def test_pointer_probe_trains_a_presets_pointers_on_a_runs_cache(bag, tmp_path):
    """tools/pointer_probe.py reports the mass each pointer puts on what it names."""
    model = MultiModalVLA(preset_config('tiny'))
    load_samples([bag], model, cache_dir=tmp_path / 'cache')
    script = Path(__file__).resolve().parents[1] / 'tools' / 'pointer_probe.py'
    command = [sys.executable, str(script), str(tmp_path / 'cache'), '--preset', 'tiny',
               '--steps', '3', '--eval-every', '2', '--val-every', '2',
               '--out', str(tmp_path / 'pointer.json')]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    curve = json.loads((tmp_path / 'pointer.json').read_text())['curve']
    assert [point['step'] for point in curve] == [0, 2, 3]
    # the bag holds a reach and a push: an object in both, a zone only in the push
    assert set(curve[-1]) - {'step', 'elapsed_s'} <= {'object/reach', 'object/push', 'zone/push'}
    for point in curve:
        for key, value in point.items():
            if '/' in key:
                assert 0 <= value['uninformed'] < 1 and 0 <= value['mass'] <= 1
    (tmp_path / 'empty').mkdir()
    empty = subprocess.run(command[:2] + [str(tmp_path / 'empty')], capture_output=True,
                           text=True, timeout=300)
    assert empty.returncode == 1 and 'no cached bags' in empty.stderr


def test_group_labels_mark_the_point_groups_on_the_named_object():
    camera_to_world = np.eye(4)
    camera_to_world[:3, 3] = (1.0, 2.0, 0.0)  # camera frame = world shifted by (1, 2, 0)
    centres = np.array([[0.1, 0.2, 0.5], [0.12, 0.2, 0.3], [0.3, 0.2, 0.5]])
    target = np.array([1.1, 2.2])
    labels = target_groups(centres, camera_to_world, target, ee_xy=np.array([1.5, 2.5]))
    np.testing.assert_array_equal(labels, [1.0, 1.0, 0.0])  # height does not matter
    # unknown: no transform, no target, or the gripper close enough to have moved the object
    assert np.isnan(target_groups(centres, None, target, np.array([1.5, 2.5]))).all()
    assert np.isnan(target_groups(centres, camera_to_world, np.full(2, np.nan),
                                  np.array([1.5, 2.5]))).all()
    near = target + (APPROACH_DISTANCE_M / 2, 0.0)
    assert np.isnan(target_groups(centres, camera_to_world, target, near)).all()


def test_zone_labels_mark_the_flat_groups_inside_the_named_zone():
    metadata = {'zone': 'blue', 'zones': [
        {'colour': 'green', 'x': 0.0, 'y': 0.0, 'radius': 0.06},
        {'colour': 'blue', 'x': 0.2, 'y': 0.1, 'radius': 0.05}]}
    zone = named_zone(metadata)
    np.testing.assert_allclose(zone, [0.2, 0.1, 0.05])
    camera_to_world = np.eye(4)
    centres = np.array([[0.21, 0.11, 0.001],  # on the blue disc
                        [0.21, 0.11, ZONE_MAX_HEIGHT_M + 0.02],  # an object above it
                        [0.27, 0.10, 0.001],  # beside it
                        [0.0, 0.0, 0.001]])  # on the other zone
    np.testing.assert_array_equal(zone_groups(centres, camera_to_world, zone), [1, 0, 0, 0])
    assert np.isnan(zone_groups(centres, None, zone)).all()
    for no_zone in ({'zone': None, 'zones': metadata['zones']}, {}):
        assert np.isnan(named_zone(no_zone)).all()
        assert np.isnan(zone_groups(centres, camera_to_world, named_zone(no_zone))).all()


def _named_colour(samples, row: int, marked: np.ndarray, colours: dict) -> tuple[str, str]:
    """The colour nearest to the mean colour of the marked groups of ``row``."""
    seen = samples.neighbourhoods[row, marked, :, 3:6].reshape(-1, 3).mean(axis=0)
    return min(colours, key=lambda name: np.linalg.norm(
        seen / seen.sum() - np.array(colours[name]) / sum(colours[name])))


def test_group_labels_of_recorded_frames_lie_on_the_target(bag):
    """With the sim preset's tokens the marked groups carry the named colours."""
    from vla_pruned_ros.sim.scene import COLOURS

    samples = load_samples([bag], MultiModalVLA(preset_config('sim')), object_labels='tracked')
    push = samples.family == samples.families.index('push')
    assert samples.group_labels('zone') is samples.zone_groups
    assert samples.group_labels('object') is samples.target_groups
    with pytest.raises(DatasetError, match='gripper'):
        samples.group_labels('gripper')
    # the zone labels: every push frame, and the painted disc is among the 3D tokens
    zone_labelled = np.isfinite(samples.zone_groups).all(axis=1)
    np.testing.assert_array_equal(zone_labelled, push)
    on_zone = samples.zone_groups == 1
    assert on_zone[push].any(axis=1).all()
    zone_colour = next(e.metadata['zone'] for e in read_episodes(bag) if e.family == 'push')
    for row in np.flatnonzero(push)[::3]:
        assert _named_colour(samples, row, on_zone[row], COLOURS) == zone_colour
    # the bag tracks the named object (/sim/target_position): every frame is labelled, also
    # the ones with the gripper at the object, where a pushed object has left its start
    assert np.isfinite(samples.target_groups).all()
    near = np.linalg.norm(samples.target_xy, axis=1) < APPROACH_DISTANCE_M
    assert near.any() and (~near).any()
    marked = samples.target_groups == 1
    # in view while approached (at the object the gripper may hide it: then no group is marked)
    assert marked[~near].any(axis=1).mean() > 0.8
    # near the gripper a marked group may hold finger points too: its mean colour is mixed
    for rows, share in ((near, 0.7), (~near, 0.8)):
        matches = []
        for row in np.flatnonzero(marked.any(axis=1) & rows):
            text = samples.instructions[samples.instruction[row]]
            colour = next(word for word in text.split() if word in COLOURS)
            matches.append(_named_colour(samples, row, marked[row], COLOURS) == colour)
        assert len(matches) > 1 and np.mean(matches) >= share, matches
    # by default (every shipped model) from the start position, while the gripper is far
    start = load_samples([bag], MultiModalVLA(preset_config('sim')))
    np.testing.assert_array_equal(np.isfinite(start.target_groups).all(axis=1), ~near)
    np.testing.assert_array_equal(start.zone_groups, samples.zone_groups)
    with pytest.raises(DatasetError, match='object_labels'):
        load_samples([bag], MultiModalVLA(preset_config('sim')), object_labels='current')


def test_bags_without_a_tracked_target_are_labelled_from_its_start_position():
    """data/sample predates /sim/target_position: labels only while nothing can have moved."""
    sample = Path(__file__).resolve().parents[1] / 'data' / 'sample'
    assert read_target_track(sample) == {}
    samples = load_samples([sample], MultiModalVLA(preset_config('sim')),
                           object_labels='tracked')
    labelled = np.isfinite(samples.target_groups).all(axis=1)
    near = np.linalg.norm(samples.target_xy, axis=1) < APPROACH_DISTANCE_M
    np.testing.assert_array_equal(labelled, ~near)
    assert labelled.any() and (samples.target_groups[labelled] == 1).any(axis=1).mean() > 0.8


def test_tracked_labels_follow_the_object_and_leave_out_what_is_above_it():
    camera_to_world = np.eye(4)
    camera_to_world[:3, 3] = (1.0, 2.0, 0.0)
    position = np.array([1.1, 2.2, 0.02])  # the centre, 2 cm above the table
    centres = np.array([[0.1, 0.2, 0.02],  # on it
                        [0.12, 0.19, 0.045],  # its top (+ 0.5 cm)
                        [0.1, 0.2, 0.02 + 0.02 + TOP_MARGIN_M + 0.01],  # a finger above it
                        [0.15, 0.2, 0.02]])  # 5 cm beside it
    labels = tracked_target_groups(centres, camera_to_world, position, half_height=0.02)
    np.testing.assert_array_equal(labels, [1, 1, 0, 0])
    assert np.isnan(tracked_target_groups(centres, None, position, 0.02)).all()
    assert np.isnan(tracked_target_groups(centres, camera_to_world, np.full(3, np.nan),
                                          0.02)).all()
    metadata = {'target': 'red sphere', 'objects': [
        {'colour': 'red', 'shape': 'cube', 'size': [0.02] * 3},
        {'colour': 'red', 'shape': 'sphere', 'size': [0.025]}]}
    assert target_half_height(metadata) == 0.025
    assert np.isnan(target_half_height({'target': 'red cube', 'objects': []}))


COLOURS = ('red', 'green', 'blue')
KINDS = ('cube', 'block', 'sphere', 'zone')


def test_attribute_labels_name_what_each_group_lies_on():
    camera_to_world = np.eye(4)
    camera_to_world[:3, 3] = (1.0, 2.0, 0.0)  # camera frame = world shifted by (1, 2, 0)
    metadata = {'target': 'green sphere', 'zone': 'blue', 'objects': [
        # a block 10 cm long along its yaw (45 degrees), 2 cm wide and high
        {'colour': 'red', 'shape': 'block', 'size': [0.05, 0.01, 0.01], 'x': 1.2, 'y': 2.2,
         'yaw': np.pi / 4},
        {'colour': 'green', 'shape': 'sphere', 'size': [0.02], 'x': 0.9, 'y': 2.0},
        {'colour': 'pink', 'shape': 'cube', 'size': [0.02] * 3, 'x': 1.0, 'y': 1.8}],
        'zones': [{'colour': 'blue', 'x': 1.3, 'y': 1.9, 'radius': 0.04}]}
    world = np.array([
        [1.23, 2.23, 0.015],  # along the block's diagonal, 4 cm from its centre
        [1.23, 2.17, 0.015],  # 4 cm across it: beside the block
        [0.9, 2.0, 0.035],  # the sphere's top
        [0.9, 2.0, 0.035 + TOP_MARGIN_M + 0.02],  # above the sphere: a finger
        [1.0, 1.8, 0.02],  # the pink cube: a colour outside the classes
        [1.31, 1.91, 0.001],  # on the zone
        [1.5, 1.5, 0.0],  # bare table
    ])
    colour, kind = attribute_groups(world - (1.0, 2.0, 0.0), camera_to_world, metadata,
                                    COLOURS, KINDS)
    none_colour, none_kind = len(COLOURS), len(KINDS)
    np.testing.assert_array_equal(colour, [0, none_colour, 1, none_colour, -1, 2,
                                           none_colour])
    np.testing.assert_array_equal(kind, [1, none_kind, 2, none_kind, 0, 3, none_kind])
    assert colour.dtype == kind.dtype == np.int8
    # the named object where the recorded track puts it, the others where they started
    moved = np.array([1.4, 2.4, 0.02])
    colour, kind = attribute_groups((moved - (1.0, 2.0, 0.0))[None], camera_to_world,
                                    metadata, COLOURS, KINDS, target_now=moved)
    assert (colour[0], kind[0]) == (1, 2)
    # two things claiming a group: unknown, not either of them
    crowded = dict(metadata, objects=metadata['objects'] + [
        {'colour': 'red', 'shape': 'cube', 'size': [0.02] * 3, 'x': 0.91, 'y': 2.0}])
    colour, kind = attribute_groups(world[2:3] - (1.0, 2.0, 0.0), camera_to_world, crowded,
                                    COLOURS, KINDS)
    assert (colour[0], kind[0]) == (-1, -1)
    # no transform or no objects: unknown throughout
    for args in ((None, metadata), (camera_to_world, {'objects': []})):
        colour, kind = attribute_groups(world, *args, COLOURS, KINDS)
        assert (colour == -1).all() and (kind == -1).all()
    # what the instruction names, per pointer target (object, zone)
    np.testing.assert_array_equal(named_attributes(metadata, COLOURS, KINDS), [[1, 2], [2, 3]])
    reach = dict(metadata, target='pink cube', zone=None)
    np.testing.assert_array_equal(named_attributes(reach, COLOURS, KINDS), [[-1, 0], [-1, -1]])


def test_attribute_labels_of_recorded_frames_carry_the_colours_seen(bag, tmp_path):
    """The sim-attribute preset's samples: labelled groups show the colour of their class."""
    from vla_pruned_ros.sim.scene import COLOURS as RGB

    model = MultiModalVLA(preset_config('sim-attribute'))
    colours, kinds = model.config.pointer_colours, model.config.pointer_kinds
    samples = load_samples([bag], model, cache_dir=tmp_path)
    for row, instruction in enumerate(samples.instruction):
        text = samples.instructions[instruction].split()
        colour, kind = samples.named_attributes[row, 0]
        assert colours[colour] in text and kinds[kind] in text
    push = samples.family == samples.families.index('push')
    assert (samples.named_attributes[push, 1, 1] == kinds.index('zone')).all()
    assert (samples.named_attributes[~push, 1] == -1).all()
    # most groups are known, and the ones on a thing look like its colour class
    assert (samples.group_colour >= 0).mean() > 0.9
    matches = []
    for row in range(0, len(samples), 3):
        for index in range(len(colours)):
            on = samples.group_colour[row] == index
            if on.sum() >= 2:
                matches.append(_named_colour(samples, row, on, RGB) == colours[index])
    assert len(matches) > 10 and np.mean(matches) > 0.8, matches
    # a zone's groups are flat marks, an object's are not
    kind = samples.group_kind
    assert (kind == kinds.index('zone'))[push].any(axis=1).all()
    # the cache keeps the labels; a model without the attribute score has none (-1)
    cached = read_cached_samples(next(tmp_path.glob('*.npz')))
    np.testing.assert_array_equal(cached.group_kind, samples.group_kind)
    plain = load_samples([bag], MultiModalVLA(preset_config('sim')))
    assert (plain.group_colour == -1).all() and (plain.named_attributes == -1).all()
