"""Word noise: token ids training never shows, put into training instructions."""

import numpy as np
import pytest
import torch

from vla_pruned_ros.model.pointer import InstructionPointer, pointer_loss
from vla_pruned_ros.train.trainer import TrainConfig, TrainError
from vla_pruned_ros.train.word_noise import MAX_SPAN, MAX_SPANS, add_word_noise, unseen_ids

PAD = 0


def test_unseen_ids_are_the_vocabulary_minus_the_instructions_and_special_tokens():
    ids = torch.tensor([[0, 0, 5, 6], [0, 7, 5, 6]])
    assert unseen_ids(ids, 10, {0, 1}).tolist() == [2, 3, 4, 8, 9]


def test_word_noise_inserts_runs_of_unseen_ids_keeping_the_words_and_left_padding():
    ids = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 5, 6, 7], [5, 6, 7, 5, 6, 7, 5, 6, 7, 5],
                        [0] * 10])
    unseen = torch.tensor([20, 21])
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(30):
        noisy = add_word_noise(ids, unseen, 1.0, PAD, rng)
        assert noisy.shape == ids.shape
        # row 0: one or two runs of new ids put between (or around) its words, in order
        tokens = noisy[0][noisy[0] != PAD]
        new = torch.isin(tokens, unseen)
        assert 1 <= int(new.sum()) <= MAX_SPANS * MAX_SPAN
        assert tokens[~new].tolist() == [5, 6, 7]
        assert (noisy[0][:10 - len(tokens)] == PAD).all()  # still left-padded
        lengths.add(len(tokens))
        # a full row has no room to grow, an empty one nothing to add to
        assert torch.equal(noisy[1], ids[1]) and torch.equal(noisy[2], ids[2])
    assert len(lengths) > 2  # runs of several lengths
    assert torch.equal(ids[0], torch.tensor([0, 0, 0, 0, 0, 0, 0, 5, 6, 7]))  # a copy
    assert torch.equal(add_word_noise(ids, unseen, 0.0, PAD, rng), ids)
    with pytest.raises(ValueError, match='probability'):
        add_word_noise(ids, unseen, 1.5, PAD, rng)


def test_word_noise_is_checked_by_the_training_config():
    with pytest.raises(TrainError, match='word_noise'):
        TrainConfig(data=['x'], out='y', word_noise=-0.1).validate()
    with pytest.raises(TrainError, match='word_noise'):
        TrainConfig(data=['x'], out='y', stage='head', init_from='m', word_noise=0.2).validate()


def _scenes(batch: int, generator: torch.Generator, extra: int = 0):
    """
    Four groups of four colours and an instruction naming group 0's.

    Words 1-4 name the colour of group 0, 5-7 are filler. With ``extra``, that many ids from
    8-15 (never in training) are inserted at random places.
    """
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.2, 0.9],
                            [0.9, 0.8, 0.1]])
    colours = torch.stack([torch.randperm(4, generator=generator) for _ in range(batch)])
    rgb = palette[colours][:, :, None].expand(-1, -1, 8, -1)
    neighbourhoods = torch.cat([0.01 * torch.randn(batch, 4, 8, 3, generator=generator), rgb],
                               dim=-1)
    centres = torch.rand(batch, 4, 3, generator=generator)
    rows = []
    for colour in colours[:, 0].tolist():
        words = [5, 6, colour + 1, 7]
        for _ in range(extra):
            position = int(torch.randint(len(words) + 1, (1,), generator=generator))
            words.insert(position, int(torch.randint(8, 16, (1,), generator=generator)))
        rows.append([PAD] * (8 - len(words)) + words)
    labels = torch.zeros(batch, 4)
    labels[:, 0] = 1.0
    return torch.tensor(rows), centres, neighbourhoods, labels


def _mass_on_target_with_new_words(noise: float) -> float:
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pointer = InstructionPointer(width=32, num_pointers=1, text_length=8, num_heads=2,
                                 vocab_size=16, point_features=6)
    optimiser = torch.optim.Adam(pointer.parameters(), lr=2e-3)
    for _ in range(150):
        input_ids, centres, neighbourhoods, labels = _scenes(64, generator)
        unseen = unseen_ids(input_ids, 16, {PAD})
        input_ids = add_word_noise(input_ids, unseen, noise, PAD, rng)
        loss = pointer_loss(pointer(input_ids, centres, neighbourhoods).logits[:, 0], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    input_ids, centres, neighbourhoods, labels = _scenes(256, generator, extra=3)
    with torch.no_grad():
        logits = pointer(input_ids, centres, neighbourhoods).logits[:, 0]
    return float(torch.softmax(logits, -1)[:, 0].mean())


def test_a_pointer_trained_with_word_noise_reads_past_words_it_never_saw():
    with_noise = _mass_on_target_with_new_words(0.5)
    assert with_noise > 0.9
    assert with_noise > _mass_on_target_with_new_words(0.0) + 0.1
