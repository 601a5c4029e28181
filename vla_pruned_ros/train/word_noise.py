"""
Word noise: instructions with words the training data never uses, so that new wording is noise.

The heldout split words its instructions with a template training never shows ('shove the
blue cube over to the green zone'). Its extra words are token ids no training instruction
contains, so their embeddings were never trained: they keep their random initialisation and,
through the pointer's text layer, moved where it pointed. With the words said in a training
template the same scenes were found far more often (docs/training.md, the wording). Putting
such ids into training instructions, where they carry no meaning, teaches the model to look
past them. Only the set of ids is used, not the heldout words: any id outside the training
instructions may be drawn.
"""

import numpy as np
import torch

# Inserted runs: at most this many per instruction, each at most this many ids long.
MAX_SPANS = 2
MAX_SPAN = 4


def unseen_ids(
    instruction_ids: torch.Tensor, vocab_size: int, special: 'set[int]'
) -> torch.Tensor:
    """The token ids below ``vocab_size`` that neither ``instruction_ids`` nor ``special`` hold."""
    present = set(instruction_ids.unique().tolist()) | set(special)
    return torch.tensor([i for i in range(vocab_size) if i not in present], dtype=torch.long)


def add_word_noise(
    input_ids: torch.Tensor, unseen: torch.Tensor, probability: float, pad_id: int,
    rng: np.random.Generator, max_span: int = MAX_SPAN, max_spans: int = MAX_SPANS,
) -> torch.Tensor:
    """
    A copy of the left-padded ``input_ids`` [B, T] with words from ``unseen`` put in.

    Per row, with ``probability``: 1 to ``max_spans`` runs of 1 to ``max_span`` unseen ids
    inserted at random places (a new word is several byte-level pieces; the row grows into its
    left padding and a run that does not fit is cut). Nothing is replaced: a replaced colour
    word leaves a push instruction with the zone's colour alone, and the object pointer learnt
    to take it (docs/training.md).
    """
    if not 0 <= probability <= 1:
        raise ValueError(f'word noise probability must lie in [0, 1], got {probability}')
    noisy = input_ids.clone()
    if probability == 0 or len(unseen) == 0:
        return noisy
    length = noisy.shape[1]
    for row in range(noisy.shape[0]):
        tokens = [int(t) for t in noisy[row] if int(t) != pad_id]
        if not tokens:
            continue
        if rng.random() < probability:
            for _ in range(int(rng.integers(1, max_spans + 1))):
                room = length - len(tokens)
                span = min(int(rng.integers(1, max_span + 1)), room)
                at = int(rng.integers(len(tokens) + 1))
                tokens[at:at] = [int(unseen[i]) for i in rng.integers(len(unseen), size=span)]
        noisy[row] = torch.tensor([pad_id] * (length - len(tokens)) + tokens)
    return noisy
