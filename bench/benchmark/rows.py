"""The benchmark's rows: every rate of one model x attention, and the printed table."""
import statistics

from bench.benchmark.gluon_steps import measure_data_pipeline, trial_epoch_fn, trial_stepper
from bench.benchmark.original import original_epoch_fn, original_stepper
from bench.benchmark.timing import (TRAIN_FLOPS_PER_MAC, epoch_data, interleaved_rates,
                                    median_ratio)
from bench.trial.recipe import Recipe, TrialSpec


def benchmark(models, attentions, images, labels, ctx, batch_size, batches, workers,
              baseline=True, rounds=5, epoch_images=0, epoch_rounds=2, kernels_compare=False,
              precision='float32'):
    """One row of numbers per model x attention; every training rate from one interleaved run.

    With a baseline and epoch_images > 0, each row also times whole epochs (a training
    pass over epoch_images images and an evaluation over a fifth as many, CIFAR-10's
    proportions) of the trial and of the original script. With kernels_compare, each
    attention is also trained with MXNet's operators instead of the fused kernels.
    """
    from models import model_stats

    recipe = Recipe(batch_size=batch_size, precision=precision)
    specs = {(m, a): TrialSpec(m, a, seed=0, recipe=recipe)
             for m in models for a in attentions}
    steppers = {}
    for key, spec in specs.items():
        steppers[('trial',) + key] = trial_stepper(spec, images, labels, ctx)
        if kernels_compare and key[1] != 'none':
            steppers[('mxnet-ops',) + key] = trial_stepper(spec, images, labels, ctx,
                                                           mxnet_operators=True)
        if baseline:
            steppers[('original',) + key] = original_stepper(spec, images, labels, ctx, workers)
    per_round = max(1, batches // rounds)
    rates = interleaved_rates(steppers, batch_size, rounds, per_round)
    rows = []
    for (model, attention), spec in specs.items():
        trial_rates = rates[('trial', model, attention)]
        trial = statistics.median(trial_rates)
        row = {'model': model, 'attention': attention, 'trial_img_s': trial,
               'trial_img_s_range': [min(trial_rates), max(trial_rates)],
               'data_img_s': measure_data_pipeline(images, labels, ctx, batch_size, batches * 4),
               'gflop_s': trial * TRAIN_FLOPS_PER_MAC * model_stats(model, attention).macs / 1e9}
        row['data_over_trial'] = row['data_img_s'] / trial
        if ('trial', model, 'none') in rates:
            row['vs_vanilla'] = median_ratio(trial_rates, rates[('trial', model, 'none')])
            if ('mxnet-ops', model, attention) in rates:
                plain = rates[('mxnet-ops', model, attention)]
                row['mxnet_ops_img_s'] = statistics.median(plain)
                row['mxnet_ops_vs_vanilla'] = median_ratio(plain, rates[('trial', model, 'none')])
        if baseline:
            original_rates = rates[('original', model, attention)]
            row['original_img_s'] = statistics.median(original_rates)
            row['trial_over_original'] = median_ratio(trial_rates, original_rates)
        if baseline and epoch_images:
            train, test = epoch_data(images, labels, epoch_images)
            seconds = epoch_seconds(spec, train, test, ctx, workers, epoch_rounds)
            row.update(epoch_train_images=len(train[0]), epoch_test_images=len(test[0]),
                       trial_epoch_s=statistics.median(seconds['trial']),
                       original_epoch_s=statistics.median(seconds['original']),
                       epoch_speedup=median_ratio(seconds['original'], seconds['trial']))
        rows.append(row)
    return rows


def epoch_seconds(spec, train, test, ctx, workers, rounds, kinds=('trial', 'original')):
    """Seconds of whole epochs (training pass and evaluation), the trial's against the
    original script's, timed in alternating rounds after one untimed warm-up epoch each.
    Returns {kind: [seconds in round 1, round 2, ...]}."""
    makers = {'trial': lambda: trial_epoch_fn(spec, train, test, ctx),
              'original': lambda: original_epoch_fn(spec, train, test, ctx, workers)}
    epochs = {kind: makers[kind]() for kind in kinds}
    # Timed as steppers of one "image" a call, their rates are epochs per second.
    rates = interleaved_rates(epochs, batch_size=1, rounds=rounds, batches_per_round=1,
                              warmup=1)
    return {kind: [1.0 / rate for rate in per_round] for kind, per_round in rates.items()}


def format_rows(rows):
    def number(value, fmt, suffix=''):
        return '-' if value is None else format(value, fmt) + suffix
    header = (f"{'model':<20} {'attention':<9} {'data img/s':>11} {'trial img/s':>12} "
              f"{'vs vanilla':>10} {'GFLOP/s':>8} {'original img/s':>15} {'data/trial':>11} {'trial/original':>15}")
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(
            f"{row['model']:<20} {row['attention']:<9} {number(row['data_img_s'], '.0f'):>11} "
            f"{number(row['trial_img_s'], '.1f'):>12} "
            f"{number(row.get('vs_vanilla') and 100 * row['vs_vanilla'], '.0f', '%'):>10} "
            f"{number(row.get('gflop_s'), '.1f'):>8} "
            f"{number(row.get('original_img_s'), '.1f'):>15} "
            f"{number(row['data_over_trial'], '.1f', 'x'):>11} "
            f"{number(row.get('trial_over_original'), '.2f', 'x'):>15}")
    epochs = [row for row in rows if 'trial_epoch_s' in row]
    if epochs:
        lines += ['', f"whole epoch ({epochs[0]['epoch_train_images']} training + "
                      f"{epochs[0]['epoch_test_images']} test images; training pass and evaluation, "
                      f"median seconds; speed-up: median of per-round ratios):",
                  f"{'model':<20} {'attention':<9} {'trial s':>8} {'original s':>11} {'speed-up':>9}"]
        lines += [f"{row['model']:<20} {row['attention']:<9} {row['trial_epoch_s']:>8.2f} "
                  f"{row['original_epoch_s']:>11.2f} {row['epoch_speedup']:>8.2f}x"
                  for row in epochs]
    return '\n'.join(lines)


def attention_overhead_summary(rows):
    """Each attention's speed as a share of its model's vanilla speed (target: >= 90%)."""
    vanilla = {r['model']: r['trial_img_s'] for r in rows if r['attention'] == 'none'}
    parts = [f"{r['model']} {r['attention']} "
             f"{100 * r.get('vs_vanilla', r['trial_img_s'] / vanilla[r['model']]):.0f}%"
             for r in rows if r['attention'] != 'none' and r['model'] in vanilla]
    return 'speed against vanilla: ' + (', '.join(parts) if parts else 'no vanilla row')


def kernel_summary(rows):
    """Where the attention kernels came from, and what they gain where that was measured."""
    from models.kernels import kernel_status
    loaded, detail = kernel_status()
    line = (f'fused attention kernels: {detail}' if loaded
            else f"fused attention kernels not used ({detail}): MXNet's operators")
    compared = [r for r in rows if 'mxnet_ops_vs_vanilla' in r]
    if compared:
        line += ('\nwith MXNet\'s operators instead: ' + ', '.join(
            f"{r['model']} {r['attention']} {100 * r['mxnet_ops_vs_vanilla']:.0f}%"
            for r in compared) + ' of vanilla')
    return line
