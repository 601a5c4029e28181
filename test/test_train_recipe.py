"""The from-scratch recipe (tools/train_reference.sh, `make train`), shrunk to a smoke run."""

import json
import os
from pathlib import Path
import subprocess
import sys

import torch

from vla_pruned_ros.model.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tools' / 'train_reference.sh'
# Two episodes a family a bag: 36 episodes, so one (every 20th) is held out for validation.
SMOKE = {'EPISODES': '2', 'STEP_DIVISOR': '100', 'THREADS': '1', 'DEVICE': 'cpu'}
BAGS = {'demos': (0, 1, 2), 'demos_exc': (6, 7, 8)}
LAST_STEPS = {'all': 15, 'pointer': 30, 'all2': 15, 'all3': 15, 'head': 200}


def _run_recipe(work: Path, **settings: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **SMOKE, **settings)
    # The recipe calls the `vla-pruned-ros` of this interpreter's environment.
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env["PATH"]}'
    return subprocess.run(['bash', str(SCRIPT), str(work)], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900)


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_recipe_records_trains_five_stages_in_a_chain_and_skips_what_is_done(tmp_path):
    work = tmp_path / 'reference'
    first = _run_recipe(work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for directory, shards in BAGS.items():
        for shard in shards:
            assert (work / directory / f'train_{shard}' / 'metadata.yaml').is_file()
    sources = {'all': None, 'pointer': 'all', 'all2': 'pointer', 'all3': 'all2',
               'head': 'all3'}
    for stage, last_step in LAST_STEPS.items():
        records = _records(work / stage / 'log.jsonl')
        assert records[-1]['step'] == last_step and 'val_loss' in records[-1]
        source = sources[stage]
        if source is None:
            assert 'init_from' not in records[0]
        else:
            assert records[0]['init_from'] == str(work / source / 'model')
    times = (work / 'recipe_times.txt').read_text()
    for name in ('record', *LAST_STEPS, 'recipe:'):
        assert f'{name} ' in times

    # The head stage trained the head alone: the trunk it read is the all3 stage's.
    trunk_model, _ = load_model(str(work / 'all3' / 'model'))
    head_model, _ = load_model(str(work / 'head' / 'model'))
    assert head_model.config.preset == 'sim-branch-narrow'  # the recipe's default
    head_names = {id(p) for p in head_model.head_parameters()}
    trunk_weights = dict(trunk_model.named_parameters())
    moved = {name for name, weight in head_model.named_parameters()
             if not torch.equal(weight, trunk_weights[name])}
    assert moved
    assert moved <= {name for name, weight in head_model.named_parameters()
                     if id(weight) in head_names}

    # Run again: nothing is recorded or trained twice.
    logs = {stage: (work / stage / 'log.jsonl').read_text() for stage in LAST_STEPS}
    bags = sorted(work.glob('demos*/train_*/*.mcap'))
    written = [bag.stat().st_mtime_ns for bag in bags]
    again = _run_recipe(work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count('done already') == len(LAST_STEPS)
    assert [bag.stat().st_mtime_ns for bag in bags] == written
    assert {stage: (work / stage / 'log.jsonl').read_text() for stage in LAST_STEPS} == logs

    # Another preset on the same directory: its stages are not done, and not resumed either.
    lite = _run_recipe(work, PRESET='sim-branch-lite')
    assert lite.returncode != 0
    assert 'is not a sim-branch-lite model' in lite.stderr
    # A head of another length is not extended (or shortened) into this one either.
    longer = _run_recipe(work, HEAD_STEPS='40000')
    assert longer.returncode != 0
    assert f'{work / "head"} was trained for 200 steps, not 400' in longer.stderr
    assert {stage: (work / stage / 'log.jsonl').read_text() for stage in LAST_STEPS} == logs
    for bad, message in (
        ({'HEAD_STEPS': '2e4'}, 'HEAD_STEPS must be a positive whole number'),
        ({'PRESET': 'sim-branch-tiny'}, "PRESET: unknown preset 'sim-branch-tiny'"),
    ):
        refused = _run_recipe(tmp_path / 'refused', **bad)
        assert refused.returncode != 0 and message in refused.stderr
        assert not (tmp_path / 'refused' / 'demos').exists()

    # A head run by hand from inside the work directory names its source without the path:
    # still the recipe's.
    head_log = work / 'head' / 'log.jsonl'
    lines = head_log.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), 'init_from': 'all3/model'})
    head_log.write_text('\n'.join(lines) + '\n')
    by_hand = _run_recipe(work)
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    assert by_hand.stdout.count('done already') == len(LAST_STEPS)

    # A head of the older recipe (it started from all2) stops the recipe, untouched.
    lines[0] = json.dumps({**json.loads(lines[0]), 'init_from': str(work / 'all2' / 'model')})
    head_log.write_text('\n'.join(lines) + '\n')
    older_head = head_log.read_text()
    state = (work / 'head' / 'training_state.pt').stat().st_mtime_ns
    older = _run_recipe(work)
    assert older.returncode != 0
    assert f'{work / "head"} did not start from all3' in older.stderr
    assert older.stdout.count('done already') == len(LAST_STEPS) - 1
    assert head_log.read_text() == older_head
    assert (work / 'head' / 'training_state.pt').stat().st_mtime_ns == state
