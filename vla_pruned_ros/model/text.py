"""
Instruction tokenizer: a transformers tokenizer built locally, never downloaded.

Presets train a small byte-level BPE on a built-in corpus of tabletop instructions (any text
still encodes: byte-level BPE falls back to bytes). A model directory may instead hold any
tokenizer written with ``save_pretrained`` (e.g. the decoder's own), loaded offline.
"""

from collections.abc import Iterable
from typing import Optional

from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = '<pad>'
BOS_TOKEN = '<s>'

_COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'cyan', 'white', 'black']
_SHAPES = ['cube', 'box', 'block', 'sphere', 'ball', 'cylinder', 'can', 'object']
_TEMPLATES = [
    'reach the {c} {s}', 'move to the {c} {s}', 'touch the {c} {s}', 'go to the {c} {s}',
    'push the {c} {s} to the zone', 'push the {c} {s} into the green zone',
    'slide the {c} {s} to the marked area', 'pick up the {c} {s}', 'lift the {c} {s}',
    'grasp the {c} {s} and raise it', 'put the {c} {s} on the left', 'open the drawer',
    'close the gripper', 'what action should the robot take to {c} {s}?',
]


def default_corpus() -> list[str]:
    """Instructions covering the tabletop vocabulary, used to train the preset tokenizer."""
    return [t.format(c=c, s=s) for t in _TEMPLATES for c in _COLOURS for s in _SHAPES]


def build_tokenizer(
    corpus: Optional[Iterable[str]] = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(corpus or default_corpus()), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, padding_side='left'
    )


def load_tokenizer(directory: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` from a local directory only."""
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


class InstructionEncoder:
    """
    Turns instruction text into a fixed number of token ids, cached per instruction.

    A fixed length keeps the token layout identical from step to step and lets training batch
    episodes with different instructions. Padding goes on the left so the last instruction
    token is always a real token (FastV-style pruners read its attention row).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, length: int) -> None:
        self.tokenizer = tokenizer
        self.length = length
        self._cache: dict[str, list[int]] = {}

    def encode(self, instruction: str) -> list[int]:
        """Token ids of ``instruction``, left-padded or truncated to ``length``."""
        ids = self._cache.get(instruction)
        if ids is None:
            tokens = self.tokenizer(instruction, add_special_tokens=False)['input_ids']
            tokens = tokens[:self.length]
            pad_id = self.tokenizer.pad_token_id
            ids = [pad_id] * (self.length - len(tokens)) + list(tokens)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[instruction] = ids
        return ids
