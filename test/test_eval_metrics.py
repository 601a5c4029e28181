"""Action-chunk errors against numbers computed by hand."""

import math

import numpy as np
import pytest

from vla_pruned_ros.eval.bag import nearest_stamps
from vla_pruned_ros.eval.metrics import action_errors, rotation_angle, rpy_to_quaternion

PREDICTED = np.array([
    [0.01, 0.00, 0.00, 0.0, 0.0, 0.1, 1.0],
    [0.02, 0.00, 0.00, 0.0, 0.0, 0.0, 0.0],
])
REFERENCE = np.array([
    [0.00, 0.00, 0.00, 0.0, 0.0, 0.0, 1.0],
    [0.02, 0.03, 0.04, 0.0, 0.0, 0.2, 1.0],
])


def test_hand_computed_errors_of_one_chunk():
    errors = action_errors([PREDICTED], [REFERENCE])
    # |dx| 0.01, 0 -> 0.005; |dy| 0, 0.03 -> 0.015; |dz| 0, 0.04 -> 0.02; |dyaw| 0.1, 0.2.
    assert errors.mae == pytest.approx([0.005, 0.015, 0.02, 0.0, 0.0, 0.15, 0.5])
    # step 0: |(0.01, 0, 0)| = 0.01; step 1: |(0, 0.03, 0.04)| = 0.05.
    assert errors.translation_error == pytest.approx(0.03)
    # yaw-only differences: the rotation angle is the yaw difference.
    assert errors.rotation_error == pytest.approx(0.15)
    # closed/closed agrees, open/closed does not.
    assert errors.gripper_agreement == pytest.approx(0.5)
    assert (errors.observations, errors.pairs) == (1, 2)
    assert errors.to_dict()['mae_by_name']['dyaw'] == pytest.approx(0.15)


def test_pairs_are_weighted_equally_over_observations_and_missing_references_skipped():
    other = PREDICTED + np.array([0.0, 0.0, 0.06, 0.0, 0.0, 0.0, 0.0])  # dz off by 0.06
    errors = action_errors([PREDICTED, other, PREDICTED], [PREDICTED, PREDICTED, None])
    assert errors.observations == 2 and errors.pairs == 4
    assert errors.mae[2] == pytest.approx(0.06 * 2 / 4)
    assert errors.translation_error == pytest.approx(0.03)
    assert errors.gripper_agreement == 1.0
    none = action_errors([PREDICTED], [None])
    assert none.mae == [None] * 7 and none.translation_error is None and none.pairs == 0


def test_twist_reference_compares_the_first_step_without_gripper():
    twist = np.array([[0.0, 0.0, 0.02, 0.0, 0.0, 0.1, np.nan]])
    errors = action_errors([PREDICTED], [twist])
    assert errors.pairs == 1
    assert errors.mae[:6] == pytest.approx([0.01, 0.0, 0.02, 0.0, 0.0, 0.0])
    assert errors.mae[6] is None and errors.gripper_agreement is None
    assert errors.translation_error == pytest.approx(math.hypot(0.01, 0.02))


def test_longer_prediction_is_cut_to_the_reference_horizon():
    longer = np.vstack([PREDICTED, np.full((3, 7), 9.0)])
    assert action_errors([longer], [REFERENCE]).mae == action_errors([PREDICTED],
                                                                      [REFERENCE]).mae


def _matrix(rpy):
    roll, pitch, yaw = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(roll), -math.sin(roll)],
                   [0, math.sin(roll), math.cos(roll)]])
    ry = np.array([[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0],
                   [-math.sin(pitch), 0, math.cos(pitch)]])
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0],
                   [0, 0, 1]])
    return rz @ ry @ rx


def test_rotation_angle_matches_rotation_matrices():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-1.0, 1.0, (2, 20, 3))
    expected = [
        math.acos(np.clip((np.trace(_matrix(x).T @ _matrix(y)) - 1) / 2, -1, 1))
        for x, y in zip(a, b)
    ]
    assert rotation_angle(a, b) == pytest.approx(expected, abs=1e-9)
    assert np.linalg.norm(rpy_to_quaternion(a), axis=-1) == pytest.approx(np.ones(20))
    # Tiny angles stay accurate (arccos of the trace would round them to 0).
    assert rotation_angle(np.zeros(3), np.array([1e-7, 0.0, 0.0])) == pytest.approx(1e-7)


def test_nearest_stamps_respects_the_tolerance():
    reference = np.array([100, 200, 300])
    index = nearest_stamps(np.array([90, 149, 151, 260, 500]), reference, tolerance_ns=45)
    assert index.tolist() == [0, -1, -1, 2, -1]
    assert nearest_stamps(np.array([150]), reference, 50).tolist() == [0]
    assert nearest_stamps(np.array([1]), np.array([], np.int64), 10).tolist() == [-1]
