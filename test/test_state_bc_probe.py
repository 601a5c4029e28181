"""tools/state_bc_probe.py: the probe's points and features, and a tiny end-to-end run."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from state_bc_probe import PointSource, error_summary, state_features
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.evaluate import POINTS_STRIDE

MODEL = str(Path(__file__).resolve().parents[1] / 'models' / 'default')


@pytest.fixture(scope='module')
def shipped() -> Policy:
    return Policy.from_pretrained(MODEL, device='cpu', pruner='dense')


def _push_env(policy: Policy) -> TabletopEnv:
    size = policy.config.vision.image_size
    return TabletopEnv('push', 3, 'heldout', image_size=(size, size),
                       points_stride=POINTS_STRIDE)


def test_oracle_points_lie_on_the_named_object_and_zone(shipped):
    source = PointSource('oracle', shipped)
    with _push_env(shipped) as env:
        observation = env.reset()
        points = source.centres(env, observation)
        truth = PointSource('truth').centres(env, observation)
        zone = env.task.target_zone
    # The mean of the object's groups is near its centre; the zone's lies inside its disc.
    assert np.linalg.norm(points['object'][:2] - truth['object'][:2]) < 0.03
    assert np.linalg.norm(points['zone'][:2] - truth['zone'][:2]) < zone.radius
    assert source.errors == {'object': [], 'zone': []}  # only 'model' compares with the oracle


def test_model_points_are_compared_with_the_oracle(shipped):
    source = PointSource('model', shipped)
    with _push_env(shipped) as env:
        observation = env.reset()
        points = source.centres(env, observation)
        later = source.centres(env, observation)
        source.reset()
        again = source.centres(env, observation)
    np.testing.assert_allclose(points['object'], again['object'])  # a function of the step
    np.testing.assert_allclose(points['object'], later['object'])
    assert len(source.errors['object']) == 3 and len(source.errors['zone']) == 3
    assert [first for _, first in source.errors['object']] == [True, False, True]
    assert all(0.0 <= gap < 1.0 for gap, _ in source.errors['object'])


def test_error_summary_tells_first_steps_from_later_ones():
    summary = error_summary([(0.30, True), (0.01, True), (0.03, False), (0.01, False)])
    assert summary['steps'] == 4 and summary['over_2cm'] == 0.5
    assert summary['elsewhere_first_step'] == 0.5 and summary['elsewhere_later'] == 0.0
    assert summary['median'] == pytest.approx(0.02)


def test_features_carry_no_phase_and_full_adds_the_object_shape():
    with TabletopEnv('push', 0, 'train', image_size=(32, 32), points_stride=8) as env:
        observation = env.reset()
        points = PointSource('truth').centres(env, observation)
        pointer = state_features(env, 'pointer', points)
        full = state_features(env, 'full', points)
        tcp = env.scene.tcp_position()
    assert pointer.shape == (14,) and full.shape == (19,)
    np.testing.assert_allclose(full[:14], pointer)
    # object - tcp is what the pointer features say about the object.
    np.testing.assert_allclose(pointer[7:10], points['object'] - tcp)


def test_an_oracle_less_point_source_needs_a_model():
    with pytest.raises(ValueError, match='needs a model'):
        PointSource('model')


def test_a_tiny_probe_run_writes_its_report(tmp_path):
    script = Path(__file__).resolve().parents[1] / 'tools' / 'state_bc_probe.py'
    out = tmp_path / 'probe.json'
    result = subprocess.run(
        [sys.executable, str(script), '--families', 'push', '--episodes', '2',
         '--eval-episodes', '1', '--steps', '20', '--points', 'model', '--model', MODEL,
         '--threads', '1', '--out', str(out)],
        check=True, capture_output=True, text=True, timeout=600)
    assert 'heldout scenes with the state MLP (pointer features, model points)' in result.stdout
    report = json.loads(out.read_text())
    family = report['families']['push']
    assert report['points'] == 'model' and family['episodes'] == 1
    assert family['successes'] + len(family['failed_seeds']) == 1
    assert family['pointer_error_m']['object']['steps'] > 0
