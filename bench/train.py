"""`python -m bench.train`: train one cell of the table by hand, with a progress bar.

The options are the original `train_cifar10.py`'s, and its README's command line
runs as written:
    python -m bench.train --mode hybrid --num-gpus 1 -j 8 --batch-size 128 \
        --num-epochs 186 --lr 0.003 --lr-decay 0.1 --lr-decay-epoch 81,122 --wd 0.0001 \
        --optimizer adam --random-crop --model cifar_resnet20_v1 --eca
(on a machine without a GPU, with --num-gpus 0). The attention is `--attention NAME`
or one of `--se`, `--eca`, `--gct`.

It trains the trial the sweep trains for that cell, with the same number of CPU
threads: the sweep file's resources.cpus_per_trial (sweep.yaml, or --config), as the
sweep's trial had. Results depend on the thread count and the hardware (float sums in
another order), so other threads (--threads) give other last digits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from bench.arguments import (
    tool_json,
    whole_number,
    writable_folder_problem,
    writable_json_problem,
)
from bench.errors import BadArguments, BenchError, ProblemsFound, report
from bench.fileio import write_json_atomic
from bench.gpu import apply_tf32, check_local_gpus
from bench.trial.data import DEMO_FOLDER, Dataset, load_cifar10, load_demo_digits
from bench.trial.loop import DeviceError, missing_framework
from bench.trial.recipe import (
    BACKENDS,
    MAX_SEED,
    OPTIMIZERS,
    PRECISIONS,
    Recipe,
    RecipeError,
    TrialSpec,
    precision_problem,
)
from bench.trial.threads import available_cpus, pin_cpus, trial_threads
from models.names import UnknownNameError, parse_model_name
from models.registry import attention_names, attention_spec, parse_attention_name

if TYPE_CHECKING:
    import mxnet as mx
    import torch


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    defaults = Recipe()
    parser = argparse.ArgumentParser(
        prog='python -m bench.train',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--model', default='cifar_resnet20_v1')
    attention = parser.add_mutually_exclusive_group()
    attention.add_argument(
        '--attention', default='none', help=', '.join(attention_names()) + ' (any case)'
    )
    # The original README wrote the attention as a flag of its own (`--eca`): every
    # built-in attention but vanilla has one (an installed package's takes --attention
    # NAME, so its name can never clash with an option).
    for name in [n for n in attention_names()[1:] if attention_spec(n).origin == 'built-in']:
        attention.add_argument(
            f'--{name}',
            dest='attention',
            action='store_const',
            const=name,
            help=f'same as --attention {name}',
        )
    parser.add_argument('--seed', type=whole_number(0, MAX_SEED), default=0)
    parser.add_argument('--num-epochs', type=whole_number(1), default=defaults.epochs)
    parser.add_argument('--batch-size', type=whole_number(1), default=defaults.batch_size)
    parser.add_argument('--optimizer', choices=OPTIMIZERS, default=defaults.optimizer)
    parser.add_argument('--lr', type=float, default=defaults.lr)
    parser.add_argument('--lr-decay', type=float, default=defaults.lr_decay)
    parser.add_argument(
        '--lr-decay-epoch',
        default=','.join(map(str, defaults.lr_decay_epochs)),
        help='comma-separated epochs at which lr is multiplied by --lr-decay',
    )
    parser.add_argument('--momentum', type=float, default=defaults.momentum)
    parser.add_argument('--wd', type=float, default=defaults.wd)
    crop = parser.add_mutually_exclusive_group()
    crop.add_argument(
        '--random-crop',
        dest='random_crop',
        action='store_true',
        default=defaults.random_crop,
        help='4-pixel padding and a random 32x32 window (the recipe default)',
    )
    crop.add_argument('--no-random-crop', dest='random_crop', action='store_false')
    parser.add_argument('--no-random-flip', action='store_true')
    parser.add_argument(
        '--backend',
        choices=BACKENDS,
        default=defaults.backend,
        help='gluon: MXNet Gluon, the reference; torch: PyTorch, the same '
        'networks and semantics (GPUs MXNet cannot use)',
    )
    parser.add_argument(
        '--mode',
        choices=('hybrid', 'imperative'),
        default='hybrid',
        help='gluon: hybridize the network or not',
    )
    parser.add_argument('--compile', action='store_true', help='torch: torch.compile the network')
    parser.add_argument(
        '--no-tf32',
        dest='tf32',
        action='store_false',
        help="strict float32 on GPUs that have TF32 (Ampere and newer); TF32 on is MXNet's default",
    )
    parser.add_argument(
        '--precision',
        choices=PRECISIONS,
        default=defaults.precision,
        help='amp_float16 (both backends) or amp_bfloat16 (torch): mixed precision, GPUs only',
    )
    parser.add_argument(
        '--num-gpus',
        type=whole_number(0, 64),
        default=None,
        help='GPUs to split each batch over (default: all visible; 0: CPU). '
        '--batch-size counts the images of all of them together; the '
        "original's counted per GPU (the same with one GPU)",
    )
    parser.add_argument(
        '--threads',
        type=whole_number(1, 4096),
        default=None,
        help="CPU threads (default: the sweep file's cpus_per_trial, the "
        "sweep's trial's count; else OMP_NUM_THREADS, else every core)",
    )
    parser.add_argument(
        '--config',
        default=None,
        help='the sweep file whose cpus_per_trial sets the default --threads '
        '(default: sweep.yaml in this folder, where there is one)',
    )
    parser.add_argument(
        '-j',
        '--num-data-workers',
        type=int,
        default=None,
        metavar='N',
        help="accepted for the original's command line and ignored: "
        'augmentation runs on the device, with no loader workers',
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        '--data-root', default=None, help='folder with CIFAR-10 (default: MXNet data folder)'
    )
    data.add_argument(
        '--demo-data',
        action='store_true',
        help="scikit-learn's digits as CIFAR-format files (no download)",
    )
    parser.add_argument('--no-download', action='store_true')
    parser.add_argument(
        '--checkpoint-dir', default=None, help='checkpoint every epoch here and resume from it'
    )
    parser.add_argument('--output', default=None, help='write the metrics history as JSON here')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser, parser.parse_args(argv)


# The flag that sets each recipe option: a recipe's problem names what the user typed.
RECIPE_FLAGS = {
    'epochs': '--num-epochs',
    'batch_size': '--batch-size',
    'optimizer': '--optimizer',
    'lr': '--lr',
    'lr_decay': '--lr-decay',
    'lr_decay_epochs': '--lr-decay-epoch',
    'momentum': '--momentum',
    'wd': '--wd',
    'random_crop': '--random-crop',
    'random_flip': '--no-random-flip',
    'hybridize': '--mode',
    'precision': '--precision',
    'backend': '--backend',
    'compile': '--compile',
    'tf32': '--no-tf32',
}
_RECIPE_OPTION = re.compile(r'recipe\.(\w+)(?:\.(\d+))?: ')


def in_flags(error: RecipeError) -> BadArguments:
    """The recipe's problems, each naming the flag that set the option."""
    lines = []
    for line in str(error).splitlines():
        match = _RECIPE_OPTION.match(line)
        if match:
            item = f' (value {int(match[2]) + 1})' if match[2] else ''
            line = f'{RECIPE_FLAGS.get(match[1], match[1])}{item}: {line[match.end() :]}'
        lines.append(line.removeprefix('recipe: '))
    return BadArguments('\n'.join(lines))


def spec_from_args(args: argparse.Namespace) -> TrialSpec:
    """The trial's spec; BadArguments names an option out of the recipe's rules by its
    flag."""
    try:
        decay_epochs = [int(e) for e in str(args.lr_decay_epoch).split(',') if e.strip()]
    except ValueError:
        raise BadArguments(
            f'--lr-decay-epoch takes comma-separated whole numbers, got {args.lr_decay_epoch!r}'
        ) from None
    # The backends' own switches, named as typed (the recipe names its options).
    if args.mode == 'imperative' and args.backend != 'gluon':
        raise BadArguments(
            '--mode imperative runs the gluon network without hybridizing it; the torch '
            'backend has no such mode (it runs eagerly, or compiled with --compile)'
        )
    precision = precision_problem(args.precision, args.backend, flags=True)
    if precision:
        raise BadArguments(precision)
    if args.compile and args.backend != 'torch':
        raise BadArguments(
            '--compile is an option of --backend torch (torch.compile); the gluon backend '
            'compiles its graph unless --mode imperative'
        )
    try:
        recipe = Recipe.from_dict(
            dict(
                epochs=args.num_epochs,
                batch_size=args.batch_size,
                optimizer=args.optimizer,
                lr=args.lr,
                lr_decay=args.lr_decay,
                lr_decay_epochs=decay_epochs,
                momentum=args.momentum,
                wd=args.wd,
                random_crop=args.random_crop,
                random_flip=not args.no_random_flip,
                hybridize=args.mode == 'hybrid',
                precision=args.precision,
                backend=args.backend,
                compile=args.compile,
                tf32=args.tf32,
            )
        )
    except RecipeError as error:
        raise in_flags(error) from None
    try:
        parse_model_name(args.model)
        attention = parse_attention_name(args.attention)
    except UnknownNameError as error:  # its message lists the valid names
        raise BadArguments(str(error)) from None
    spec = attention_spec(attention)
    problem = spec.backend_problem(args.backend)
    if problem:
        raise BadArguments(f'{problem}; use --backend ' + ' or --backend '.join(spec.backends))
    return TrialSpec(model=args.model, attention=attention, seed=args.seed, recipe=recipe)


def thread_count(args: argparse.Namespace) -> tuple[int, str]:
    """(threads, where the number comes from): --threads; else the sweep file's
    cpus_per_trial, the count the sweep's trial of this cell had; else OMP_NUM_THREADS;
    else every core."""
    if args.threads:
        return args.threads, '--threads'
    config = args.config or DEFAULT_CONFIG
    # A sweep file named on the command line must be one; sweep.yaml is used where it is.
    if args.config is not None or os.path.isfile(config):
        from bench.sweep.config import ConfigError, load_config

        try:
            cpus = load_config(config).config.resources.cpus_per_trial
            return trial_threads(cpus), (
                f"{config}'s cpus_per_trial, as the sweep's trial of the cell"
            )
        except ConfigError as error:
            if args.config is not None:
                raise BadArguments(f'--config {error}') from None
    if os.environ.get('OMP_NUM_THREADS', '').isdigit():
        return int(os.environ['OMP_NUM_THREADS']), 'OMP_NUM_THREADS'
    return available_cpus(), 'every core'


def output_problems(args: argparse.Namespace) -> list[str]:
    """Why the outputs asked for cannot be written: found before training, not after."""
    problems = []
    if args.checkpoint_dir:
        problems.append(writable_folder_problem(args.checkpoint_dir, '--checkpoint-dir'))
    if args.output:
        problems.append(writable_json_problem(args.output, '--output', TOOL))
    return [p for p in problems if p]


def load_data(args: argparse.Namespace) -> Dataset:
    if args.demo_data:
        return load_demo_digits(DEMO_FOLDER)
    return load_cifar10(args.data_root, download=not args.no_download)


def _backend_trainer(
    spec: TrialSpec, num_gpus: int | None
) -> tuple[Callable[..., list[dict]], torch.device | list[mx.Context], str]:
    """(train function, devices, their description) of the spec's backend; RuntimeError or
    ValueError says why the devices asked for cannot be used."""
    # The cards first, before the framework touches one (a Hopper card would otherwise
    # end in MXNet's raw "no kernel image is available").
    fusion = check_local_gpus(num_gpus, spec.recipe.backend)
    if fusion and fusion != 'on':
        print(f"MXNet's operator fusion {fusion}")
    if spec.recipe.backend == 'gluon':
        apply_tf32(spec.recipe)  # read when CUDA starts: before MXNet is imported
    if spec.recipe.backend == 'torch':
        from bench.trial.pytorch import trainer

        device = trainer.device_for(num_gpus)
        trainer.check_precision(spec.recipe, device)

        def train_torch(
            spec: TrialSpec,
            data: Dataset,
            checkpoint_dir: str | Path | None,
            device: torch.device,
            **callbacks: Callable[..., None],
        ) -> list[dict]:
            return trainer.train(
                spec, data, checkpoint_dir=checkpoint_dir, device=device, **callbacks
            )

        return train_torch, device, trainer.describe(device)
    from bench.trial.gluon.devices import describe, trial_contexts
    from bench.trial.gluon.trainer import check_precision, train

    try:
        contexts = trial_contexts(num_gpus)
    except DeviceError as error:
        raise DeviceError(f'{error}; ask for fewer, or --num-gpus 0 to train on the CPU') from None
    check_precision(spec.recipe, contexts)

    def train_gluon(
        spec: TrialSpec,
        data: Dataset,
        checkpoint_dir: str | Path | None,
        contexts: list[mx.Context],
        **callbacks: Callable[..., None],
    ) -> list[dict]:
        return train(spec, data, checkpoint_dir=checkpoint_dir, contexts=contexts, **callbacks)

    return train_gluon, contexts, describe(contexts)


TOOL = 'bench.train'
DEFAULT_CONFIG = 'sweep.yaml'


def main(argv: list[str] | None = None) -> int:
    """The command: its exit code. Every failure a user can act on is a BenchError,
    reported here and nowhere else: one found before training exits as argparse does
    for a bad flag (SystemExit), one during training is the exit code."""
    _, args = parse_args(argv)
    prepared = None
    try:
        prepared = prepare(args)
        return train_prepared(args, prepared)
    except BenchError as error:
        code = report(error)
        if prepared is None:
            raise SystemExit(code) from None
        return code
    except KeyboardInterrupt:
        kept = (
            f'every finished epoch is checkpointed in {args.checkpoint_dir}; run the same '
            'command to resume'
            if args.checkpoint_dir
            else 'nothing was kept (--checkpoint-dir keeps every finished epoch)'
        )
        print(f'\ninterrupted: {kept}', file=sys.stderr)
        return INTERRUPTED_EXIT


# The shell's code for a process ended by Ctrl-C (128 + SIGINT), as run_sweep.py's.
INTERRUPTED_EXIT = 130


class Prepared(NamedTuple):
    """A trial ready to train: its spec, data, train function, devices and where it runs."""

    spec: TrialSpec
    data: Dataset
    train: Callable[..., list[dict]]
    devices: Any
    where: str
    threads: str


def prepare(args: argparse.Namespace) -> Prepared:
    """Everything the command line asks for, checked before any training: BenchError for
    what is wrong."""
    threads, threads_from = thread_count(args)
    pin_cpus(threads)  # before anything imports MXNet
    spec = spec_from_args(args)
    problems = output_problems(args)
    if problems:
        raise ProblemsFound(problems)
    missing = missing_framework(spec.recipe.backend)
    if missing:
        raise BadArguments(missing)
    # Devices and precision before the data: loading may mean a 170 MB download.
    train, devices, where = _backend_trainer(spec, args.num_gpus)
    data = load_data(args)
    return Prepared(spec, data, train, devices, where, f'{threads} CPU thread(s) ({threads_from})')


def train_prepared(args: argparse.Namespace, prepared: Prepared) -> int:
    """Train the prepared trial with a progress bar; write --output; the exit code."""
    spec, data, train, devices, where, threads = prepared
    from tqdm import tqdm

    print(
        f'{spec.name} on {where} ({spec.recipe.backend}), data: {data.identity.label} '
        f'({data.identity.train_images} train / {data.identity.test_images} test images), '
        f'{threads}'
    )
    bar = None if args.quiet else tqdm(unit='batch', leave=False, dynamic_ncols=True)

    def on_batch(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(1)

    trained = []

    def on_epoch(metrics: dict[str, Any], _checkpoint: Path | None) -> None:
        if bar is not None:
            bar.reset()
        if not trained and metrics['epoch'] > 1:
            print(
                f'resumed from epoch {metrics["epoch"] - 1}, checkpointed in {args.checkpoint_dir}'
            )
        trained.append(metrics['epoch'])
        print(
            f'[epoch {metrics["epoch"]:>3}/{spec.recipe.epochs}] lr {metrics["lr"]:.2e}  '
            f'train loss {metrics["train_loss"]:.4f} acc {metrics["train_acc"]:.4f}  '
            f'val loss {metrics["val_loss"]:.4f} acc {metrics["val_acc"]:.4f}  '
            f'{metrics["images_per_second"]:.0f} img/s  {metrics["epoch_seconds"]:.1f}s',
            flush=True,
        )

    try:
        history = train(
            spec, data, args.checkpoint_dir, devices, on_epoch=on_epoch, on_batch=on_batch
        )
    finally:
        if bar is not None:
            bar.close()
    if history and not trained:
        print(
            f'nothing trained: the checkpoint in {args.checkpoint_dir} already holds all '
            f'{len(history)} epochs; its last epoch:'
        )
    if args.output:
        write_json_atomic(
            args.output,
            tool_json(
                TOOL,
                {'spec': spec.to_dict(), 'data': data.identity.to_dict(), 'history': history},
            ),
        )
    if history:
        print(json.dumps({k: history[-1][k] for k in ('train_loss', 'val_loss', 'val_acc')}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
