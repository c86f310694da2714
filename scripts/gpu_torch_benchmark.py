#!/usr/bin/env python
"""What the torch backend does on one GPU, in at most about 10 minutes, offline.

    python scripts/gpu_torch_benchmark.py --out gpu-benchmark.json

Measures, on synthetic CIFAR-sized data held on the card:
1. training images/s of each attention on ResNet-20 and ResNet-56, in float32 and
   bfloat16 (autocast), eager; then the same with torch.compile while the time
   budget lasts (compiling costs tens of seconds per network; what did not fit is
   listed as skipped);
2. trials per hour with 1, 2, 4 and 8 trials sharing the card: that many plain
   processes (no Ray needed) each training ResNet-20 + SE, started together;
3. from these, the projected wall time of the full table (4 models x 4 attentions,
   186 epochs of 50,000 training images, evaluation on 10,000 each epoch).
Prints a table and writes everything as JSON (--out). `--device cpu` with small
settings checks the script itself where there is no GPU (the tests do that).
"""

import argparse
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The full table's work per trial: the recipe's epochs over CIFAR-10, the last partial
# batch dropped, plus evaluation (a forward pass, about a third of a training step).
EPOCHS, TRAIN_IMAGES, TEST_IMAGES, BATCH = 186, 50_000, 10_000, 128
# Names this script in its JSON output (--out), the mark of a file it may replace.
TOOL = 'scripts/gpu_torch_benchmark.py'
TRAIN_IMAGES_PER_TRIAL = EPOCHS * (TRAIN_IMAGES // BATCH) * BATCH
EVAL_COST_IN_TRAIN_IMAGES = EPOCHS * TEST_IMAGES / 3
TABLE = [
    (m, a)
    for m in ('cifar_resnet20_v1', 'cifar_resnet20_v2', 'cifar_resnet56_v1', 'cifar_resnet56_v2')
    for a in ('none', 'se', 'eca', 'gct')
]


def _seconds(least, most):
    """An argparse type: seconds from `least` to `most` ('more than 0' where `least` is
    None)."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected seconds, got {text!r}') from None
        low = f'{least:g}' if least is not None else 'more than 0'
        if not (value >= least if least is not None else value > 0) or not value <= most:
            raise argparse.ArgumentTypeError(f'expected {low} to {most:g} seconds, got {text}')
        return value

    return parse


def parse_args(argv=None):
    from bench.arguments import whole_number

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--device', default='cuda', help='cuda (default), cuda:N or cpu')
    parser.add_argument('--models', nargs='+', default=['cifar_resnet20_v1', 'cifar_resnet56_v1'])
    parser.add_argument('--attentions', nargs='+', default=['none', 'se', 'eca', 'gct'])
    parser.add_argument('--precisions', nargs='+', default=['float32', 'amp_bfloat16'])
    parser.add_argument('--batch-size', type=whole_number(1), default=BATCH)
    parser.add_argument(
        '--steps',
        type=whole_number(1, 100_000),
        default=60,
        help='timed steps per configuration',
    )
    parser.add_argument(
        '--sharing',
        nargs='+',
        type=whole_number(1, 64),
        default=[1, 2, 4, 8],
        help='trials sharing the card at once',
    )
    parser.add_argument(
        '--sharing-seconds',
        type=_seconds(None, 600),
        default=25.0,
        help='how long each sharing configuration trains, timed',
    )
    parser.add_argument('--no-compile', action='store_true')
    parser.add_argument(
        '--budget-s',
        type=_seconds(0, 24 * 3600),
        default=540.0,
        help='stop starting compiled measurements after this many seconds',
    )
    parser.add_argument('--out', default=None, help='write the results as JSON here')
    return parser.parse_args(argv)


def argument_problems(args):
    """What would stop the run or lose its numbers, found before any device time is spent
    (a machine lent for minutes): unknown names, a precision or device that does not
    exist, an --out that cannot be written or is not this script's JSON."""
    try:
        from bench.trial.recipe import MAX_BATCH_SIZE, PRECISIONS
    except ImportError as error:  # a bare machine: the trial's recipe needs pydantic
        return [f'{error}: install it (pip install {error.name}) or carry its wheel']
    from bench.arguments import network_name_problems, writable_json_problem

    problems = []
    if args.batch_size > MAX_BATCH_SIZE:
        problems.append(f'--batch-size {args.batch_size}: at most {MAX_BATCH_SIZE}')
    if args.device != 'cpu' and not re.fullmatch(r'cuda(:\d+)?', args.device):
        problems.append(f'--device {args.device}: give cuda, cuda:N or cpu')
    problems += network_name_problems(args.models, args.attentions, ['torch'], False)
    for precision in args.precisions:
        if precision not in PRECISIONS:
            problems.append(f'--precisions {precision}: give any of {", ".join(PRECISIONS)}')
    if args.device == 'cpu' and 'float32' not in args.precisions:
        problems.append(
            f'--precisions {" ".join(args.precisions)} with --device cpu: mixed precision '
            'runs on a GPU only, so nothing would be measured; add float32'
        )
    if args.out:
        problems.append(writable_json_problem(args.out, '--out', TOOL))
    return [p for p in problems if p]


def _spec(model, attention, precision, compile_network, batch_size):
    from bench.trial.recipe import Recipe, TrialSpec

    return TrialSpec(
        model,
        attention,
        seed=0,
        recipe=Recipe(
            batch_size=batch_size, backend='torch', precision=precision, compile=compile_network
        ),
    )


def training_rate(model, attention, precision, compile_network, device, batch_size, steps):
    """(images/s, seconds to build and warm up, what ran) of one configuration's training
    steps; what ran says whether compiling held and kept its CUDA graphs."""
    from bench.benchmark.timing import synthetic_images
    from bench.benchmark.torch_steps import trial_stepper

    images, labels = synthetic_images(max(2048, 4 * batch_size))
    started = time.perf_counter()
    step = trial_stepper(
        _spec(model, attention, precision, compile_network, batch_size), images, labels, device
    )
    for _ in range(2):
        step()
    step.settle()
    ready = time.perf_counter()
    for _ in range(steps):
        step()
    step.settle()
    rate = steps * batch_size / (time.perf_counter() - ready)
    return rate, ready - started, step.describe()['kernels']


def _shared_trial(device, batch_size, seconds, barrier, results):
    """One of several processes training at once on the same card."""
    from bench.benchmark.timing import synthetic_images
    from bench.benchmark.torch_steps import trial_stepper

    images, labels = synthetic_images(2048)
    step = trial_stepper(
        _spec('cifar_resnet20_v1', 'se', 'float32', False, batch_size), images, labels, device
    )
    for _ in range(3):
        step()
    step.settle()
    barrier.wait()
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        done += 1
    step.settle()
    results.put(done * batch_size / (time.perf_counter() - started))


def sharing_rates(count, device, batch_size, seconds):
    """Total images/s of `count` processes training together on one card."""
    context = multiprocessing.get_context('spawn')
    barrier, results = context.Barrier(count), context.Queue()
    workers = [
        context.Process(target=_shared_trial, args=(device, batch_size, seconds, barrier, results))
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=300 + 2 * seconds) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def trial_images():
    """A full-recipe trial's work in training images (evaluation included)."""
    return TRAIN_IMAGES_PER_TRIAL + EVAL_COST_IN_TRAIN_IMAGES


def projected_table_hours(rates, sharing, shared_model='cifar_resnet20_v1'):
    """Wall hours of the 16-trial table: each trial at its measured float32 eager rate (the
    ResNet-20 rate for v2 and the ResNet-56 rate for its v2, whose cost is the same), scaled
    by the best sharing gain measured (total rate of n trials / rate of one)."""
    gain = max(sharing.values()) / sharing[1] if sharing.get(1) else 1.0
    total = 0.0
    for model, attention in TABLE:
        measured = model.replace('_v2', '_v1')
        rate = rates.get((measured, attention, 'float32', False))
        if rate is None:
            return None
        total += trial_images() / rate
    return total / gain / 3600, gain


def main(argv=None):
    args = parse_args(argv)
    problems = argument_problems(args)
    if problems:
        for problem in problems:
            print(f'error: {problem}', file=sys.stderr)
        return 2
    os.environ.setdefault('OMP_NUM_THREADS', str(os.cpu_count() or 1))
    import torch

    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            print(
                'error: no CUDA device visible to PyTorch '
                f'{torch.__version__}; use --device cpu to check the script',
                file=sys.stderr,
            )
            return 2
        if (device.index or 0) >= torch.cuda.device_count():
            print(
                f'error: --device {args.device}: PyTorch sees {torch.cuda.device_count()} '
                'CUDA device(s), numbered from 0',
                file=sys.stderr,
            )
            return 2
        card = torch.cuda.get_device_name(device)
        capability = '.'.join(map(str, torch.cuda.get_device_capability(device)))
    else:
        card, capability = 'cpu', None
    precisions = [p for p in args.precisions if p == 'float32' or device.type == 'cuda']
    where = (
        f'{card} (compute capability {capability}), PyTorch {torch.__version__}, CUDA '
        f'{torch.version.cuda}'
        if device.type == 'cuda'
        else f'cpu, PyTorch {torch.__version__}'
    )
    print(f'{where}, batch {args.batch_size}, {args.steps} timed steps', flush=True)
    left_out = [p for p in args.precisions if p not in precisions]
    if left_out:
        print(f'left out on the cpu: {", ".join(left_out)} (mixed precision runs on GPUs only)')
    rates, rows, skipped = {}, [], []
    for compile_network in [False] if args.no_compile else [False, True]:
        for model in args.models:
            for attention in args.attentions:
                for precision in precisions:
                    if compile_network and time.perf_counter() - started > args.budget_s:
                        skipped.append(f'{model} {attention} {precision} compiled')
                        continue
                    rate, warmup, ran = training_rate(
                        model,
                        attention,
                        precision,
                        compile_network,
                        device,
                        args.batch_size,
                        args.steps,
                    )
                    rates[(model, attention, precision, compile_network)] = rate
                    rows.append(
                        {
                            'model': model,
                            'attention': attention,
                            'precision': precision,
                            'compile': compile_network,
                            'img_s': rate,
                            'build_seconds': warmup,
                            'ran': ran,
                        }
                    )
                    print(
                        f'{model:<18} {attention:<5} {precision:<13} '
                        f'{"compiled" if compile_network else "eager":<8} {rate:>9.0f} img/s '
                        f'(built in {warmup:.0f} s; {ran})',
                        flush=True,
                    )
    for row in rows:
        vanilla = rates.get((row['model'], 'none', row['precision'], row['compile']))
        row['vs_vanilla'] = row['img_s'] / vanilla if vanilla else None
    sharing = {}
    # On the CPU the trials share its cores: said so, since the numbers differ in kind.
    shared = 'the CPU' if args.device == 'cpu' else 'the card'
    for count in args.sharing:
        sharing[count] = sharing_rates(count, args.device, args.batch_size, args.sharing_seconds)
        per_hour = sharing[count] * 3600 / trial_images()
        print(
            f'{count} trial(s) sharing {shared}: {sharing[count]:.0f} img/s in total, '
            f'{per_hour:.2f} full-recipe ResNet-20 SE trials per hour',
            flush=True,
        )
    projection = projected_table_hours(rates, sharing)
    if projection:
        hours, gain = projection
        print(
            f'projected full table (16 trials, float32 eager, {gain:.2f}x from sharing): '
            f'{hours:.1f} hours on this {shared.removeprefix("the ")}',
            flush=True,
        )
    if skipped:
        print(f'skipped for time: {len(skipped)} compiled configurations', flush=True)
    result = {
        'card': card,
        'compute_capability': capability,
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'batch_size': args.batch_size,
        'rows': rows,
        'sharing_img_s': sharing,
        'trial_images': trial_images(),
        'projected_table_hours': projection and projection[0],
        'skipped': skipped,
        'seconds': time.perf_counter() - started,
        'command': ' '.join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
    }
    if args.out:
        from bench.arguments import tool_json
        from bench.fileio import write_json_atomic

        write_json_atomic(args.out, tool_json(TOOL, result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
