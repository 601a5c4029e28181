"""DAgger recording: the shipped policy acts, the scripted expert labels every state it reaches."""

import numpy as np
import pytest

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim import cli
from vla_pruned_ros.sim.dagger import DriverError, PolicyDriver
from vla_pruned_ros.sim.env import ACTION_HIGH, ACTION_LOW, TabletopEnv
from vla_pruned_ros.sim.expert import make_expert, run_episode
from vla_pruned_ros.sim.record import RecordError, read_episode_metadata, record_episodes
from vla_pruned_ros.train.dataset import load_samples

SIZE = 96


@pytest.fixture(scope='module')
def policy():
    return Policy.from_pretrained(str(cli.DEFAULT_MODEL_DIR), device='cpu')


class _Recording:
    """The real policy, wrapped to remember the chunks it predicted and count its resets."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.config = policy.config
        self.chunks: list[np.ndarray] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1
        self.policy.reset()

    def step(self, observation):
        chunk, stats = self.policy.step(observation)
        self.chunks.append(np.asarray(chunk, np.float64))
        return chunk, stats


def test_the_policy_acts_and_the_expert_labels(policy):
    learner = _Recording(policy)
    driver = PolicyDriver(learner, execute_steps=3)
    with TabletopEnv('push', 2, 'train', image_size=(SIZE, SIZE), points_stride=2) as env:
        expert = make_expert('push')
        episode = run_episode(env, expert, driver=driver)
    assert learner.resets == 1
    executed, labels = np.array(episode.executed), np.array(episode.actions)
    # One policy step per 3 control steps, and each executes the first 3 of its chunk.
    assert driver.policy_steps == len(learner.chunks) == -(-episode.steps // 3)
    planned = np.concatenate([chunk[:3] for chunk in learner.chunks])[:episode.steps]
    np.testing.assert_allclose(executed, np.clip(planned, ACTION_LOW, ACTION_HIGH), atol=1e-6)
    # The labels are the expert's: open/closed commands exactly, and not the policy's actions.
    assert set(np.unique(labels[:, 6])) <= {0.0, 1.0}
    assert np.abs(labels - executed).max() > 1e-3
    assert len(episode.observations) == episode.steps + 1


def test_expert_share_one_lets_the_expert_drive(policy):
    learner = _Recording(policy)
    driver = PolicyDriver(learner, execute_steps=4, expert_share=1.0, seed=0)
    with TabletopEnv('reach', 1, 'train', image_size=(SIZE, SIZE), points_stride=2) as env:
        episode = run_episode(env, make_expert('reach'), driver=driver)
    assert episode.success and learner.chunks == [] and driver.policy_steps == 0
    np.testing.assert_allclose(episode.executed, episode.actions, atol=1e-9)


def test_driver_refuses_bad_settings(policy):
    with pytest.raises(DriverError, match='execute_steps'):
        PolicyDriver(policy, execute_steps=0)
    with pytest.raises(DriverError, match='expert_share'):
        PolicyDriver(policy, expert_share=1.5)
    with pytest.raises(RecordError, match='96 x 96'):
        record_episodes('/nonexistent/bag', ['reach'], 1, image_size=(64, 64),
                        driver=PolicyDriver(policy))


def test_cli_records_policy_rollouts_the_trainer_reads(tmp_path, capsys, policy, sim_cli):
    out = tmp_path / 'dagger'
    assert sim_cli(
        'record', '--out', str(out), '--families', 'reach', '--episodes', '1',
        '--seed', '5', '--image-size', str(SIZE), str(SIZE), '--points-stride', '2',
        '--policy', str(cli.DEFAULT_MODEL_DIR),
    ) == 0
    assert 'policy success' in capsys.readouterr().out
    [meta] = read_episode_metadata(out)
    assert meta['driver'] == 'policy' and meta['family'] == 'reach'
    assert meta['policy_steps'] == -(-meta['steps'] // 4)  # one chunk per 4 executed steps
    samples = load_samples([out], policy.model)
    # Every recorded state but the last carries the expert's chunk: one sample per step.
    assert len(samples) == meta['steps']
    assert sim_cli('record', '--out', str(tmp_path / 'bad'), '--policy',
                   str(tmp_path / 'none')) == 2
    assert 'error' in capsys.readouterr().err
    assert sim_cli('record', '--out', str(tmp_path / 'mixed'), '--expert-share', '0.5') == 2
    assert 'give --policy' in capsys.readouterr().err
    assert not (tmp_path / 'mixed').exists()
