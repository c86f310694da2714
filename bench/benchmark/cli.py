"""The command line of `python -m bench.benchmark`, and the child processes it starts.

MXNet fixes its thread count when it is imported, so --threads-compare times
other thread counts in fresh processes of this same command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from bench.arguments import (
    network_name_problems,
    tool_json,
    whole_number,
    writable_json_problem,
)
from bench.benchmark import __doc__ as BENCHMARK_HELP
from bench.benchmark.timing import (
    batches_per_round,
    cpu_peak_gflops,
    epoch_data,
    synthetic_images,
)
from bench.errors import INTERRUPTED, BenchError, ProblemsFound, report
from bench.fileio import write_json_atomic
from bench.gpu import check_local_gpus
from bench.trial.host_memory import keep_freed_memory_for_reuse
from bench.trial.loop import missing_framework
from bench.trial.recipe import (
    BACKENDS,
    MAX_BATCH_SIZE,
    PRECISIONS,
    Recipe,
    TrialSpec,
    precision_problem,
)
from bench.trial.threads import KEEP_DEFAULT_ENV, use_cpus
from models.names import VARIANTS
from models.registry import registered

if TYPE_CHECKING:
    import mxnet as mx
    import numpy as np


TOOL = 'bench.benchmark'


def main(argv: list[str] | None = None) -> int:
    """The command: its exit code. Every failure a user can act on is a BenchError,
    reported here and nowhere else; all are found before anything is measured, so they
    end the command as argparse ends it for a bad flag (SystemExit)."""
    threads = use_cpus()  # before anything imports MXNet
    args = parse_args(argv)
    # Recorded with the rows: the command that measured them.
    args.command = ' '.join(
        ['python -m bench.benchmark', *(sys.argv[1:] if argv is None else argv)]
    )
    try:
        return run(args, threads)
    except BenchError as error:
        raise SystemExit(report(error)) from None
    except KeyboardInterrupt:
        if not os.environ.get(CHILD_ENV):  # the parent says it, once
            written = f' ({args.json} not written)' if args.json else ''
            print(f'\ninterrupted: nothing measured is kept{written}', file=sys.stderr)
        return INTERRUPTED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from models import MODELS, attention_names

    parser = argparse.ArgumentParser(
        prog='python -m bench.benchmark',
        description=BENCHMARK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--models',
        nargs='+',
        default=['cifar_resnet20_v1'],
        metavar='MODEL',
        help=(
            f'default: cifar_resnet20_v1; any of {", ".join(MODELS)}, any cifar_resnet<6n+2>'
            f'_v1/_v2, or a declared variant ({", ".join(f"_{v}" for v in VARIANTS)})'
        ),
    )
    parser.add_argument(
        '--attentions',
        nargs='+',
        metavar='NAME',
        help=f'default: every one the backends have ({", ".join(attention_names())})',
    )
    parser.add_argument('--batch-size', type=whole_number(1, MAX_BATCH_SIZE), default=128)
    parser.add_argument(
        '--batches',
        type=whole_number(1, 100_000),
        default=20,
        help='timed batches per model x attention (and per pipeline)',
    )
    parser.add_argument(
        '--rounds',
        type=whole_number(1, 1000),
        default=5,
        help='the timed batches are split into this many alternating rounds',
    )
    parser.add_argument(
        '--images',
        type=whole_number(1, 1_000_000),
        default=4096,
        help='synthetic training images held in memory (at least a batch)',
    )
    parser.add_argument(
        '--workers',
        type=whole_number(0, 1024),
        default=os.cpu_count(),
        help='DataLoader workers of the original pipeline',
    )
    parser.add_argument(
        '--no-original', action='store_true', help='skip the original DataLoader pipeline'
    )
    parser.add_argument(
        '--epoch-images',
        type=whole_number(0, 1_000_000),
        default=2560,
        help='training images of the whole-epoch comparison with the original '
        'script (its evaluation takes a fifth as many); 0 skips it',
    )
    parser.add_argument(
        '--epoch-rounds',
        type=whole_number(1, 100),
        default=2,
        help='timed epochs of each kind in the whole-epoch comparison',
    )
    parser.add_argument(
        '--num-gpus', type=whole_number(0, 64), default=None, help='0 forces the CPU'
    )
    parser.add_argument(
        '--threads-compare',
        action='store_true',
        help="also train vanilla in a child process with MXNet's default "
        'threads, to show the gain of using every core',
    )
    parser.add_argument(
        '--kernels-compare',
        action='store_true',
        help="also train each attention with MXNet's operators instead of "
        'the fused CPU kernels, to show what they gain',
    )
    parser.add_argument(
        '--backend',
        choices=BACKENDS + ('both',),
        default='gluon',
        help='gluon (MXNet, the reference), torch (PyTorch), or both in one '
        'interleaved run (their rows side by side, torch/gluon ratios; the torch rows '
        'in a process of their own)',
    )
    parser.add_argument('--compile', action='store_true', help='torch: torch.compile the networks')
    parser.add_argument(
        '--precision',
        choices=PRECISIONS,
        default='float32',
        help='amp_float16 / amp_bfloat16 (torch): mixed precision, GPUs '
        "only. MXNet's AMP changes its operators for the whole process: "
        'compare precisions in two runs',
    )
    parser.add_argument('--json', default=None, help='write the rows as JSON here')
    # A child process of --threads-compare: time whole epochs of one kind only.
    parser.add_argument('--epoch-child', choices=('trial', 'original'), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, threads: int) -> int:
    """Measure what the command line asks for; BenchError for what stops it."""
    problems = argument_problems(args)
    if problems:
        raise ProblemsFound(problems)

    from bench.benchmark.rows import (
        attention_overhead_summary,
        benchmark,
        format_rows,
        kernel_summary,
        reference_summary,
    )

    backends = BACKENDS if args.backend == 'both' else (args.backend,)
    missing = [problem for problem in map(missing_framework, backends) if problem]
    if missing:
        raise ProblemsFound(missing)
    ctx = torch_device = None
    where = []
    for backend in backends:
        check_local_gpus(min(args.num_gpus, 1) if args.num_gpus is not None else None, backend)
    if 'gluon' in backends:
        from bench.trial.gluon.devices import describe, trial_contexts
        from bench.trial.gluon.trainer import check_precision

        ctx = trial_contexts(min(args.num_gpus, 1) if args.num_gpus is not None else None)[0]
        check_precision(Recipe.from_dict({'precision': args.precision}), [ctx])
        where.append(f'gluon on {describe([ctx])}')
    if 'torch' in backends:
        from bench.trial.pytorch import trainer as torch_trainer

        torch_device = torch_trainer.device_for(args.num_gpus)
        torch_trainer.check_precision(
            Recipe.from_dict({'precision': args.precision, 'backend': 'torch'}), torch_device
        )
        where.append(f'torch on {torch_trainer.describe(torch_device)}')
    on_cpu = (ctx is None or ctx.device_type == 'cpu') and (
        torch_device is None or torch_device.type == 'cpu'
    )
    # Every row (Gluon, torch, the reference, the original) under the allocator setting
    # that CPU trials run with.
    malloc = 'glibc thresholds fixed' if on_cpu and keep_freed_memory_for_reuse() else 'default'
    images, labels = synthetic_images(args.images)
    if args.epoch_child:
        return _epoch_child(args, ctx, images, labels)
    settings = {
        'devices': where,
        'batch_size': args.batch_size,
        'timed_batches': batches_per_round(args.batches, args.rounds) * args.rounds,
        'rounds': args.rounds,
        'precision': args.precision,
        'torch_step': ('compiled' if args.compile else 'eager') if torch_device else None,
        'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
        'dataloader_workers': args.workers,
        'malloc': malloc,
        # Each framework's own OpenMP threads (bench.benchmark.child says why).
        'processes': 'gluon and torch each in its own' if len(backends) > 1 else 'one',
    }
    print(header_line(settings), flush=True)
    few = too_few_batches(settings)
    if few:
        print(few, flush=True)
    rows = benchmark(
        args.models,
        args.attentions,
        images,
        labels,
        ctx,
        args.batch_size,
        args.batches,
        args.workers,
        baseline=not args.no_original and ctx is not None,
        rounds=args.rounds,
        epoch_images=min(args.epoch_images, args.images),
        epoch_rounds=args.epoch_rounds,
        kernels_compare=args.kernels_compare,
        precision=args.precision,
        backends=backends,
        torch_device=torch_device,
        compile=args.compile,
    )
    print(format_rows(rows), flush=True)
    print(attention_overhead_summary(rows))
    against_reference = reference_summary(rows)
    if against_reference:
        print(against_reference)
    if ctx is not None:
        print(kernel_summary(rows))
    torch_kernels = next((row['torch_kernels'] for row in rows if row.get('torch_kernels')), None)
    if torch_kernels:
        print(torch_kernels)
    peak = cpu_peak_gflops() if on_cpu else None
    if peak:
        best = max(r['gflop_s'] for r in rows)
        print(
            f'compute: best {best:.1f} GFLOP/s of an estimated FP32 peak of {peak:.0f} GFLOP/s '
            f'for these cores ({100 * best / peak:.1f}%; training FLOPs = 6 x forward MACs)'
        )
    if args.threads_compare and ctx is not None:
        # Two fresh processes, since MXNet fixes its thread count at import.
        rates = [
            vanilla_rate_in_child(args.models[0], args.batch_size, args.batches, t)
            for t in (None, threads, None, threads)
        ]
        default_rate = statistics.mean(rates[0::2])
        ours = statistics.mean(rates[1::2])
        print(
            f'threads: {args.models[0]} vanilla at MXNet default threads '
            f'{default_rate:.1f} img/s; with OMP_NUM_THREADS={threads} {ours:.1f} img/s '
            f'({ours / default_rate:.2f}x; mean of two child processes each)'
        )
        if args.epoch_images:
            print(epochs_as_run_summary(args, threads), flush=True)
    if args.json:
        write_json_atomic(
            args.json,
            tool_json(TOOL, {'command': args.command, 'settings': settings, 'rows': rows}),
        )
    return 0


def header_line(settings: dict[str, Any]) -> str:
    """What every number below it was measured under."""
    torch_step = f', torch step {settings["torch_step"]}' if settings['torch_step'] else ''
    threads = settings['omp_num_threads'] or 'unset'
    processes = f', {settings["processes"]} process' if settings['processes'] != 'one' else ''
    return (
        f'device: {"; ".join(settings["devices"])}, batch {settings["batch_size"]}, '
        f'{settings["precision"]}{torch_step}, {settings["timed_batches"]} timed batches '
        f'in {settings["rounds"]} rounds, OMP_NUM_THREADS={threads}, '
        f'{settings["dataloader_workers"]} DataLoader workers, malloc {settings["malloc"]}'
        f'{processes}'
    )


# Below these, a ratio measures the machine's noise more than the steps (docs/backends.md
# tables: 40 batches in 8 rounds, and still a few points of spread between runs).
FEW_TIMED_BATCHES, FEW_ROUNDS = 16, 4


def too_few_batches(settings: dict[str, Any]) -> str | None:
    """A warning where the timed batches are too few for their ratios to mean much."""
    if settings['timed_batches'] >= FEW_TIMED_BATCHES and settings['rounds'] >= FEW_ROUNDS:
        return None
    return (
        f'note: {settings["timed_batches"]} timed batch(es) in {settings["rounds"]} '
        'round(s) check that everything runs; their ratios are mostly noise. For numbers '
        'to compare, time 40 batches or more in 8 rounds (--batches 40 --rounds 8).'
    )


def argument_problems(args: argparse.Namespace) -> list[str]:
    """What keeps the benchmark from running or from saving what it measured, found before
    any measurement: unknown names, too few images for a batch, an unwritable --json."""
    problems = []
    backends = BACKENDS if args.backend == 'both' else (args.backend,)
    if args.attentions is None:
        args.attentions = [
            name
            for name, spec in registered().items()
            if not any(spec.backend_problem(backend) for backend in backends)
        ]
    problems += network_name_problems(args.models, args.attentions, backends, backend_flag=True)
    problems += [
        problem
        for backend in backends
        if (problem := precision_problem(args.precision, backend, flags=True))
    ]
    if args.compile and args.backend == 'gluon':
        # Else the table would be Gluon's alone, read as a compiled run.
        problems.append(
            '--compile compiles the torch backend (torch.compile) and --backend gluon '
            'measures only Gluon, whose graph hybridize already compiles; choose --backend '
            'torch or both, or leave out --compile'
        )
    for flag, what in (
        ('threads_compare', "MXNet's default thread count against the trial's"),
        ('kernels_compare', "the fused kernels against MXNet's operators"),
    ):
        if getattr(args, flag) and args.backend == 'torch':
            problems.append(
                f'--{flag.replace("_", "-")} compares Gluon runs ({what}) and --backend '
                'torch runs none; choose --backend gluon or both, or leave it out'
            )
    if args.images < args.batch_size:
        problems.append(
            f'--images {args.images} holds no batch of --batch-size '
            f'{args.batch_size}; give at least as many images as a batch'
        )
    if args.json and not args.epoch_child:
        problems.append(writable_json_problem(args.json, '--json', TOOL))
    return [p for p in problems if p]


def _epoch_child(
    args: argparse.Namespace, ctx: mx.Context | None, images: np.ndarray, labels: np.ndarray
) -> int:
    from bench.benchmark.rows import epoch_seconds

    spec = TrialSpec(args.models[0], 'none', seed=0, recipe=Recipe(batch_size=args.batch_size))
    train, test = epoch_data(images, labels, min(args.epoch_images, args.images))
    seconds = epoch_seconds(
        spec, train, test, ctx, args.workers, args.epoch_rounds, kinds=(args.epoch_child,)
    )
    write_json_atomic(
        args.json, tool_json(TOOL, {'epoch_seconds': statistics.median(seconds[args.epoch_child])})
    )
    return 0


# Set in the benchmark's own child processes (_run_child).
CHILD_ENV = 'BENCH_BENCHMARK_CHILD'


def _run_child(arguments: list[str], threads: int | None) -> dict[str, Any]:
    """Run this benchmark in a fresh process with OMP_NUM_THREADS=threads (None: MXNet's
    default, as a script that never set it ran); returns what the child wrote as JSON."""
    env = dict(os.environ, **{CHILD_ENV: '1'})
    env.pop('OMP_NUM_THREADS', None)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    else:
        env[KEEP_DEFAULT_ENV] = '1'
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, 'out.json')
        subprocess.run(
            [sys.executable, '-m', 'bench.benchmark', *arguments, '--json', out],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(out) as handle:
            return json.load(handle)


def epochs_as_run_summary(args: argparse.Namespace, threads: int | None) -> str:
    """A trial's whole epoch against the original script's as it ran: MXNet's default
    threads, DataLoader workers. Alternating child processes, two of each kind."""
    common = [
        '--models',
        args.models[0],
        '--batch-size',
        str(args.batch_size),
        '--images',
        str(args.images),
        '--epoch-images',
        str(args.epoch_images),
        '--epoch-rounds',
        str(args.epoch_rounds),
        '--workers',
        str(args.workers),
    ]
    seconds = {'trial': [], 'original': []}
    for _ in range(2):
        for kind, kind_threads in (('original', None), ('trial', threads)):
            child = _run_child(common + ['--epoch-child', kind], kind_threads)
            seconds[kind].append(child['epoch_seconds'])
    trial, original = statistics.median(seconds['trial']), statistics.median(seconds['original'])
    return (
        f'whole epoch against the original script as it ran ({args.models[0]} vanilla; '
        f"MXNet's default threads, {args.workers} DataLoader workers): trial {trial:.2f} s "
        f'with OMP_NUM_THREADS={threads}, original {original:.2f} s, {original / trial:.2f}x '
        f'faster (medians of two child processes each)'
    )


def vanilla_rate_in_child(model: str, batch_size: int, batches: int, threads: int | None) -> float:
    """Vanilla trial img/s in a fresh process, with OMP_NUM_THREADS=threads (None: unset)."""
    written = _run_child(
        [
            '--models',
            model,
            '--attentions',
            'none',
            '--no-original',
            '--batch-size',
            str(batch_size),
            '--batches',
            str(batches),
        ],
        threads,
    )
    return written['rows'][0]['trial_img_s']
