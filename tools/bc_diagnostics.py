"""
What a behaviour-cloned model learnt: per-dimension error and which inputs it uses.

On the validation frames of a training run (every 20th episode, as ``vla-pruned-ros train``
holds them out) it prints:

- the L1 error of the normalised action chunk per action dimension, next to the error of a
  constant predictor (the validation mean), so a dimension the model did not learn stands out;
- how much the predictions move when one input is taken from another frame of the batch
  (instruction, image, 3D centres, 3D neighbourhoods, proprio): an input the model ignores
  moves nothing.

Usage (the cache directory of the run makes it fast)::

    python tools/bc_diagnostics.py MODEL_DIR BAG_OR_DIR [...] --cache runs/sim/cache
"""

import argparse

import torch

from vla_pruned_ros.model.checkpoint import load_model
from vla_pruned_ros.model.text import InstructionEncoder
from vla_pruned_ros.train.dataset import load_samples
from vla_pruned_ros.train.trainer import TrainConfig, _Batches, _split, forward

INPUTS = ('image', 'neighbourhoods', 'centres', 'instruction', 'proprio')
DIMENSIONS = ('x', 'y', 'z', 'roll', 'pitch', 'yaw', 'gripper')


def main() -> None:
    """Print the per-dimension errors and the input sensitivities."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model')
    parser.add_argument('data', nargs='+')
    parser.add_argument('--cache', help='cache directory of the training run')
    parser.add_argument('--frames', type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model(args.model)
    model.eval()
    samples = load_samples(args.data, model, cache_dir=args.cache)
    defaults = TrainConfig(data=[], out='')
    _, validation = _split(samples, defaults.val_every, args.frames)
    if validation is None:
        raise SystemExit('no validation episodes in these bags')
    batches = _Batches(validation, InstructionEncoder(tokenizer, model.config.instruction_tokens),
                       model)
    errors, targets, predictions = [], [], []
    moved: dict[str, list] = {name: [] for name in INPUTS}
    with torch.no_grad():
        for start in range(0, len(batches), 64):
            rows = torch.arange(start, min(start + 64, len(batches)))
            pixels, neighbourhoods, centres, ids, proprio, target = batches.get(rows)
            inputs = [pixels, neighbourhoods, centres, ids, proprio]
            prediction = forward(model, *inputs)
            errors.append((prediction - target).abs())
            targets.append(target)
            predictions.append(prediction)
            for index, name in enumerate(INPUTS):
                swapped = list(inputs)
                swapped[index] = inputs[index].roll(1, dims=0)  # another frame's input
                moved[name].append((forward(model, *swapped) - prediction).abs())
    error = torch.cat(errors).mean(dim=(0, 1)).numpy()
    target = torch.cat(targets)
    constant = (target - target.mean(dim=0)).abs().mean(dim=(0, 1)).numpy()
    print('validation frames:', len(batches))
    print('dimension   ' + ' '.join(f'{d:>8}' for d in DIMENSIONS))
    print('model L1    ' + ' '.join(f'{v:8.3f}' for v in error))
    print('constant L1 ' + ' '.join(f'{v:8.3f}' for v in constant))
    print('\nmean |change| of the prediction when one input comes from another frame:')
    for name in INPUTS:
        change = torch.cat(moved[name]).mean(dim=(0, 1)).numpy()
        print(f'{name:<12}' + ' '.join(f'{v:8.3f}' for v in change))
    spread = torch.cat(predictions).std(dim=(0, 1)).numpy()
    print('\nstd of the predictions ' + ' '.join(f'{v:8.3f}' for v in spread))
    target_spread = target.std(dim=(0, 1)).numpy()
    print('std of the targets     ' + ' '.join(f'{v:8.3f}' for v in target_spread))


if __name__ == '__main__':
    main()
