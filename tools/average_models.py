"""
Average the weights of model directories of one architecture (a "model soup").

Runs fine-tuned from the same starting model usually stay close enough that their weighted
mean is itself a working model; whether it is a better one has to be measured (here it was
not: docs/training.md, "The seed-25 model on the test seeds"). Every model must
have the same configuration (presets, sizes, pointers) and the same action normalisation:
a mean of heads that regress differently scaled targets would be no model at all, so both are
checked and a mismatch is refused. Integer buffers are taken from the first model.

    python tools/average_models.py models/default runs/34s25/model --out runs/soup/model
    python tools/average_models.py A B --weights 0.25 0.75 --out C
"""

import argparse
from collections.abc import Sequence
import math
import os

import torch

from vla_pruned_ros.model.checkpoint import CONFIG_FILE, CheckpointError, load_model, save_model
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.mvla import MultiModalVLA

# Normalisation statistics are data, not weights: they must agree, not be averaged.
_STATISTICS = ('action_mean', 'action_std')


class AverageError(ValueError):
    """Models that cannot be averaged (different configurations or action statistics)."""


def average_models(
    directories: Sequence[str], weights: Sequence[float] | None = None
) -> tuple[MultiModalVLA, object]:
    """Return the weighted mean of the models in ``directories`` and the first one's tokenizer."""
    if len(directories) < 2:
        raise AverageError('averaging needs at least two models')
    weights = [1.0 / len(directories)] * len(directories) if weights is None else list(weights)
    if len(weights) != len(directories):
        raise AverageError(f'{len(weights)} weights for {len(directories)} models')
    if not all(math.isfinite(w) and w >= 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise AverageError(f'weights must be non-negative and sum to 1, got {weights}')
    for directory in directories:
        if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
            raise AverageError(f'{directory!r} is not a model directory: no {CONFIG_FILE}')
    # The stored configurations, before load_model resolves the sub-directories per model.
    configs = [MVLAConfig.load(os.path.join(d, CONFIG_FILE)).to_dict() for d in directories]
    for directory, config in zip(directories[1:], configs[1:]):
        if config != configs[0]:
            raise AverageError(f'{directory} has another configuration than {directories[0]}')
    models = [load_model(directory) for directory in directories]
    first, tokenizer = models[0]
    for directory, (model, _) in zip(directories[1:], models[1:]):
        for name in _STATISTICS:
            if not torch.equal(getattr(model, name), getattr(first, name)):
                raise AverageError(
                    f'{directory} has another {name} than {directories[0]}: trained on other '
                    'data, its head regresses differently scaled actions')
    states = [model.state_dict() for model, _ in models]
    averaged = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point() and name not in _STATISTICS:
            averaged[name] = sum(w * state[name] for w, state in zip(weights, states))
        else:
            averaged[name] = tensor
    first.load_state_dict(averaged)
    return first, tokenizer


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('models', nargs='+', help='model directories (at least two)')
    parser.add_argument('--weights', nargs='+', type=float,
                        help='one weight per model, summing to 1 (default: equal)')
    parser.add_argument('--out', required=True, help='model directory to write')
    args = parser.parse_args()
    try:
        model, tokenizer = average_models(args.models, args.weights)
    except (AverageError, CheckpointError) as err:
        raise SystemExit(f'average_models: {err}') from err
    save_model(model, tokenizer, args.out)
    print(f'wrote {args.out}: the mean of {len(args.models)} models')


if __name__ == '__main__':
    main()
