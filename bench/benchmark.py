"""`python -m bench.benchmark`: how fast a trial trains, and where the time goes.

For each model x attention on the current device it prints:
- data:     images/s of the on-device data pipeline alone (gather, crop, flip, normalise);
- trial:    images/s of the whole training step (data + forward + backward + update);
- original: images/s of the same model trained through a Gluon DataLoader with
            per-image transforms in worker processes, as the original script did;
- ratios:   data / trial (headroom of the pipeline), trial / original, and each
            attention's speed as a share of the vanilla network's;
- epochs:   seconds of a whole epoch (training pass and evaluation) of a trial
            against the original script's loop.
All are measured in this one process on the same data, the training rates in
alternating rounds, each ratio the median of per-round ratios, so that a slow
spell of the machine hits all alike. --kernels-compare adds the attentions
built with MXNet's operators instead of the fused kernels; --threads-compare
adds child processes at MXNet's default thread count.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np

from .recipe import PRECISIONS
from .threads import use_cpus


def synthetic_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, size=count).astype(np.int32))


def measure_data_pipeline(images, labels, ctx, batch_size, batches):
    """Images/s of DeviceImages batches alone, waiting for each to be computed."""
    from .augment import DeviceImages
    from .batches import epoch_plan
    device = DeviceImages(images, labels, ctx)
    rng = np.random.default_rng(0)
    plan = epoch_plan(rng, len(images), batch_size)
    device.batch(*plan[0])[0].wait_to_read()
    started = time.perf_counter()
    done = 0
    while done < batches:
        for step in plan[:batches - done]:
            device.batch(*step)[0].wait_to_read()
            done += 1
    return done * batch_size / (time.perf_counter() - started)


def interleaved_rates(steppers, batch_size, rounds, batches_per_round, warmup=3):
    """Images/s of each step function in each round, timed in alternating rounds.

    The steppers take turns (round 1: a, b, c; round 2: a, b, c; ...), so a slow
    spell of a shared machine lands on all of them alike and their ratios hold.
    A stepper with background work (a DataLoader's prefetching) has a `settle()`
    that waits for it; its rounds end only when that work is done, so the work is
    counted in its own time, not in that of the stepper timed next. Each of its
    rounds then starts and ends with the prefetch buffer full: it is timed for
    exactly the batches it trained on.
    Returns {name: [images/s in round 1, round 2, ...]}.
    """
    def settle(step):
        if hasattr(step, 'settle'):
            step.settle()

    for step in steppers.values():
        for _ in range(warmup):        # graph building, allocation, oneDNN primitives
            step()
        settle(step)
    rates = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            started = time.perf_counter()
            for _ in range(batches_per_round):
                step()
            settle(step)
            rates[name].append(batches_per_round * batch_size /
                               (time.perf_counter() - started))
    return rates


def median_ratio(numerator_rates, denominator_rates):
    """Median over rounds of the ratio of two steppers' rates in the same round.

    Neighbours in time share the machine's state, so per-round ratios cancel
    most of a shared machine's drift, which a ratio of medians would keep.
    """
    return statistics.median(a / b for a, b in zip(numerator_rates, denominator_rates))


def _forever(make_iterable):
    while True:
        yield from make_iterable()


class _EndlessLoader:
    """Batches of a DataLoader pass after pass, from its one worker pool (as the original
    script used one loader for all epochs), with a way to wait for its prefetching."""

    def __init__(self, loader):
        self.loader = loader
        self.batches = None

    def next(self):
        if self.batches is None:
            # What `iter(loader)` wraps; kept at hand so that settle() can see its
            # prefetched batches (MXNet 1.9's _MultiWorkerIter keeps them in _data_buffer).
            self.batches = self.loader._prefetch_iter()
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = None
            return self.next()

    def settle(self):
        """Wait until the workers have finished every batch they were asked to prefetch."""
        for pending in list(getattr(self.batches, '_data_buffer', {}).values()):
            pending.wait()


def _train_step_fn(spec, ctx):
    """A fresh network for `spec` and a function doing one waited-for training step on (x, y)."""
    from mxnet import autograd

    from .trainer import build_parts
    net, trainer, loss_fn = build_parts(spec, [ctx])

    def train_step(x, y):
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        loss.wait_to_read()
    return train_step


def trial_stepper(spec, images, labels, ctx, mxnet_operators=False):
    """One step of the trainer fed by the on-device pipeline, as the trial runs it.

    mxnet_operators: build the network's graph with MXNet's operators instead of
    the fused attention kernels (models/kernels), to measure what they gain.
    """
    from models.kernels import mxnet_operators_only

    from .augment import DeviceImages
    from .batches import epoch_plan
    train_step = _train_step_fn(spec, ctx)
    device = DeviceImages(images, labels, ctx)
    rng = np.random.default_rng(0)
    plans = _forever(lambda: epoch_plan(rng, len(images), spec.recipe.batch_size))

    def step():
        train_step(*device.batch(*next(plans)))
    # The first call builds the hybridized graph, which later calls reuse.
    with mxnet_operators_only() if mxnet_operators else contextlib.nullcontext():
        step()
    return step


def original_loader(images, labels, batch_size, workers):
    """The original script's input path: per-image transforms in DataLoader workers."""
    import mxnet as mx
    from gluoncv.data import transforms as gcv_transforms
    from mxnet import gluon
    from mxnet.gluon.data.vision import transforms

    from .data import CIFAR_MEAN, CIFAR_STD
    transform = transforms.Compose([
        gcv_transforms.RandomCrop(32, pad=4),
        transforms.RandomFlipLeftRight(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    # NDArray images in HWC layout, what Gluon's CIFAR10 dataset hands the transforms.
    dataset = gluon.data.ArrayDataset(
        mx.nd.array(images.transpose(0, 2, 3, 1), dtype='uint8'), labels)
    return gluon.data.DataLoader(dataset.transform_first(transform), batch_size=batch_size,
                                 shuffle=True, last_batch='discard', num_workers=workers)


def original_stepper(spec, images, labels, ctx, workers):
    """One step of the same model fed through the original input path."""
    train_step = _train_step_fn(spec, ctx)
    batches = _EndlessLoader(original_loader(images, labels, spec.recipe.batch_size, workers))

    def step():
        x, y = batches.next()
        train_step(x.as_in_context(ctx), y.as_in_context(ctx))
    step.settle = batches.settle
    return step


def original_test_loader(images, labels, batch_size, workers):
    """The original script's evaluation input: ToTensor and Normalize per image in workers."""
    import mxnet as mx
    from mxnet import gluon
    from mxnet.gluon.data.vision import transforms

    from .data import CIFAR_MEAN, CIFAR_STD
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = gluon.data.ArrayDataset(
        mx.nd.array(images.transpose(0, 2, 3, 1), dtype='uint8'), labels)
    return gluon.data.DataLoader(dataset.transform_first(transform), batch_size=batch_size,
                                 shuffle=False, num_workers=workers)


def original_epoch_fn(spec, train, test, ctx, workers):
    """One epoch as the original script ran it: train from the DataLoader, summing the loss
    and updating an accuracy metric every batch, then evaluate on the test loader."""
    import mxnet as mx
    from mxnet import autograd
    from .trainer import build_parts
    net, trainer, loss_fn = build_parts(spec, [ctx])
    train_loader = original_loader(*train, spec.recipe.batch_size, workers)
    test_loader = original_test_loader(*test, spec.recipe.batch_size, workers)

    def epoch():
        train_metric, test_metric = mx.metric.Accuracy(), mx.metric.Accuracy()
        train_loss = 0.0
        for x, y in train_loader:
            x, y = x.as_in_context(ctx), y.as_in_context(ctx)
            with autograd.record():
                output = net(x)
                loss = loss_fn(output, y)
            loss.backward()
            trainer.step(x.shape[0])
            train_loss += loss.sum().asscalar()
            train_metric.update(y, output)
        for x, y in test_loader:
            test_metric.update(y.as_in_context(ctx), net(x.as_in_context(ctx)))
        return train_loss, train_metric.get()[1], test_metric.get()[1]
    return epoch


def trial_epoch_fn(spec, train, test, ctx):
    """One epoch as a trial runs it: bench.trainer's own training pass and evaluation."""
    from .augment import DeviceImages
    from .batches import epoch_plan
    from .trainer import build_parts, evaluate, train_epoch
    net, trainer, loss_fn = build_parts(spec, [ctx])
    train_images, test_images = DeviceImages(*train, ctx), DeviceImages(*test, ctx)
    rng = np.random.default_rng(0)

    def epoch():
        plan = epoch_plan(rng, train_images.count, spec.recipe.batch_size)
        trained = train_epoch(net, trainer, loss_fn, train_images, plan, [ctx], 0, spec.recipe)
        return trained, evaluate(net, loss_fn, test_images, [ctx], spec.recipe.batch_size)
    return epoch


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


def epoch_data(images, labels, count):
    """The whole-epoch comparison's (train, test) sets: `count` of the training images, and
    a fifth as many other images for evaluation (CIFAR-10's 50000 : 10000)."""
    return (images[:count], labels[:count]), synthetic_images(max(1, count // 5), seed=1)


# A training step costs about three forward passes (forward, and a backward that
# computes both input and weight gradients), each multiply-accumulate two FLOPs.
TRAIN_FLOPS_PER_MAC = 6


def cpu_peak_gflops(cpuinfo='/proc/cpuinfo', cores=None):
    """Estimated FP32 peak of the cores this process may use, from /proc/cpuinfo.

    cores x clock x FLOPs per cycle (two FMA units: AVX-512 64, AVX2+FMA 32, else 16).
    None where the clock or the vector units cannot be read.
    """
    from .threads import available_cpus
    try:
        text = open(cpuinfo).read()
    except OSError:
        return None
    mhz = [float(line.split(':')[1]) for line in text.splitlines()
           if line.lower().startswith('cpu mhz')]
    flags = next((line.split(':')[1].split() for line in text.splitlines()
                  if line.startswith('flags')), [])
    if not mhz or not flags:
        return None
    per_cycle = 64 if 'avx512f' in flags else 32 if {'avx2', 'fma'} <= set(flags) else 16
    return (cores or available_cpus()) * max(mhz) / 1000.0 * per_cycle


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

    from .recipe import Recipe, TrialSpec
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


def main(argv=None):
    threads = use_cpus()   # before anything imports MXNet
    from models import ATTENTIONS, MODELS
    parser = argparse.ArgumentParser(prog='python -m bench.benchmark', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['cifar_resnet20_v1'], metavar='MODEL',
                        help=f"default: cifar_resnet20_v1; any of {', '.join(MODELS)}")
    parser.add_argument('--attentions', nargs='+', default=list(ATTENTIONS), metavar='NAME')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--batches', type=int, default=20,
                        help='timed batches per model x attention (and per pipeline)')
    parser.add_argument('--rounds', type=int, default=5,
                        help='the timed batches are split into this many alternating rounds')
    parser.add_argument('--images', type=int, default=4096,
                        help='synthetic training images held in memory')
    parser.add_argument('--workers', type=int, default=os.cpu_count(),
                        help='DataLoader workers of the original pipeline')
    parser.add_argument('--no-original', action='store_true',
                        help='skip the original DataLoader pipeline')
    parser.add_argument('--epoch-images', type=int, default=2560,
                        help='training images of the whole-epoch comparison with the original '
                             'script (its evaluation takes a fifth as many); 0 skips it')
    parser.add_argument('--epoch-rounds', type=int, default=2,
                        help='timed epochs of each kind in the whole-epoch comparison')
    parser.add_argument('--num-gpus', type=int, default=None, help='0 forces the CPU')
    parser.add_argument('--threads-compare', action='store_true',
                        help="also train vanilla in a child process with MXNet's default "
                             'threads, to show the gain of using every core')
    parser.add_argument('--kernels-compare', action='store_true',
                        help="also train each attention with MXNet's operators instead of "
                             'the fused CPU kernels, to show what they gain')
    parser.add_argument('--precision', choices=PRECISIONS, default='float32',
                        help="amp_float16: MXNet AMP (GPUs only). AMP changes MXNet's "
                             'operators for the whole process: compare precisions in two runs')
    parser.add_argument('--json', default=None, help='write the rows as JSON here')
    # A child process of --threads-compare: time whole epochs of one kind only.
    parser.add_argument('--epoch-child', choices=('trial', 'original'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from .devices import describe, trial_contexts
    from .recipe import Recipe
    from .trainer import check_precision
    ctx = trial_contexts(min(args.num_gpus, 1) if args.num_gpus is not None else None)[0]
    try:
        check_precision(Recipe(precision=args.precision), [ctx])
    except ValueError as error:
        parser.exit(2, f'error: {error}\n')
    images, labels = synthetic_images(args.images)
    if args.epoch_child:
        return _epoch_child(args, ctx, images, labels)
    print(f'device: {describe([ctx])}, batch {args.batch_size}, {args.batches} timed batches, '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}, '
          f'{args.workers} DataLoader workers', flush=True)
    rows = benchmark(args.models, args.attentions, images, labels, ctx, args.batch_size,
                     args.batches, args.workers, baseline=not args.no_original,
                     rounds=args.rounds, epoch_images=min(args.epoch_images, args.images),
                     epoch_rounds=args.epoch_rounds, kernels_compare=args.kernels_compare,
                     precision=args.precision)
    print(format_rows(rows), flush=True)
    print(attention_overhead_summary(rows))
    print(kernel_summary(rows))
    peak = cpu_peak_gflops() if ctx.device_type == 'cpu' else None
    if peak:
        best = max(r['gflop_s'] for r in rows)
        print(f'compute: best {best:.1f} GFLOP/s of an estimated FP32 peak of {peak:.0f} GFLOP/s '
              f'for these cores ({100 * best / peak:.1f}%; training FLOPs = 6 x forward MACs)')
    if args.threads_compare:
        # Two fresh processes, since MXNet fixes its thread count at import.
        rates = [vanilla_rate_in_child(args.models[0], args.batch_size, args.batches, t)
                 for t in (None, threads, None, threads)]
        default_rate = statistics.mean(rates[0::2])
        ours = statistics.mean(rates[1::2])
        print(f'threads: {args.models[0]} vanilla at MXNet default threads '
              f'{default_rate:.1f} img/s; with OMP_NUM_THREADS={threads} {ours:.1f} img/s '
              f'({ours / default_rate:.2f}x; mean of two child processes each)')
        if args.epoch_images:
            print(epochs_as_run_summary(args, threads), flush=True)
    if args.json:
        from .fileio import write_json_atomic
        write_json_atomic(args.json, rows)
    return 0


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


def _epoch_child(args, ctx, images, labels):
    from .fileio import write_json_atomic
    from .recipe import Recipe, TrialSpec
    spec = TrialSpec(args.models[0], 'none', seed=0, recipe=Recipe(batch_size=args.batch_size))
    train, test = epoch_data(images, labels, min(args.epoch_images, args.images))
    seconds = epoch_seconds(spec, train, test, ctx, args.workers, args.epoch_rounds,
                            kinds=(args.epoch_child,))
    write_json_atomic(args.json, statistics.median(seconds[args.epoch_child]))
    return 0


def _run_child(arguments, threads):
    """Run this benchmark in a fresh process with OMP_NUM_THREADS=threads (None: MXNet's
    default, as a script that never set it ran); returns what the child wrote as JSON."""
    import json
    import subprocess
    import tempfile
    from .threads import KEEP_DEFAULT_ENV
    env = dict(os.environ)
    env.pop('OMP_NUM_THREADS', None)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    else:
        env[KEEP_DEFAULT_ENV] = '1'
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, 'out.json')
        subprocess.run([sys.executable, '-m', 'bench.benchmark', *arguments, '--json', out],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as handle:
            return json.load(handle)


def epochs_as_run_summary(args, threads):
    """A trial's whole epoch against the original script's as it ran: MXNet's default
    threads, DataLoader workers. Alternating child processes, two of each kind."""
    common = ['--models', args.models[0], '--batch-size', str(args.batch_size),
              '--images', str(args.images), '--epoch-images', str(args.epoch_images),
              '--epoch-rounds', str(args.epoch_rounds), '--workers', str(args.workers)]
    seconds = {'trial': [], 'original': []}
    for _ in range(2):
        seconds['original'].append(_run_child(common + ['--epoch-child', 'original'], None))
        seconds['trial'].append(_run_child(common + ['--epoch-child', 'trial'], threads))
    trial, original = statistics.median(seconds['trial']), statistics.median(seconds['original'])
    return (f'whole epoch against the original script as it ran ({args.models[0]} vanilla; '
            f"MXNet's default threads, {args.workers} DataLoader workers): trial {trial:.2f} s "
            f'with OMP_NUM_THREADS={threads}, original {original:.2f} s, {original / trial:.2f}x '
            f'faster (medians of two child processes each)')


def vanilla_rate_in_child(model, batch_size, batches, threads):
    """Vanilla trial img/s in a fresh process, with OMP_NUM_THREADS=threads (None: unset)."""
    rows = _run_child(['--models', model, '--attentions', 'none', '--no-original',
                       '--batch-size', str(batch_size), '--batches', str(batches)], threads)
    return rows[0]['trial_img_s']


if __name__ == '__main__':
    sys.exit(main())
