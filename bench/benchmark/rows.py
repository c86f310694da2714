"""The benchmark's rows: every rate of one model x attention on each backend, and the
printed table."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.benchmark.child import StepperProcess
from bench.benchmark.timing import (
    TRAIN_FLOPS_PER_MAC,
    batches_per_round,
    epoch_data,
    interleaved_rates,
    median_ratio,
)
from bench.trial.recipe import Recipe, TrialSpec
from models.architecture import network_counts

if TYPE_CHECKING:
    import mxnet as mx
    import numpy as np
    import torch

# The steppers' kind per backend: 'trial' is the Gluon trial (the reference).
BACKEND_KINDS = {'gluon': 'trial', 'torch': 'torch'}


def benchmark(
    models: Sequence[str],
    attentions: Sequence[str],
    images: np.ndarray,
    labels: np.ndarray,
    ctx: mx.Context | None,
    batch_size: int,
    batches: int,
    workers: int,
    baseline: bool = True,
    rounds: int = 5,
    epoch_images: int = 0,
    epoch_rounds: int = 2,
    kernels_compare: bool = False,
    precision: str = 'float32',
    backends: Sequence[str] = ('gluon',),
    torch_device: torch.device | None = None,
    compile: bool = False,
) -> list[dict[str, Any]]:
    """One row of numbers per backend x model x attention; every training rate from one
    interleaved run, so rows of the two backends are measured alike.

    With a baseline and epoch_images > 0, each Gluon row also times whole epochs (a
    training pass over epoch_images images and an evaluation over a fifth as many,
    CIFAR-10's proportions) of the trial and of the original script. With
    kernels_compare, each attention is also trained with MXNet's operators instead of
    the fused kernels. `ctx` is the MXNet context, `torch_device` PyTorch's.
    """
    gluon = 'gluon' in backends
    specs = {}
    for backend in backends:
        recipe = Recipe(
            batch_size=batch_size,
            precision=precision,
            backend=backend,
            compile=compile and backend == 'torch',
        )
        specs.update(
            {
                (backend, m, a): TrialSpec(m, a, seed=0, recipe=recipe)
                for m in models
                for a in attentions
            }
        )
    steppers, torch_process = _steppers(
        specs, images, labels, ctx, torch_device, workers, baseline, kernels_compare
    )
    with torch_process or contextlib.nullcontext():
        rates = interleaved_rates(steppers, batch_size, rounds, batches_per_round(batches, rounds))
        data_rates = {
            backend: _data_rate(
                backend, images, labels, ctx, torch_device, batch_size, batches * 4, torch_process
            )
            for backend in backends
        }
        # Asked where the torch rows ran: which kernels a process used is its own state.
        torch_kernels = None
        if torch_process is not None:
            torch_kernels = torch_process.call(torch_kernel_summary, torch_device)
        elif 'torch' in backends:
            torch_kernels = torch_kernel_summary(torch_device)
    rows = []
    for (backend, model, attention), spec in specs.items():
        kind = BACKEND_KINDS[backend]
        trial_rates = rates[(kind, model, attention)]
        trial = statistics.median(trial_rates)
        row = {
            'backend': backend,
            'model': model,
            'attention': attention,
            'trial_img_s': trial,
            'trial_img_s_range': [min(trial_rates), max(trial_rates)],
            'data_img_s': data_rates[backend],
            'gflop_s': trial * TRAIN_FLOPS_PER_MAC * network_counts(model, attention).macs / 1e9,
        }
        row['data_over_trial'] = row['data_img_s'] / trial
        if (kind, model, 'none') in rates:
            row['vs_vanilla'] = median_ratio(trial_rates, rates[(kind, model, 'none')])
            if ('floor', model, attention) in rates and backend == 'gluon':
                row['extension_floor_vs_vanilla'] = median_ratio(
                    rates[('floor', model, attention)], trial_rates
                )
            if ('mxnet-ops', model, attention) in rates and backend == 'gluon':
                plain = rates[('mxnet-ops', model, attention)]
                row['mxnet_ops_img_s'] = statistics.median(plain)
                row['mxnet_ops_vs_vanilla'] = median_ratio(plain, rates[('trial', model, 'none')])
        if backend == 'torch':
            row['torch_kernels'] = torch_kernels
            reference = rates[('torch-reference', model, attention)]
            row['reference_img_s'] = statistics.median(reference)
            row['vs_reference'] = median_ratio(trial_rates, reference)
        if backend == 'torch' and gluon:
            row['vs_gluon'] = median_ratio(trial_rates, rates[('trial', model, attention)])
            row['reference_vs_gluon'] = median_ratio(reference, rates[('trial', model, attention)])
        if baseline and backend == 'gluon':
            original_rates = rates[('original', model, attention)]
            row['original_img_s'] = statistics.median(original_rates)
            row['trial_over_original'] = median_ratio(trial_rates, original_rates)
        if baseline and epoch_images and backend == 'gluon':
            train, test = epoch_data(images, labels, epoch_images)
            seconds = epoch_seconds(spec, train, test, ctx, workers, epoch_rounds)
            row.update(
                epoch_train_images=len(train[0]),
                epoch_test_images=len(test[0]),
                trial_epoch_s=statistics.median(seconds['trial']),
                original_epoch_s=statistics.median(seconds['original']),
                epoch_speedup=median_ratio(seconds['original'], seconds['trial']),
            )
        rows.append(row)
    return rows


def _steppers(
    specs: Mapping[tuple[str, str, str], TrialSpec],
    images: np.ndarray,
    labels: np.ndarray,
    ctx: mx.Context | None,
    torch_device: torch.device | None,
    workers: int,
    baseline: bool,
    kernels_compare: bool,
) -> tuple[dict[tuple[str, str, str], Any], StepperProcess | None]:
    """Every stepper the rows time, keyed (kind, model, attention) in the specs' order,
    and the process that holds the torch ones where Gluon is measured too (see
    bench.benchmark.child)."""
    torch_specs = {key[1:]: spec for key, spec in specs.items() if key[0] == 'torch'}
    torch_steppers: Mapping[tuple[str, str, str], Any] = {}
    torch_process = None
    if torch_specs:
        from bench.benchmark import torch_steps

        if len(torch_specs) == len(specs):
            torch_steppers = torch_steps.steppers(torch_specs, images, labels, torch_device)
        else:
            arguments = (torch_specs, images, labels, torch_device)
            torch_process = StepperProcess('the torch steppers', torch_steps.steppers, *arguments)
            torch_steppers = {name: torch_process.stepper(name) for name in torch_process.names}
    steppers = {}
    try:
        for (backend, model, attention), spec in specs.items():
            key = (model, attention)
            if backend == 'torch':
                for kind in ('torch', 'torch-reference'):
                    steppers[(kind,) + key] = torch_steppers[(kind,) + key]
                continue
            from bench.benchmark import gluon_steps, original

            steppers[('trial',) + key] = gluon_steps.trial_stepper(spec, images, labels, ctx)
            if kernels_compare and attention != 'none':
                steppers[('mxnet-ops',) + key] = gluon_steps.trial_stepper(
                    spec, images, labels, ctx, mxnet_operators=True
                )
            if kernels_compare and attention == 'none' and _fused_kernels_run(ctx):
                steppers[('floor',) + key] = gluon_steps.extension_floor_stepper(
                    spec, images, labels, ctx
                )
            if baseline:
                steppers[('original',) + key] = original.original_stepper(
                    spec, images, labels, ctx, workers
                )
    except BaseException:
        if torch_process is not None:
            torch_process.close(wait=False)
        raise
    return steppers, torch_process


def _fused_kernels_run(ctx: mx.Context) -> bool:
    from models.kernels import fused_kernels_for

    return fused_kernels_for([ctx.device_type])


def _data_rate(
    backend: str,
    images: np.ndarray,
    labels: np.ndarray,
    ctx: mx.Context | None,
    torch_device: torch.device | None,
    batch_size: int,
    batches: int,
    torch_process: StepperProcess | None = None,
) -> float:
    if backend == 'torch':
        from bench.benchmark.torch_steps import measure_data_pipeline

        arguments = (images, labels, torch_device, batch_size, batches)
        if torch_process is not None:
            return torch_process.call(measure_data_pipeline, *arguments)
        return measure_data_pipeline(*arguments)
    from bench.benchmark.gluon_steps import measure_data_pipeline

    return measure_data_pipeline(images, labels, ctx, batch_size, batches)


def epoch_seconds(
    spec: TrialSpec,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    ctx: mx.Context,
    workers: int,
    rounds: int,
    kinds: Sequence[str] = ('trial', 'original'),
) -> dict[str, list[float]]:
    """Seconds of whole epochs (training pass and evaluation), the trial's against the
    original script's, timed in alternating rounds after one untimed warm-up epoch each.
    Returns {kind: [seconds in round 1, round 2, ...]}."""
    from bench.benchmark.gluon_steps import trial_epoch_fn
    from bench.benchmark.original import original_epoch_fn

    makers = {
        'trial': lambda: trial_epoch_fn(spec, train, test, ctx),
        'original': lambda: original_epoch_fn(spec, train, test, ctx, workers),
    }
    epochs = {kind: makers[kind]() for kind in kinds}
    # Timed as steppers of one "image" a call, their rates are epochs per second.
    rates = interleaved_rates(epochs, batch_size=1, rounds=rounds, batches_per_round=1, warmup=1)
    return {kind: [1.0 / rate for rate in per_round] for kind, per_round in rates.items()}


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    def number(value: float | None, fmt: str, suffix: str = '') -> str:
        return '-' if value is None else format(value, fmt) + suffix

    header = (
        f'{"backend":<7} {"model":<20} {"attention":<9} {"data img/s":>11} '
        f'{"trial img/s":>12} {"vs vanilla":>10} {"GFLOP/s":>8} {"original img/s":>15} '
        f'{"data/trial":>11} {"trial/original":>15} {"vs gluon":>9} '
        f'{"torch ref img/s":>16} {"vs torch ref":>13}'
    )
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(
            f'{row.get("backend", "gluon"):<7} {row["model"]:<20} {row["attention"]:<9} '
            f'{number(row["data_img_s"], ".0f"):>11} '
            f'{number(row["trial_img_s"], ".1f"):>12} '
            f'{number(row.get("vs_vanilla") and 100 * row["vs_vanilla"], ".0f", "%"):>10} '
            f'{number(row.get("gflop_s"), ".1f"):>8} '
            f'{number(row.get("original_img_s"), ".1f"):>15} '
            f'{number(row["data_over_trial"], ".1f", "x"):>11} '
            f'{number(row.get("trial_over_original"), ".2f", "x"):>15} '
            f'{number(row.get("vs_gluon"), ".2f", "x"):>9} '
            f'{number(row.get("reference_img_s"), ".1f"):>16} '
            f'{number(row.get("vs_reference"), ".2f", "x"):>13}'
        )
    epochs = [row for row in rows if 'trial_epoch_s' in row]
    if epochs:
        lines += [
            '',
            f'whole epoch ({epochs[0]["epoch_train_images"]} training + '
            f'{epochs[0]["epoch_test_images"]} test images; training pass and '
            f'evaluation, median seconds; speed-up: median of per-round ratios):',
            f'{"model":<20} {"attention":<9} {"trial s":>8} {"original s":>11} {"speed-up":>9}',
        ]
        lines += [
            f'{row["model"]:<20} {row["attention"]:<9} {row["trial_epoch_s"]:>8.2f} '
            f'{row["original_epoch_s"]:>11.2f} {row["epoch_speedup"]:>8.2f}x'
            for row in epochs
        ]
    return '\n'.join(lines)


def reference_summary(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The torch backend against idiomatic PyTorch (and that against Gluon), where both ran:
    the overhead of MXNet's semantics in PyTorch (goal: >= 0.95x)."""
    compared = [r for r in rows if 'vs_reference' in r]
    if not compared:
        return None
    line = (
        'torch backend against idiomatic PyTorch (nn.BatchNorm2d, torch.optim.Adam, '
        'attentions differentiated by autograd): '
        + ', '.join(f'{r["model"]} {r["attention"]} {r["vs_reference"]:.2f}x' for r in compared)
    )
    against_gluon = [r for r in compared if 'reference_vs_gluon' in r]
    if against_gluon:
        line += '\nidiomatic PyTorch against Gluon: ' + ', '.join(
            f'{r["model"]} {r["attention"]} {r["reference_vs_gluon"]:.2f}x' for r in against_gluon
        )
    return line


def attention_overhead_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Each attention's speed as a share of its model's vanilla speed (target: >= 90%)."""

    def key(row: Mapping[str, Any]) -> tuple[str, str]:
        return row.get('backend', 'gluon'), row['model']

    vanilla = {key(r): r['trial_img_s'] for r in rows if r['attention'] == 'none'}
    several = len({r.get('backend', 'gluon') for r in rows}) > 1
    parts = [
        (f'{r.get("backend", "gluon")} ' if several else '') + f'{r["model"]} '
        f'{r["attention"]} '
        f'{100 * r.get("vs_vanilla", r["trial_img_s"] / vanilla[key(r)]):.0f}%'
        for r in rows
        if r['attention'] != 'none' and key(r) in vanilla
    ]
    if parts:
        return 'speed against vanilla: ' + ', '.join(parts)
    if vanilla:
        return 'speed against vanilla: no attention measured beside vanilla'
    return 'speed against vanilla: vanilla not measured (add none to --attentions)'


def torch_kernel_summary(device: torch.device) -> str | None:
    """Where the torch attentions' fused CPU kernels came from, where a torch row took
    them (None where none did: a GPU, compiled rows, vanilla only)."""
    from models.kernels.torch_ops import kernels_used, torch_kernel_isa, torch_kernel_status

    if device.type != 'cpu':
        return None
    loaded, detail = torch_kernel_status()
    if not loaded:
        return f'fused torch attention kernels not used ({detail}): PyTorch operators'
    if kernels_used():
        return f'fused torch attention kernels ({torch_kernel_isa()}): {detail}'
    return None


def kernel_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Where the attention kernels came from, and what they gain where that was measured."""
    from models.kernels import kernel_isa, kernel_status

    loaded, detail = kernel_status()
    line = (
        f'fused attention kernels ({kernel_isa()}): {detail}'
        if loaded
        else f"fused attention kernels not used ({detail}): MXNet's operators"
    )
    compared = [r for r in rows if 'mxnet_ops_vs_vanilla' in r]
    if compared:
        line += (
            "\nwith MXNet's operators instead: "
            + ', '.join(
                f'{r["model"]} {r["attention"]} {100 * r["mxnet_ops_vs_vanilla"]:.0f}%'
                for r in compared
            )
            + ' of vanilla'
        )
    floors = [r for r in rows if 'extension_floor_vs_vanilla' in r]
    if floors:
        line += (
            '\nextension floor (vanilla with a copy through the extension interface '
            'where each attention sits; no fused attention can beat it): '
            + ', '.join(
                f'{r["model"]} {100 * r["extension_floor_vs_vanilla"]:.0f}%' for r in floors
            )
            + ' of vanilla'
        )
    return line
