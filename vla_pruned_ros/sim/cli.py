"""
The ``vla-pruned-ros sim`` command: work with the MuJoCo tabletop benchmark.

Sub-commands: ``record`` (scripted-expert demonstrations to a rosbag2) and ``eval`` (closed-loop
success rate of a policy per pruner and token budget). MuJoCo, torch and rosbags are imported
only when a sub-command runs, so ``--help`` stays fast.
"""

import argparse
from pathlib import Path
import sys

# Kept literal so that building the parser imports no MuJoCo; a test checks them against
# vla_pruned_ros.sim.tasks.FAMILIES / SPLITS, vla_pruned_ros.sim.record.STORAGES and
# vla_pruned_ros.sim.expert.TOLERANCES.
FAMILY_CHOICES = ('reach', 'push', 'pick')
SPLIT_CHOICES = ('train', 'heldout')
STORAGE_CHOICES = ('mcap', 'sqlite3')
TOLERANCE_CHOICES = ('strict', 'loose')
# The shipped reference policy (trained with `vla-pruned-ros train`, see docs/training.md).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / 'models' / 'default'


def _add_record_parser(sim_commands: 'argparse._SubParsersAction') -> None:
    record = sim_commands.add_parser(
        'record',
        help='record scripted-expert episodes to a rosbag2',
        description=(
            'Roll out the scripted experts and write RGB, depth, camera info, point cloud, '
            'end-effector pose, expert twist and action chunks to a new rosbag2 folder.'
        ),
    )
    record.add_argument('--out', required=True, help='bag folder to create (must not exist)')
    record.add_argument(
        '--families', nargs='+', choices=FAMILY_CHOICES, default=list(FAMILY_CHOICES),
        help='task families to record (default: all)',
    )
    record.add_argument(
        '--episodes', type=int, default=10, help='episodes per family (default: 10)'
    )
    record.add_argument('--split', choices=SPLIT_CHOICES, default='train')
    record.add_argument(
        '--seed', type=int, default=0, help='task seed of the first episode (default: 0)'
    )
    record.add_argument('--storage', choices=STORAGE_CHOICES, default='mcap')
    record.add_argument(
        '--image-size', type=int, nargs=2, default=(224, 224), metavar=('WIDTH', 'HEIGHT'),
    )
    record.add_argument(
        '--control-dt', type=float, default=0.1, help='seconds per control step (default: 0.1)'
    )
    record.add_argument(
        '--points-stride', type=int, default=4,
        help='point cloud samples every n-th depth pixel in u and v (default: 4)',
    )
    record.add_argument(
        '--noise', type=float, default=0.003,
        help='std of the noise on executed translations, metres (default: 0.003)',
    )
    record.add_argument(
        '--yaw-noise', type=float, default=0.015,
        help='std of the noise on executed yaw steps, rad (default: 0.015)',
    )
    record.add_argument(
        '--no-compress', dest='compress', action='store_false',
        help='write uncompressed (default: zstd, MCAP chunks or sqlite3 messages)',
    )
    record.add_argument(
        '--expert-tolerance', choices=TOLERANCE_CHOICES, default='strict',
        help='how precisely the experts align before descending / lowering (default: strict)',
    )
    record.add_argument(
        '--policy', default=None, metavar='MODEL_DIR',
        help='DAgger data: this policy acts (dense, on the CPU) and the expert only labels '
             'the states it reaches (default: the expert acts)',
    )
    record.add_argument(
        '--execute-steps', type=int, default=4,
        help='with --policy: actions executed per predicted chunk (default: 4, as sim eval)',
    )
    record.add_argument(
        '--expert-share', type=float, default=0.0,
        help="with --policy: share of chunks the expert executes instead (DAgger's beta, "
             'default: 0)',
    )
    record.add_argument(
        '--excursions', type=float, default=0.0, metavar='P',
        help="per-step probability of a random detour off the expert's path, the expert "
             'labelling its recovery (default: 0, none; not with --policy)',
    )
    record.add_argument(
        '--excursion-steps', type=int, default=3,
        help='with --excursions: longest detour, control steps (default: 3)',
    )
    record.add_argument(
        '--nudges', type=float, default=0.0, metavar='P',
        help='per-step probability of moving the named object 1.5-5 cm while the gripper works '
             'on it, the expert labelling what follows (default: 0, none; not with --policy '
             'or --excursions)',
    )
    record.set_defaults(_sim_run=_run_record)


def _add_eval_parser(sim_commands: 'argparse._SubParsersAction') -> None:
    evaluate = sim_commands.add_parser(
        'eval',
        help='closed-loop success rate of a policy per pruner and token budget',
        description=(
            'Drive the simulator with Policy.step for every pruner x budget x family and write '
            'results.json, results.md and success_vs_tokens.png. Episodes use the task seeds '
            'SEED .. SEED+EPISODES-1 of the split; the first --execute-steps actions of each '
            'predicted chunk are executed before the next observation.'
        ),
    )
    evaluate.add_argument('--model', default=None,
                          help='model directory (default: the shipped models/default)')
    evaluate.add_argument('--pruners', nargs='+', default=['dense', 'tri_stage'],
                          help='registered pruner names, name:key=value,... (config '
                               'overrides); "all" = every registered pruner (default: dense '
                               'tri_stage)')
    evaluate.add_argument('--budgets', nargs='+', type=float, default=[0.5, 0.25, 0.125],
                          help='visual-token keep ratios (dense ignores them)')
    evaluate.add_argument('--episodes', type=int, default=20, help='episodes per family')
    evaluate.add_argument('--split', choices=SPLIT_CHOICES, default='heldout')
    evaluate.add_argument('--families', nargs='+', choices=FAMILY_CHOICES,
                          default=list(FAMILY_CHOICES))
    evaluate.add_argument('--seed', type=int, default=0, help='task seed of the first episode')
    evaluate.add_argument('--execute-steps', type=int, default=4,
                          help='actions of each chunk executed open loop (default: 4)')
    evaluate.add_argument('--points-stride', type=int, default=2,
                          help='point cloud density, as recorded for training (default: 2)')
    evaluate.add_argument('--device', default='auto')
    evaluate.add_argument('--dtype', default='fp32')
    evaluate.add_argument('--out', required=True, help='folder for the report files')
    evaluate.set_defaults(_sim_run=_run_eval)


def add_parser(subparsers: 'argparse._SubParsersAction') -> argparse.ArgumentParser:
    """Add the ``sim`` command and its sub-commands to ``subparsers``; return its parser."""
    parser = subparsers.add_parser(
        'sim',
        help='MuJoCo tabletop benchmark: record demonstrations, evaluate policies',
        description='MuJoCo tabletop benchmark (reach, push, pick) with scripted experts.',
    )
    sim_commands = parser.add_subparsers(dest='sim_command', metavar='SIM_COMMAND')
    sim_commands.required = True
    _add_record_parser(sim_commands)
    _add_eval_parser(sim_commands)
    # More sub-commands register here: a sub-parser with set_defaults(_sim_run=<function>).
    return parser


def _run_record(args: argparse.Namespace) -> int:
    from vla_pruned_ros.model.checkpoint import CheckpointError
    from vla_pruned_ros.sim.record import RecordError, record_episodes

    if args.policy is None and (args.expert_share != 0.0 or args.execute_steps != 4):
        print('vla-pruned-ros sim record: error: --execute-steps and --expert-share drive a '
              'policy: give --policy MODEL_DIR', file=sys.stderr)
        return 2
    if args.excursions and args.policy is not None:
        print('vla-pruned-ros sim record: error: --excursions detours the expert; a --policy '
              'recording is driven by the policy', file=sys.stderr)
        return 2
    if args.nudges and (args.policy is not None or args.excursions):
        print('vla-pruned-ros sim record: error: --nudges drives the expert on its own; not '
              'with --policy or --excursions', file=sys.stderr)
        return 2
    if args.excursion_steps != 3 and not args.excursions:
        print('vla-pruned-ros sim record: error: --excursion-steps needs --excursions P',
              file=sys.stderr)
        return 2
    try:
        driver = None
        if args.excursions:
            from vla_pruned_ros.sim.excursion import ExcursionDriver

            driver = ExcursionDriver(args.excursions, args.excursion_steps, seed=args.seed)
        if args.nudges:
            from vla_pruned_ros.sim.nudge import ObjectNudgeDriver

            driver = ObjectNudgeDriver(args.nudges, seed=args.seed)
        if args.policy is not None:
            from vla_pruned_ros.policy import Policy
            from vla_pruned_ros.sim.dagger import PolicyDriver

            driver = PolicyDriver(Policy.from_pretrained(args.policy, device='cpu'),
                                  args.execute_steps, args.expert_share, seed=args.seed)
        summary = record_episodes(
            args.out,
            families=args.families,
            episodes=args.episodes,
            split=args.split,
            seed=args.seed,
            storage=args.storage,
            image_size=tuple(args.image_size),
            control_dt=args.control_dt,
            points_stride=args.points_stride,
            translation_noise=args.noise,
            yaw_noise=args.yaw_noise,
            compress=args.compress,
            progress=True,
            driver=driver,
            expert_tolerance=args.expert_tolerance,
        )
    except (CheckpointError, RecordError, ValueError) as err:
        print(f'vla-pruned-ros sim record: error: {err}', file=sys.stderr)
        return 2
    steps = sum(e['steps'] for e in summary.episodes)
    detours = sum(e.get('detour_steps', 0) for e in summary.episodes)
    detour_share = f' ({detours / max(steps, 1):.0%} of them detours)' if args.excursions else ''
    if args.nudges:
        nudges = sum(e.get('nudges', 0) for e in summary.episodes)
        detour_share = f' ({nudges} object nudges)'
    print(
        f'wrote {summary.path} ({summary.storage}, {summary.size_bytes / 1e6:.1f} MB): '
        f'{len(summary.episodes)} episodes, {steps} steps{detour_share}, '
        f'{"policy" if args.policy else "expert"} success {summary.success_rate:.0%}'
    )
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from vla_pruned_ros.model.checkpoint import CheckpointError
    from vla_pruned_ros.policy import Policy
    from vla_pruned_ros.pruning.spec import expand_all
    from vla_pruned_ros.sim.evaluate import EvalError, evaluate, markdown_table, write_report

    model = args.model or str(DEFAULT_MODEL_DIR)
    pruners = expand_all(args.pruners)
    try:
        policy = Policy.from_pretrained(model, device=args.device, dtype=args.dtype)
        report = evaluate(
            policy, pruners, args.budgets, families=args.families, episodes=args.episodes,
            split=args.split, seed=args.seed, execute_steps=args.execute_steps,
            points_stride=args.points_stride, model_name=model, progress=True,
        )
    except (CheckpointError, EvalError, ValueError) as err:
        print(f'vla-pruned-ros sim eval: error: {err}', file=sys.stderr)
        return 2
    paths = write_report(report, args.out)
    print(markdown_table(report))
    print('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``sim`` sub-command and return its exit status."""
    return int(args._sim_run(args))
