"""
The ``vla-pruned-ros train`` command: behaviour cloning from recorded demonstration bags.

Example::

    vla-pruned-ros train --data demos/ --preset sim --out runs/sim --steps 3000

torch and rosbags are imported only when the command runs (the dataset module imports numpy).
"""

import argparse
import sys

from vla_pruned_ros.train.dataset import OBJECT_LABELS


def add_parser(subparsers: 'argparse._SubParsersAction') -> argparse.ArgumentParser:
    """Add the ``train`` command to ``subparsers`` and return its parser."""
    parser = subparsers.add_parser(
        'train',
        help='behaviour-clone the reference policy from recorded demonstration bags',
        description=(
            'Train the reference 2D+3D VLA on expert demonstrations recorded as rosbag2 '
            '(vla-pruned-ros sim record). Writes OUT/model (a model directory), '
            'OUT/training_state.pt (for --resume) and OUT/log.jsonl.'
        ),
    )
    parser.add_argument('--data', nargs='+', required=True, metavar='BAG_OR_DIR',
                        help='bag folders, or folders holding bag folders')
    parser.add_argument('--out', required=True, help='output directory of the run')
    parser.add_argument('--preset', default='sim', help='model preset to train (default: sim)')
    parser.add_argument('--steps', type=int, default=3000, help='total optimiser steps')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=5e-4, help='peak learning rate')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --out from its last checkpoint')
    parser.add_argument('--checkpoint-every', type=int, default=250, metavar='STEPS')
    parser.add_argument('--token-drop-prob', type=float, default=0.5,
                        help='fraction of batches trained on a random subset of visual tokens')
    parser.add_argument('--cut-share', type=float, default=0.0,
                        help='share of the token-dropout batches whose subset is cut inside '
                             'the decoder, before a random layer from the second on, as the '
                             'attention-ranking pruners cut (default 0)')
    parser.add_argument('--min-keep', type=float, default=0.125,
                        help='smallest fraction of 2D / 3D tokens such a batch keeps')
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA when a GPU is present, else the CPU), 'cpu', 'cuda' "
                             "or 'cuda:N'")
    parser.add_argument('--threads', type=int, default=0,
                        help='torch CPU threads (default: torch chooses)')
    parser.add_argument('--init-from', metavar='MODEL_DIR',
                        help='start from this model directory (weights, tokenizer, action '
                             'normalisation) instead of random weights; weights that grew '
                             'along their input dimension get zeros in the new columns')
    parser.add_argument('--aux-weight', type=float, default=0.0,
                        help='weight of the auxiliary loss that predicts where the named target '
                             'object is from the action-query states (needs bags from sim '
                             'record; 0 = off)')
    parser.add_argument('--ground-weight', type=float, default=0.0,
                        help='weight of the grounding loss that marks the 3D tokens on the named '
                             'object from the final states (needs bags from sim record; 0 = off)')
    parser.add_argument('--pointer-weight', type=float, default=1.0,
                        help='weight of the pointer loss of a model with pointers (the sim '
                             'preset): each pointer learns which 3D tokens show what it names '
                             '(needs bags from sim record; 0 = off)')
    parser.add_argument('--proprio-drop-prob', type=float, default=0.0,
                        help='share of training frames trained without the end-effector pose '
                             'input (zeroed), so the policy has to use its cameras (0 = off)')
    parser.add_argument('--word-noise', type=float, default=0.0,
                        help='share of instructions that get runs of token ids no training '
                             'instruction holds inserted, so new wording reads as noise '
                             '(0 = off; not with --stage head)')
    parser.add_argument('--fresh-pointer', action='store_true',
                        help='with --init-from: start the pointer scoring weights fresh instead '
                             'of copying them (to change the kind of pointer)')
    parser.add_argument('--object-labels', choices=OBJECT_LABELS, default='start',
                        help="object pointer labels: 'start' marks the groups at the object's "
                             'start position while the gripper is far from it; '
                             "'tracked' the groups at its recorded position in every frame "
                             '(bags with /sim/target_position)')
    parser.add_argument('--stage', choices=('all', 'head', 'pointer'), default='all',
                        help="'all' trains every weight; 'head' only the action head of the "
                             '--init-from model, on trunk outputs computed once per frame '
                             "(minutes on a CPU); 'pointer' only its pointers, on the pointer "
                             'loss')
    parser.add_argument('--head-views', type=int, default=2,
                        help='head stage: trunk outputs per frame, the first with every token, '
                             'the others with random token dropout')
    parser.add_argument('--head-cut-views', type=int, default=0,
                        help='head stage: further trunk outputs per frame whose visual tokens '
                             'are cut inside the decoder (a random subset before a random '
                             'layer), where FastV, VLA-Pruner, TIES and tri_stage cut '
                             '(default 0)')
    parser.add_argument('--head-state-dropout', type=float, default=0.0,
                        help='head stage: dropout rate on the decoder states the head reads, '
                             'so it leans on the pointer and pose features (default off)')
    parser.add_argument('--cache-dir', metavar='DIR',
                        help="where the per-bag input caches and the head stage's trunk "
                             'outputs go (default OUT/cache): head stages on the same trunk '
                             'and data share one trunk pass')
    parser.add_argument('--no-progress', dest='progress', action='store_false')
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and print where the model went; 2 on bad arguments or data."""
    from vla_pruned_ros.train.dataset import DatasetError
    from vla_pruned_ros.train.trainer import TrainConfig, TrainError, train

    config = TrainConfig(
        data=list(args.data), out=args.out, preset=args.preset, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, resume=args.resume,
        checkpoint_every=args.checkpoint_every, token_drop_prob=args.token_drop_prob,
        cut_share=args.cut_share,
        min_keep=args.min_keep, threads=args.threads, device=args.device,
        progress=args.progress,
        init_from=args.init_from or '', aux_weight=args.aux_weight,
        ground_weight=args.ground_weight,
        pointer_weight=args.pointer_weight,
        proprio_drop_prob=args.proprio_drop_prob,
        stage=args.stage, head_views=args.head_views, head_cut_views=args.head_cut_views,
        head_state_dropout=args.head_state_dropout, word_noise=args.word_noise,
        fresh_pointer=args.fresh_pointer, object_labels=args.object_labels,
        cache_dir=args.cache_dir or '',
    )
    try:
        result = train(config)
    except (TrainError, DatasetError, ValueError) as err:
        print(f'vla-pruned-ros train: error: {err}', file=sys.stderr)
        return 2
    val = f', validation loss {result.val_loss:.4f}' if result.val_loss is not None else ''
    print(f'wrote {result.model_dir} at step {result.step}: train loss '
          f'{result.train_loss:.4f}{val} ({result.seconds / 60:.1f} min)')
    return 0
