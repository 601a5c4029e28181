"""Behaviour cloning: the training forward pass, checkpoints, resume and the train command."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file
import torch

from model_fixtures import make_observation
from vla_pruned_ros.cli import main
from vla_pruned_ros.model.checkpoint import load_model
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.presets import PRESETS, preset_config
from vla_pruned_ros.model.runner import LayerRunner
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning.budget import Budget
from vla_pruned_ros.sim.record import read_episode_metadata, record_episodes
from vla_pruned_ros.tokens.layout import TokenLayout
from vla_pruned_ros.train.dataset import read_episodes
from vla_pruned_ros.train.trainer import (
    DecoderCut,
    GroundingProbe,
    TrainConfig,
    TrainError,
    action_statistics,
    draw_cut,
    drop_proprio,
    forward,
    grounding_loss,
    train,
    warm_start,
)


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('demos') / 'bag'
    record_episodes(path, ['reach', 'pick'], 1, image_size=(64, 64), points_stride=2)
    return path


def _config(bag, out, **overrides) -> TrainConfig:
    settings = {'data': [str(bag)], 'out': str(out), 'preset': 'tiny', 'steps': 4,
                'batch_size': 4, 'checkpoint_every': 2, 'log_every': 1, 'progress': False,
                'threads': 1, 'warmup': 2}
    settings.update(overrides)
    return TrainConfig(**settings)


def test_sim_preset_leaves_room_for_pruning():
    config = preset_config('sim')
    grid = config.vision.image_size // config.vision.patch_size
    assert grid * grid >= 64 and config.points.num_groups >= 64
    assert config.horizon == 8 and config.proprio_dim == 7


def _tiny_model_and_inputs(seed: int, batch: int = 2):
    """A random tiny model and ``batch`` random frames of its inputs (64 patches, 32 groups)."""
    torch.manual_seed(seed)
    model = MultiModalVLA(preset_config('tiny')).eval()
    pixels = torch.randn(batch, 3, 64, 64)
    neighbourhoods = torch.randn(batch, 32, 16, 3) * 0.01
    centres = torch.randn(batch, 32, 3)
    ids = torch.randint(2, 100, (batch, 12))
    proprio = torch.randn(batch, 7)
    return model, pixels, neighbourhoods, centres, ids, proprio


def test_training_forward_with_dropped_tokens_matches_the_policy_runner():
    model, pixels, neighbourhoods, centres, ids, proprio = _tiny_model_and_inputs(0)
    with torch.no_grad():
        dense = model.forward_dense(pixels, neighbourhoods, centres, ids, proprio)
        np.testing.assert_allclose(forward(model, pixels, neighbourhoods, centres, ids, proprio),
                                   dense, atol=1e-5)
        keep_2d = torch.tensor([[0, 5, 9, 63], [1, 2, 3, 4]])
        keep_3d = torch.tensor([[3, 7, 31], [0, 10, 20]])
        pruned = forward(model, pixels, neighbourhoods, centres, ids, proprio, keep_2d, keep_3d)
        assert not torch.allclose(pruned, dense, atol=1e-3)
        # Sample 0 through the inference path: the same tokens at their original positions.
        layout = TokenLayout(n_2d=64, n_3d=32, n_text=12, n_proprio=1, n_action=8,
                             grid_shape=(8, 8), centres_3d=centres[0].numpy(),
                             patch_of_3d=np.full(32, -1, np.int64))
        tokens_2d = model.project_2d_tokens(model.encode_2d(pixels[:1])[:, keep_2d[0]])
        tokens_3d = model.encode_3d(neighbourhoods[:1, keep_3d[0]], centres[:1, keep_3d[0]])
        # the pointer reads the same kept 3D tokens as the decoder
        pointer = model.point(ids[:1], centres[:1, keep_3d[0]],
                              neighbourhoods[:1, keep_3d[0]])
        embeds = model.assemble(tokens_2d, tokens_3d, ids[:1], proprio[:1], pointer)
        positions = torch.cat([keep_2d[0], keep_3d[0] + 64, torch.arange(96, layout.length)])
        run = LayerRunner(model.decoder).run(embeds, layout, positions=positions)
        np.testing.assert_allclose(model.head(run.normed[:, -8:], pointer, proprio[:1])[0],
                                   pruned[0], atol=1e-5)


def test_a_cut_inside_the_decoder_matches_the_runner_pruning_at_that_layer():
    model, pixels, neighbourhoods, centres, ids, proprio = _tiny_model_and_inputs(1)
    # before the decoder 10 of 64 patches and 6 of 32 groups, then 3 + 2 of those at layer 1
    keep_2d = torch.stack([torch.arange(0, 60, 6), torch.arange(1, 61, 6)])
    keep_3d = torch.tensor([[0, 4, 9, 15, 22, 31], [1, 2, 3, 4, 5, 6]])
    cut = DecoderCut(1, torch.tensor([[0, 4, 9], [2, 3, 8]]), torch.tensor([[1, 5], [0, 2]]))
    with torch.no_grad():
        uncut = forward(model, pixels, neighbourhoods, centres, ids, proprio, keep_2d, keep_3d)
        result = forward(model, pixels, neighbourhoods, centres, ids, proprio, keep_2d, keep_3d,
                         return_states=True, cut=cut)
        assert not torch.allclose(result.prediction, uncut, atol=1e-3)
        # states of the 5 visual tokens left, then text, pose and action queries
        assert result.states.shape[1] == 5 + 12 + 1 + 8
        layout = TokenLayout(n_2d=64, n_3d=32, n_text=12, n_proprio=1, n_action=8,
                             grid_shape=(8, 8), centres_3d=centres[1].numpy(),
                             patch_of_3d=np.full(32, -1, np.int64))
        tokens_2d = model.project_2d_tokens(model.encode_2d(pixels[1:])[:, keep_2d[1]])
        tokens_3d = model.encode_3d(neighbourhoods[1:, keep_3d[1]], centres[1:, keep_3d[1]])
        pointer = model.point(ids[1:], centres[1:, keep_3d[1]], neighbourhoods[1:, keep_3d[1]])
        embeds = model.assemble(tokens_2d, tokens_3d, ids[1:], proprio[1:], pointer)
        positions = torch.cat([keep_2d[1], keep_3d[1] + 64, torch.arange(96, layout.length)])
        kept = torch.cat([keep_2d[1][cut.keep_2d[1]], keep_3d[1][cut.keep_3d[1]] + 64])
        run = LayerRunner(model.decoder).run(embeds, layout, positions=positions,
                                             prune_layers=[1], on_prune=lambda state: kept)
        assert run.tokens_per_layer[0] == 16 + 21
        assert set(run.tokens_per_layer[1:]) == {5 + 21}
        np.testing.assert_allclose(model.head(run.normed[:, -8:], pointer, proprio[1:])[0],
                                   result.prediction[1], atol=1e-5)
        np.testing.assert_allclose(run.normed[0], result.states[1], atol=1e-5)
        with pytest.raises(ValueError, match='before layer'):
            forward(model, pixels, neighbourhoods, centres, ids, proprio,
                    cut=DecoderCut(0, cut.keep_2d, cut.keep_3d))


def test_random_cuts_fall_between_the_first_and_the_last_layer():
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    layers = set()
    for _ in range(60):
        cut = draw_cut(3, 64, 32, 4, 0.25, lambda low, high: int(rng.integers(low, high)),
                       generator)
        layers.add(cut.layer)
        assert 16 <= cut.keep_2d.shape[1] <= 64 and 8 <= cut.keep_3d.shape[1] <= 32
        assert (cut.keep_2d.diff(dim=1) > 0).all() and (cut.keep_3d.diff(dim=1) > 0).all()
    assert layers == {1, 2, 3}
    with pytest.raises(TrainError, match='two decoder layers'):
        draw_cut(3, 64, 32, 1, 0.25, lambda low, high: low, generator)


def test_every_weight_trains_on_cuts_inside_the_decoder(bag, tmp_path):
    settings = {'steps': 3, 'checkpoint_every': 3, 'token_drop_prob': 1.0, 'ground_weight': 1.0}
    weights = {}
    for share in (0.0, 1.0):
        result = train(_config(bag, tmp_path / f'cut{share}', cut_share=share, **settings))
        log = [json.loads(line)
               for line in (tmp_path / f'cut{share}' / 'log.jsonl').read_text().splitlines()]
        assert all(np.isfinite(record['ground_loss']) for record in log if 'ground_loss' in record)
        weights[share] = load_model(str(result.model_dir))[0].state_dict()
    # the same batches, other states: the decoder learns from the cut ones
    name = 'decoder.layers.1.self_attn.q_proj.weight'
    assert not torch.equal(weights[0.0][name], weights[1.0][name])
    with pytest.raises(TrainError, match='cut_share'):
        train(_config(bag, tmp_path / 'bad', cut_share=1.5))


def test_action_statistics_keep_constant_dimensions_unscaled():
    actions = np.zeros((10, 8, 7), np.float32)
    actions[..., 0] = np.arange(10)[:, None]
    mean, std = action_statistics(actions)
    assert mean[0] == pytest.approx(4.5) and std[0] == pytest.approx(np.arange(10).std())
    assert std[3] == 1.0 and mean[3] == 0.0


def test_training_fits_the_demonstrations_and_writes_a_usable_model(bag, tmp_path):
    result = train(_config(bag, tmp_path / 'run', steps=40, batch_size=8, checkpoint_every=40,
                           lr=2e-3, token_drop_prob=0.0, warmup=5))
    log = [json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert log[-1]['step'] == 40 == result.step
    assert np.mean([r['train_loss'] for r in log[-5:]]) < 0.8 * np.mean(
        [r['train_loss'] for r in log[:5]])

    policy = Policy.from_pretrained(str(result.model_dir), device='cpu')
    frames = [f for e in read_episodes(bag) for f in e.frames]
    chunks = np.stack([f.chunk for f in frames])
    np.testing.assert_allclose(policy.model.action_mean.numpy(), chunks.reshape(-1, 7).mean(0),
                               atol=1e-5)
    # The tokenizer learnt the training instructions: each is a handful of pieces, not bytes.
    for meta in read_episode_metadata(bag):
        ids = policy.tokenizer(meta['instruction'], add_special_tokens=False)['input_ids']
        assert len(ids) <= len(meta['instruction'].split()) + 1
    actions, stats = policy.step(frames[0].observation)
    assert actions.shape == (8, 7) and np.isfinite(actions).all()
    assert stats.tokens_2d_in == 64 and stats.tokens_3d_in == 32


def test_resume_continues_exactly_where_the_run_stopped(bag, tmp_path):
    straight = train(_config(bag, tmp_path / 'straight', steps=4))
    train(_config(bag, tmp_path / 'resumed', steps=2))
    with pytest.raises(TrainError, match='already holds a training run'):
        train(_config(bag, tmp_path / 'resumed', steps=4))
    resumed = train(_config(bag, tmp_path / 'resumed', steps=4, resume=True))
    assert resumed.step == 4
    a = load_file(straight.model_dir / 'model.safetensors')
    b = load_file(resumed.model_dir / 'model.safetensors')
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    with pytest.raises(TrainError, match='nothing to resume'):
        train(_config(bag, tmp_path / 'fresh', resume=True))


def test_train_command(bag, tmp_path, capsys):
    out = tmp_path / 'cli'
    code = main(['train', '--data', str(bag), '--preset', 'tiny', '--out', str(out),
                 '--steps', '2', '--batch-size', '2', '--threads', '1', '--no-progress'])
    assert code == 0
    assert 'at step 2' in capsys.readouterr().out
    assert (out / 'model' / 'config.json').is_file() and (out / 'training_state.pt').is_file()
    assert main(['train', '--data', str(tmp_path / 'missing'), '--out', str(tmp_path / 'x'),
                 '--no-progress']) == 2
    assert 'not a rosbag2 folder' in capsys.readouterr().err
    # A device that does not exist here is refused before anything is read or written.
    missing = 'gpu' if torch.cuda.is_available() else 'cuda'
    assert main(['train', '--data', str(bag), '--out', str(tmp_path / 'y'), '--device', missing,
                 '--no-progress']) == 2
    assert 'device' in capsys.readouterr().err and not (tmp_path / 'y').exists()


def test_warm_start_widens_the_point_encoder_for_colour_without_changing_its_output():
    torch.manual_seed(0)
    source = MultiModalVLA(preset_config('tiny')).eval()
    config = preset_config('tiny')
    config.points.colour = True
    model = MultiModalVLA(config).eval()
    report = warm_start(model, source)
    # the point encoder and the pointer's group scorer both read colour now
    assert report['widened'] == ['point_encoder.point_mlp.0.weight', 'pointer.key.0.weight']
    assert not report['skipped']
    geometry = torch.randn(1, 32, 16, 3) * 0.01
    colours = torch.rand(1, 32, 16, 3)
    centres = torch.randn(1, 32, 3)
    with torch.no_grad():
        before = source.encode_3d(geometry, centres)
        after = model.encode_3d(torch.cat([geometry, colours], dim=-1), centres)
    torch.testing.assert_close(after, before)


def test_init_from_starts_a_new_run_from_a_model(bag, tmp_path):
    first = train(_config(bag, tmp_path / 'first', steps=2))
    second = train(_config(bag, tmp_path / 'second', steps=2, init_from=str(first.model_dir)))
    record = json.loads((tmp_path / 'second' / 'log.jsonl').read_text().splitlines()[0])
    assert record['init_from'] == str(first.model_dir)
    assert record['copied'] > 0 and record['widened'] == [] and record['skipped'] == []
    source = Policy.from_pretrained(str(first.model_dir), device='cpu')
    started = Policy.from_pretrained(str(second.model_dir), device='cpu')
    assert source.tokenizer.get_vocab() == started.tokenizer.get_vocab()
    np.testing.assert_array_equal(source.model.action_std.numpy(),
                                  started.model.action_std.numpy())
    with pytest.raises(TrainError, match='cannot be combined'):
        train(_config(bag, tmp_path / 'second', steps=4, resume=True,
                      init_from=str(first.model_dir)))


def test_auxiliary_localisation_loss_is_trained_logged_and_resumed(bag, tmp_path):
    out = tmp_path / 'aux'
    train(_config(bag, out, steps=2, aux_weight=1.0))
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert all(np.isfinite(r['aux_loss']) and r['aux_loss'] > 0 for r in log)
    assert 'aux_probe' in torch.load(out / 'training_state.pt', weights_only=False)
    with pytest.raises(TrainError, match='trained with --aux-weight'):
        train(_config(bag, out, steps=4, resume=True))
    assert train(_config(bag, out, steps=4, resume=True, aux_weight=1.0)).step == 4
    # the probe is a training aid: the saved model is the plain policy
    assert not any('probe' in name for name in load_file(out / 'model' / 'model.safetensors'))
    with pytest.raises(TrainError, match='aux_weight'):
        train(_config(bag, tmp_path / 'bad', aux_weight=-1.0))


def test_grounding_loss_is_trained_logged_and_resumed(bag, tmp_path):
    out = tmp_path / 'ground'
    # token dropout on every batch: the labels must follow the kept 3D tokens
    train(_config(bag, out, steps=2, ground_weight=1.0, token_drop_prob=1.0))
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert all(np.isfinite(r['ground_loss']) and r['ground_loss'] >= 0 for r in log)
    state = torch.load(out / 'training_state.pt', weights_only=False)
    assert 'ground_probe' in state and 'aux_probe' not in state
    with pytest.raises(TrainError, match='trained with --ground-weight'):
        train(_config(bag, out, steps=4, resume=True))
    assert train(_config(bag, out, steps=4, resume=True, ground_weight=1.0)).step == 4
    assert not any('probe' in name for name in load_file(out / 'model' / 'model.safetensors'))
    with pytest.raises(TrainError, match='ground_weight'):
        train(_config(bag, tmp_path / 'bad', ground_weight=float('nan')))


def test_pointer_losses_are_trained_logged_and_saved_with_the_model(bag, tmp_path):
    out = tmp_path / 'pointer'
    # the sim preset: its groups lie on the objects (the tiny preset's rarely do)
    assert preset_config('sim').pointers == ['object', 'zone']
    train(_config(bag, out, preset='sim', steps=2, token_drop_prob=1.0))  # labels follow kept
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    # reach and pick name an object, no zone: the zone pointer has nothing to learn here
    # (a batch whose frames all lack an object label, e.g. near the object, counts 0)
    assert all(r['pointer_object_loss'] >= 0 and r['pointer_zone_loss'] == 0 for r in log)
    assert any(r['pointer_object_loss'] > 0 for r in log)
    weights = load_file(out / 'model' / 'model.safetensors')
    assert any(name.startswith('pointer.') for name in weights)  # part of the policy
    off = tmp_path / 'off'
    train(_config(bag, off, steps=2, pointer_weight=0.0))
    log = [json.loads(line) for line in (off / 'log.jsonl').read_text().splitlines()]
    assert not any('pointer_object_loss' in r for r in log)
    with pytest.raises(TrainError, match='pointer_weight'):
        train(_config(bag, tmp_path / 'bad', pointer_weight=-1.0))


def test_tracked_object_labels_get_their_own_cache_and_label_more_frames(bag, tmp_path):
    runs = {}
    for labels in ('start', 'tracked'):
        out = tmp_path / labels
        train(_config(bag, out, preset='sim', steps=2, object_labels=labels))
        runs[labels] = sorted((out / 'cache').glob('*.npz'))
        assert len(runs[labels]) == 1
    assert runs['start'][0].name != runs['tracked'][0].name
    known = {labels: np.isfinite(np.load(files[0])['target_groups']).all(axis=1).mean()
             for labels, files in runs.items()}
    assert known['tracked'] == 1.0 and known['start'] < 1.0
    with pytest.raises(TrainError, match='object_labels'):
        train(_config(bag, tmp_path / 'bad', object_labels='current'))


def test_grounding_probe_learns_to_pick_out_the_marked_tokens():
    torch.manual_seed(0)
    probe = GroundingProbe(16)
    tokens = torch.randn(64, 10, 16)
    queries = torch.randn(64, 8, 16)
    # the marked token of each row is the one most like its query (a learnable relation)
    labels = torch.zeros(64, 10)
    labels[torch.arange(64), torch.einsum('bd,bnd->bn', queries.mean(1), tokens).argmax(1)] = 1
    labels[:4] = float('nan')  # rows without a label are left out, not counted as zeros
    optimiser = torch.optim.Adam(probe.parameters(), lr=1e-2)
    first = grounding_loss(probe, queries, tokens, labels).item()
    for _ in range(200):
        loss = grounding_loss(probe, queries, tokens, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first
    hits = probe(queries[4:], tokens[4:]).argmax(1) == labels[4:].argmax(1)
    assert hits.float().mean() > 0.9
    assert grounding_loss(probe, queries, tokens, torch.full((64, 10), float('nan'))) == 0


def test_proprio_dropout_zeroes_whole_rows_at_the_given_rate(bag, tmp_path):
    proprio = torch.ones(2000, 7)
    dropped = drop_proprio(proprio, 0.5, np.random.default_rng(0))
    zero_rows = (dropped == 0).all(dim=1)
    kept_rows = (dropped == 1).all(dim=1)
    assert (zero_rows | kept_rows).all()  # whole rows, never single values
    assert 0.45 < zero_rows.float().mean() < 0.55
    assert (proprio == 1).all()  # the batch itself is not modified
    assert drop_proprio(proprio, 0.0, np.random.default_rng(0)) is proprio
    assert train(_config(bag, tmp_path / 'run', steps=2, proprio_drop_prob=1.0)).step == 2
    with pytest.raises(TrainError, match='proprio_drop_prob'):
        train(_config(bag, tmp_path / 'bad', proprio_drop_prob=1.5))


def test_head_stage_fits_only_the_head_of_a_trained_model_and_resumes(bag, tmp_path):
    first = train(_config(bag, tmp_path / 'first', steps=2))
    before = load_file(first.model_dir / 'model.safetensors')
    settings = {'steps': 30, 'batch_size': 16, 'lr': 3e-3, 'stage': 'head', 'head_views': 2,
                'checkpoint_every': 15, 'init_from': str(first.model_dir)}
    head = train(_config(bag, tmp_path / 'head', **settings))
    after = load_file(head.model_dir / 'model.safetensors')
    head_names = {name for name in after
                  if name.startswith('action_head.') or name.startswith('pointer.to_head.')}
    assert head_names and any(not torch.equal(before[n], after[n]) for n in head_names)
    # the trunk is frozen: every other weight is the source's, bit for bit
    for name in after.keys() - head_names:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / 'head' / 'log.jsonl').read_text().splitlines()]
    losses = [record['train_loss'] for record in log if 'train_loss' in record]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert 'val_loss' not in log[-1] or np.isfinite(log[-1]['val_loss'])
    # resuming reads the same trunk outputs back (though the resumed run loads the trunk from
    # its own output, not from init_from) and continues the same batches (stopped within the
    # warm-up, where the schedule does not depend on the total steps)
    train(_config(bag, tmp_path / 'resumed', **{**settings, 'steps': 2}))
    (cached,) = (tmp_path / 'resumed' / 'cache').glob('head_features_*.pt')
    written = cached.stat().st_mtime_ns
    resumed = train(_config(bag, tmp_path / 'resumed', **{**settings, 'steps': 30,
                                                         'init_from': '', 'resume': True}))
    assert list((tmp_path / 'resumed' / 'cache').glob('head_features_*.pt')) == [cached]
    assert cached.stat().st_mtime_ns == written
    resumed_weights = load_file(resumed.model_dir / 'model.safetensors')
    for name in head_names:
        torch.testing.assert_close(resumed_weights[name], after[name], rtol=0, atol=1e-6)
    with pytest.raises(TrainError, match="'head' stage"):
        train(_config(bag, tmp_path / 'resumed', steps=40, resume=True))


def test_head_stage_grows_a_geometry_branch_on_a_model_without_one(bag, tmp_path, monkeypatch):
    def tiny_branch_only():
        config = preset_config('tiny')
        config.preset, config.head_branch, config.head_branch_mode = 'tiny-branch', 32, 'only'
        return config

    monkeypatch.setitem(PRESETS, 'tiny-branch', tiny_branch_only)
    first = train(_config(bag, tmp_path / 'first', steps=2))
    before = load_file(first.model_dir / 'model.safetensors')
    settings = {'steps': 30, 'batch_size': 16, 'lr': 3e-3, 'stage': 'head',
                'preset': 'tiny-branch', 'init_from': str(first.model_dir),
                'cache_dir': str(tmp_path / 'shared')}
    head = train(_config(bag, tmp_path / 'branch', **settings))
    after = load_file(head.model_dir / 'model.safetensors')
    # the trunk's outputs went to the shared cache; a second head stage reads them back
    (cached,) = (tmp_path / 'shared').glob('head_features_*.pt')
    written = cached.stat().st_mtime_ns
    again = train(_config(bag, tmp_path / 'again', **settings))
    assert cached.stat().st_mtime_ns == written
    for name, value in load_file(again.model_dir / 'model.safetensors').items():
        torch.testing.assert_close(value, after[name], rtol=0, atol=1e-6)
    assert not (tmp_path / 'branch' / 'cache').exists()
    # views cut inside the decoder get their own file and leave the first one as it was
    cut = train(_config(bag, tmp_path / 'cut', **settings, head_cut_views=1))
    assert cached.stat().st_mtime_ns == written
    assert len(list((tmp_path / 'shared').glob('head_features_*.pt'))) == 2
    cut_weights = load_file(cut.model_dir / 'model.safetensors')
    assert not torch.equal(cut_weights['branch.layers.4.weight'],
                           after['branch.layers.4.weight'])
    branch = {name for name in after if name.startswith('branch.')}
    assert branch and not branch & before.keys()
    assert after['branch.layers.4.weight'].abs().sum() > 0  # it starts at zero, and learnt
    for name in before:  # the trunk is the source's, bit for bit
        if not name.startswith(('action_head.', 'pointer.to_head.')):
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    log = [json.loads(line)
           for line in (tmp_path / 'branch' / 'log.jsonl').read_text().splitlines()]
    losses = [record['train_loss'] for record in log if 'train_loss' in record]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    policy = Policy.from_pretrained(str(head.model_dir), device='cpu')
    assert (policy.config.head_branch, policy.config.head_branch_mode) == (32, 'only')
    assert policy.flops.branch_only
    # the policy runs it, pruned or not, and its chunk is what the branch regresses
    for pruner in ('dense', 'tri_stage'):
        policy.configure(pruner, Budget(keep_ratio=0.25))
        actions, stats = policy.step(make_observation(4))
        assert actions.shape == (8, 7) and np.isfinite(actions).all()
        assert stats.flops_dense > 0 and stats.pruner == pruner


def test_pointer_stage_trains_only_where_the_pointers_point(bag, tmp_path):
    # the sim preset: its groups lie on the objects, so its pointers have labels
    first = train(_config(bag, tmp_path / 'first', preset='sim', steps=1))
    before = load_file(first.model_dir / 'model.safetensors')
    settings = {'steps': 40, 'batch_size': 16, 'lr': 3e-3, 'stage': 'pointer', 'preset': 'sim',
                'checkpoint_every': 20, 'init_from': str(first.model_dir), 'val_every': 2}
    pointer = train(_config(bag, tmp_path / 'pointer', **settings))
    after = load_file(pointer.model_dir / 'model.safetensors')
    trained = {name for name in after if name.startswith('pointer.')
               and not name.startswith(('pointer.to_queries.', 'pointer.to_head.'))}
    assert trained and all(not torch.equal(before[n], after[n]) for n in trained
                           if n.startswith('pointer.score'))
    for name in after.keys() - trained:  # the trunk, the head and the maps of the points
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    log = [json.loads(line)
           for line in (tmp_path / 'pointer' / 'log.jsonl').read_text().splitlines()]
    losses = [record['train_loss'] for record in log if 'train_loss' in record]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # per-pointer losses are logged; validation is the pointer loss
    assert 'pointer_object_loss' in log[-1]
    validation = [(record['step'], record['val_loss']) for record in log if 'val_loss' in record]
    assert [step for step, _ in validation] == [0, 20, 40]  # step 0: the starting pointer
    assert all(np.isfinite(value) for _, value in validation)
    with pytest.raises(TrainError, match='pointer_weight'):
        train(_config(bag, tmp_path / 'x', stage='pointer', init_from='m', pointer_weight=0.0))
    with pytest.raises(TrainError, match='pointer alone'):
        train(_config(bag, tmp_path / 'x', stage='pointer', init_from='m', ground_weight=1.0))


def test_a_fresh_pointer_of_another_kind_trains_with_word_noise_on_a_trained_trunk(
        bag, tmp_path):
    first = train(_config(bag, tmp_path / 'first', preset='sim', steps=1))
    before = load_file(first.model_dir / 'model.safetensors')
    settings = {'steps': 4, 'batch_size': 8, 'stage': 'pointer', 'preset': 'sim-shape',
                'checkpoint_every': 4, 'init_from': str(first.model_dir), 'val_every': 2,
                'fresh_pointer': True, 'word_noise': 0.5}
    result = train(_config(bag, tmp_path / 'shape', **settings))
    after = load_file(result.model_dir / 'model.safetensors')
    warm = json.loads((tmp_path / 'shape' / 'log.jsonl').read_text().splitlines()[0])
    # the scoring weights started fresh (none copied, none widened from the joint key) ...
    assert 'pointer.key.0.weight' in warm['skipped'] and not warm['widened']
    assert 'pointer.colour_key.0.weight' in warm['skipped']
    assert after['pointer.key.0.weight'].shape[1] == 6 + 10  # place, extent, object context
    # ... while the trunk, the head and the points' maps are the source's, untouched
    for name in ('pointer.to_head.weight', 'action_queries', 'pointer.to_queries.weight'):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert json.loads((result.model_dir / 'config.json').read_text())['pointer_score'] == (
        'factored')
    with pytest.raises(TrainError, match='fresh_pointer'):
        train(_config(bag, tmp_path / 'x', fresh_pointer=True))


def test_the_attribute_pointer_learns_its_classes_from_a_sim_model(bag, tmp_path):
    """Run 39's recipe in small: an attribute pointer stage on a trained sim model."""
    first = train(_config(bag, tmp_path / 'first', preset='sim', steps=1))
    before = load_file(first.model_dir / 'model.safetensors')
    settings = {'steps': 30, 'batch_size': 8, 'stage': 'pointer', 'preset': 'sim-attribute',
                'checkpoint_every': 30, 'init_from': str(first.model_dir), 'val_every': 2,
                'lr': 3e-3, 'log_every': 5}
    result = train(_config(bag, tmp_path / 'attribute', **settings))
    log = [json.loads(line)
           for line in (tmp_path / 'attribute' / 'log.jsonl').read_text().splitlines()]
    # the class heads start fresh, the text layer is the source's
    assert 'pointer.group_kind.0.weight' in log[0]['skipped']
    assert 'pointer.text_layer.self_attn.in_proj_weight' not in log[0]['skipped']
    # the class loss is logged apart from the pointers' own losses, and it falls
    attributes = [record['pointer_attributes_loss'] for record in log
                  if 'pointer_attributes_loss' in record]
    assert len(attributes) == 6 and attributes[-1] < attributes[0]
    assert all('pointer_object_loss' in record for record in log if 'train_loss' in record)
    after = load_file(result.model_dir / 'model.safetensors')
    for name in ('pointer.to_head.weight', 'action_queries'):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    # the saved model is an attribute pointer with the preset's sharpness, and it acts
    policy = Policy.from_pretrained(result.model_dir, device='cpu', pruner='dense')
    assert policy.config.pointer_score == 'attribute'
    assert policy.model.pointer.sharpness == preset_config('sim-attribute').pointer_sharpness
    frame = next(iter(read_episodes(bag))).frames[0]
    actions, _ = policy.step(frame.observation)
    assert np.isfinite(actions).all()


@pytest.mark.parametrize('overrides, message', [
    ({}, '--init-from'),
    ({'init_from': 'm', 'aux_weight': 1.0}, 'head alone'),
    ({'init_from': 'm', 'proprio_drop_prob': 0.5}, 'head alone'),
    ({'init_from': 'm', 'head_views': 0}, 'head_views'),
    ({'init_from': 'm', 'head_state_dropout': 1.0}, 'head_state_dropout'),
    ({'init_from': 'm', 'head_state_dropout': -0.1}, 'head_state_dropout'),
    ({'init_from': 'm', 'head_cut_views': -1}, 'head_cut_views'),
    ({'init_from': 'm', 'cut_share': 0.5}, 'cut_share'),
])
def test_head_stage_refuses_settings_that_would_train_the_trunk_or_nothing(
        bag, tmp_path, overrides, message):
    with pytest.raises(TrainError, match=message):
        train(_config(bag, tmp_path / 'x', stage='head', **overrides))
    with pytest.raises(TrainError, match='stage'):
        train(_config(bag, tmp_path / 'y', stage='decoder'))
    with pytest.raises(TrainError, match='--stage head'):
        train(_config(bag, tmp_path / 'z', head_state_dropout=0.5))
    with pytest.raises(TrainError, match='--stage head'):
        train(_config(bag, tmp_path / 'w', head_cut_views=1))


def test_head_state_dropout_trains_a_different_head_on_the_same_batches(bag, tmp_path):
    first = train(_config(bag, tmp_path / 'first', steps=2))
    settings = {'steps': 6, 'batch_size': 16, 'lr': 3e-3, 'stage': 'head', 'head_views': 1,
                'checkpoint_every': 6, 'init_from': str(first.model_dir)}
    heads = {rate: load_file(train(_config(bag, tmp_path / f'head{rate}', head_state_dropout=rate,
                                           **settings)).model_dir / 'model.safetensors')
             for rate in (0.0, 0.5)}
    assert not torch.equal(heads[0.0]['action_head.0.weight'], heads[0.5]['action_head.0.weight'])
    # the trunk is the source's in both
    torch.testing.assert_close(heads[0.0]['action_queries'], heads[0.5]['action_queries'],
                               rtol=0, atol=0)


def test_shape_probe_reads_the_target_groups_of_cached_samples(tmp_path):
    """tools/shape_probe.py: leave-one-colour-out shape accuracy from the cached groups."""
    from pathlib import Path
    import subprocess
    import sys

    from vla_pruned_ros.train.dataset import load_samples

    bag = tmp_path / 'bag'
    record_episodes(bag, ['reach'], 3, image_size=(64, 64), points_stride=2)
    config = preset_config('tiny')
    config.points = preset_config('sim').points  # coloured, tabletop removed: objects labelled
    samples = load_samples([bag], MultiModalVLA(config), cache_dir=tmp_path / 'cache')
    assert (np.nan_to_num(samples.target_groups) > 0.5).any()
    colours = {samples.instructions[i].split()[-2] for i in np.unique(samples.instruction)}
    assert len(colours) >= 2, 'the probe leaves one colour out: it needs two'
    caches = sorted(str(p) for p in (tmp_path / 'cache').glob('*.npz'))
    script = Path(__file__).resolve().parents[1] / 'tools' / 'shape_probe.py'
    out = tmp_path / 'probe.json'
    result = subprocess.run([sys.executable, str(script), *caches, '--frames', '1000',
                             '--out', str(out)], check=True, capture_output=True, text=True,
                            timeout=300)
    report = json.loads(out.read_text())
    # every labelled target group of every frame is one probe sample
    assert report['frames'] == len(samples)
    assert report['groups'] == int((np.nan_to_num(samples.target_groups) > 0.5).sum())
    for name in ('group_extent', 'object_context', 'both'):
        accuracy = report[name]['per_left_out_colour']
        assert accuracy and all(0.0 <= a <= 1.0 for a in accuracy)
        assert report[name]['mean'] == pytest.approx(float(np.mean(accuracy)))
        assert name in result.stdout
