"""How long a sweep will take, before it runs: per trial and for the whole sweep.

An epoch's time comes, best first, from
- measurements: epochs the store holds of trials of the same network (model, attention
  and its options, backend, precision, batch size, compile) on the same kind of device
  and the same number of training images;
- a calibration (`--estimate`): a few real training steps and one evaluation of each
  distinct network on this machine's trial device, timed in a child process with the
  trial's thread count, cached per machine and code revision;
- a derivation: another measured network of the same backend, precision and device,
  scaled by the two networks' MACs (a rough figure, said as such).
Without any of them a trial has no estimate, and the sweep says how to get one.

Figures are ranges where they rest on few measurements. The wall time schedules the
trials still to train on as many trials at once as the resources allow on this machine
(in the sweep's order, as Ray Tune starts them); trials sharing a GPU run slower than alone, which a
range measured alone does not show. This module imports no deep-learning framework:
calibration runs in a child process (`python -m bench.sweep.estimate`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import platform
import stat
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from bench.errors import BenchError
from bench.fileio import read_json, write_json_atomic
from bench.progress import format_duration
from bench.records import DONE
from bench.store import ResultsStore
from bench.trial.recipe import TrialSpec

if TYPE_CHECKING:
    from bench.records import TrialRecord
    from bench.sweep.config import Resources

# Steps timed per network in a calibration, after the warm-up steps that build, compile
# and allocate (excluded, as the first epoch's share of them is small).
CALIBRATION_STEPS = 6
WARMUP_STEPS = 2
# How far an epoch strays from what a few timed steps predict (data plans, evaluation
# batches, a machine's noise): the range a calibration is widened by.
CALIBRATION_SPREAD = (0.85, 1.3)
# A derivation by MACs is rougher: attentions cost more than their MACs, stages differ.
DERIVED_SPREAD = (0.7, 1.6)
# Fewer measured epochs than this: the range is widened by FEW_SPREAD.
FEW_EPOCHS = 3
FEW_SPREAD = (0.8, 1.25)
CACHE_NAME = 'estimates.json'
# The folder that holds the bench package (the checkout, or site-packages).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A stored epoch time beyond a month, or a step or epoch under 0.1 ms, is a damaged or
# hand-edited file, not a figure.
MAX_EPOCH_SECONDS = 30 * 86400
MIN_SECONDS = 1e-4
MAX_CACHE_BYTES = 1 << 20


class EstimateError(BenchError, RuntimeError):
    """A calibration that could not run; the message says why."""


# ---------------------------------------------------------------- keys


def network_key(spec: TrialSpec) -> str:
    """What sets a trial's speed, besides its device and data: one string per network."""
    recipe = spec.recipe
    return json.dumps(
        {
            'model': spec.model,
            'attention': spec.attention,
            'attention_kwargs': spec.attention_kwargs,
            'backend': recipe.backend,
            'precision': recipe.precision,
            'batch_size': recipe.batch_size,
            'compile': recipe.compile,
            'hybridize': recipe.hybridize,
        },
        sort_keys=True,
    )


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith('model name'):
                    return ' '.join(line.split(':', 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown CPU'


def trial_device(cpus_per_trial: float, gpu_name: str | None) -> str:
    """The kind of device a trial runs on: its GPU's name, else the CPU model and the
    trial's thread count (a trial's speed on a CPU depends on both)."""
    if gpu_name:
        return f'gpu: {gpu_name}'
    from bench.trial.threads import trial_threads

    return f'cpu: {cpu_model()} x {trial_threads(cpus_per_trial)} threads'


def local_trial_device(resources: Resources) -> str:
    """The device a trial of `resources` gets on this machine."""
    gpu = None
    if resources.gpus_per_trial:
        from bench.gpu import physical_gpus

        gpus = physical_gpus()
        gpu = gpus[0].name if gpus else None
    return trial_device(resources.cpus_per_trial, gpu)


def neighbour_stores(results: Path, own: Path) -> list[ResultsStore]:
    """The sweep's store and the other sweeps' stores in the same results folder (a
    variant, the demo, an earlier name): all of them hold measured epochs."""
    stores = [ResultsStore(own)]
    if results.is_dir():
        for folder in sorted(results.iterdir())[:1000]:
            if folder != own and (folder / 'trials').is_dir() and not folder.is_symlink():
                stores.append(ResultsStore(folder))
    return stores


def local_slots(resources: Resources) -> tuple[int, str]:
    """How many trials run at once on this machine, and why."""
    from bench.gpu import physical_gpus
    from bench.trial.threads import available_cpus

    cpus = available_cpus()
    gpus = len(physical_gpus()) if resources.gpus_per_trial else 0
    why = f'{cpus} CPUs, {resources.cpus_per_trial:g} per trial'
    if gpus:
        why += f'; {gpus} GPU(s), {resources.gpus_per_trial:g} per trial'
    return trials_at_once(cpus, gpus, resources), why


def trials_at_once(cpus: float, gpus: float, resources: Resources) -> int:
    """How many trials of `resources` fit on `cpus` and `gpus` at once (at least one;
    without GPUs, trials run on CPUs and gpus_per_trial does not count)."""
    slots = int(cpus // resources.cpus_per_trial) if resources.cpus_per_trial else 1
    if resources.gpus_per_trial and gpus:
        slots = min(slots, int(gpus // resources.gpus_per_trial))
    return max(1, slots)


def cluster_slots(address: str, resources: Resources) -> tuple[int, str]:
    """How many trials run at once on the Ray cluster at `address`, and why (its CPUs
    and GPUs now; an autoscaler may add more)."""
    from bench.sweep.cluster import start_ray

    ray = start_ray(address)
    try:
        total = ray.cluster_resources()
    finally:
        ray.shutdown()
    cpus, gpus = float(total.get('CPU', 0)), float(total.get('GPU', 0))
    why = f'the cluster at {address} has {cpus:g} CPUs and {gpus:g} GPUs now'
    return trials_at_once(cpus, gpus, resources), why


# ---------------------------------------------------------------- one epoch


@dataclass(frozen=True)
class EpochTime:
    """Seconds of one epoch of a trial: typical, and the range it may fall in."""

    seconds: float
    low: float
    high: float
    source: str  # measured | calibrated | derived
    detail: str  # what the figure rests on

    def scaled(self, factor: float, spread: tuple[float, float], source: str,
               detail: str) -> EpochTime:  # fmt: skip
        return EpochTime(
            self.seconds * factor,
            self.low * factor * spread[0],
            self.high * factor * spread[1],
            source,
            detail,
        )


def measured_epoch(times: Sequence[float], trials: int) -> EpochTime:
    """An epoch's time from stored epoch times of `trials` trials: the median, in the
    range of what was measured (wider where there are few)."""
    low, high = min(times), max(times)
    if len(times) < FEW_EPOCHS:
        low, high = low * FEW_SPREAD[0], high * FEW_SPREAD[1]
    return EpochTime(
        statistics.median(times),
        low,
        high,
        'measured',
        f'{len(times)} stored epoch(s) of {trials} trial(s)',
    )


def calibrated_epoch(
    calibration: Mapping[str, Any], train_images: int, test_images: int, batch_size: int
) -> EpochTime:
    """An epoch's time from a calibration's timed steps and evaluation. A busy moment of
    the machine only ever slows a step, so the typical step is a low one (the first
    quartile), the range from the fastest to the slowest."""
    steps = math.ceil(train_images / batch_size)
    timed = sorted(calibration['step_seconds'])
    evaluation = test_images * calibration['eval_seconds_per_image']
    return EpochTime(
        steps * timed[len(timed) // 4] + evaluation,
        (steps * min(timed) + evaluation) * CALIBRATION_SPREAD[0],
        (steps * max(timed) + evaluation) * CALIBRATION_SPREAD[1],
        'calibrated',
        f'{len(timed)} steps timed here',
    )


def stored_epoch_times(
    stores: Iterable[ResultsStore],
) -> dict[tuple[str, str, int], tuple[list[float], int]]:
    """(network, device, training images) -> (epoch seconds, trials) of the finished
    trials in `stores` that recorded their device. A trial's first epoch is left out
    where it has others (it builds and compiles the network)."""
    found: dict[tuple[str, str, int], tuple[list[float], int]] = {}
    for store, record in ((s, r) for s in stores for r in s.trial_records()):
        device = (record.final or {}).get('device_kind')
        images = record.data.get('train_images')
        if record.status != DONE or not isinstance(device, str) or not isinstance(images, int):
            continue  # not finished, or from before devices were recorded (or a hand edit)
        history = store.read_history(record.trial_id)
        times = [row['epoch_seconds'] for row in history[1:] or history]
        times = [t for t in times if math.isfinite(t) and MIN_SECONDS < t < MAX_EPOCH_SECONDS]
        if not times:
            continue
        key = (network_key(record.spec), device, images)
        known, trials = found.get(key, ([], 0))
        found[key] = (known + times, trials + 1)
    return found


# ---------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class TrialEstimate:
    name: str
    epochs: int  # still to train
    epoch: EpochTime | None

    @property
    def seconds(self) -> float | None:
        return None if self.epoch is None else self.epochs * self.epoch.seconds


@dataclass(frozen=True)
class SweepEstimate:
    trials: list[TrialEstimate]
    device: str
    slots: int
    slots_why: str
    cpus_per_trial: float
    gpus_per_trial: float

    @property
    def known(self) -> list[TrialEstimate]:
        return [t for t in self.trials if t.epoch is not None]

    def total(self, which: str = 'seconds') -> float:
        """Seconds of every trial with an estimate, one after the other."""
        return sum(t.epochs * getattr(t.epoch, which) for t in self.known)

    def wall(self, which: str = 'seconds') -> float:
        """Seconds until the last trial ends, `slots` trials at a time."""
        return makespan([t.epochs * getattr(t.epoch, which) for t in self.known], self.slots)


def makespan(durations: Sequence[float], slots: int) -> float:
    """When the last of `durations` ends on `slots` lanes, each trial started in turn on
    the lane that frees first, as Ray Tune starts a sweep's trials in its order."""
    lanes = [0.0] * max(1, slots)
    for duration in durations:
        heapq.heapreplace(lanes, lanes[0] + duration)
    return max(lanes)


def estimate_sweep(
    planned: Sequence[TrialRecord],
    stored: Mapping[tuple[str, str, int], tuple[list[float], int]],
    resources: Resources,
    data_identity: Mapping[str, Any],
    calibration: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | None = None,
    slots: tuple[int, str] | None = None,
    also_known: Sequence[TrialRecord] = (),
) -> SweepEstimate:
    """The estimate of the trials of `planned` still to train, from the `stored` epoch
    times (stored_epoch_times of the sweep's store and its neighbours': the same network
    on the same device is the same measurement), on `device` (default: a trial's device
    on this machine) with `slots` trials at a time (default: what this machine's
    resources allow). `also_known`: trials of the sweep outside `planned` (an --only
    leaves them out) whose networks' times may still stand for those planned."""
    device = device or local_trial_device(resources)
    slots = slots or local_slots(resources)
    calibration = calibration or {}
    train_images = int(data_identity.get('train_images') or 0)
    test_images = int(data_identity.get('test_images') or 0)
    epochs: dict[str, EpochTime] = {}
    known_from = [*planned, *also_known]
    for record in known_from:
        key = network_key(record.spec)
        if key in epochs:
            continue
        measured = stored.get((key, device, train_images))
        if measured:
            epochs[key] = measured_epoch(*measured)
        elif key in calibration:
            epochs[key] = calibrated_epoch(
                calibration[key], train_images, test_images, record.spec.recipe.batch_size
            )
    for record in planned:  # the rest from a known network of the same backend and device
        key = network_key(record.spec)
        if key not in epochs:
            derived = _derived(record.spec, epochs, known_from)
            if derived is not None:
                epochs[key] = derived
    trials = [
        TrialEstimate(
            record.name,
            record.spec.recipe.epochs - record.epochs_done,
            epochs.get(network_key(record.spec)),
        )
        for record in planned
        if record.will_train
    ]
    return SweepEstimate(
        trials, device, slots[0], slots[1], resources.cpus_per_trial, resources.gpus_per_trial
    )


def _derived(
    spec: TrialSpec, known: Mapping[str, EpochTime], planned: Sequence[TrialRecord]
) -> EpochTime | None:
    """An epoch of `spec` from a known, measured or calibrated, network of the same
    backend, precision and batch size, by the ratio of their MACs."""
    from models.architecture import network_counts

    for record in planned:
        other = record.spec
        base = known.get(network_key(other))
        same = (other.recipe.backend, other.recipe.precision, other.recipe.batch_size) == (
            spec.recipe.backend,
            spec.recipe.precision,
            spec.recipe.batch_size,
        )
        if base is None or not same or base.source == 'derived':
            continue
        ratio = (
            network_counts(spec.model, spec.attention, spec.attention_kwargs).macs
            / network_counts(other.model, other.attention, other.attention_kwargs).macs
        )
        return base.scaled(
            ratio, DERIVED_SPREAD, 'derived', f'from {other.model} {other.attention} by MACs'
        )
    return None


# One way to say a duration, in the estimate as in the progress lines.
duration = format_duration


def _number(value: float) -> str:
    """3 significant digits, without an exponent: 0.0767, 12.3, 1,080."""
    return f'{value:,.0f}' if value >= 100 else f'{value:.3g}'


def _at_once(trials: int, estimate: SweepEstimate) -> str:
    """How many trials train at once: the slots, or all of them where they are fewer."""
    if trials < estimate.slots:
        return f'all {trials} at once (room for {estimate.slots}: {estimate.slots_why})'
    return f'{estimate.slots} trial(s) at a time ({estimate.slots_why})'


def format_estimate(estimate: SweepEstimate) -> str:
    """The estimate's lines: each trial still to train, then the sweep."""
    if not estimate.trials:
        return 'estimate: nothing left to train'
    if not estimate.known:
        return (
            f'no estimate: the store holds no epoch of these networks on this device '
            f'({estimate.device}); run with --estimate to time a few steps of each '
            f'({len(estimate.trials)} trial(s) to train)'
        )
    lines = [f'estimate on this machine ({estimate.device}):']
    width = max(len(t.name) for t in estimate.trials)
    for trial in estimate.trials:
        if trial.epoch is None:
            lines.append(f'  {trial.name:<{width}}  {trial.epochs} epochs: no estimate')
            continue
        epoch = trial.epoch
        lines.append(
            f'  {trial.name:<{width}}  {trial.epochs} epochs x {duration(epoch.seconds)} = '
            f'{duration(trial.seconds)} ({duration(trial.epochs * epoch.low)}-'
            f'{duration(trial.epochs * epoch.high)}; {epoch.source}: {epoch.detail})'
        )
    known, unknown = estimate.known, len(estimate.trials) - len(estimate.known)
    unit, share = (
        ('GPU', estimate.gpus_per_trial)
        if estimate.gpus_per_trial and estimate.device.startswith('gpu')
        else ('CPU', estimate.cpus_per_trial)
    )
    hours = [_number(estimate.total(which) * share / 3600) for which in ('seconds', 'low', 'high')]
    walls = [estimate.wall(which) for which in ('seconds', 'low', 'high')]
    lines.append(
        f'{len(known)} trial(s) to train: {hours[0]} {unit}-hours ({hours[1]}-'
        f'{hours[2]}); wall time about {duration(walls[0])} ({duration(walls[1])}-'
        f'{duration(walls[2])}) with {_at_once(len(estimate.trials), estimate)}'
    )
    if unknown:
        lines.append(f'{unknown} trial(s) without an estimate are not counted: run with --estimate')
    return '\n'.join(lines)


# ---------------------------------------------------------------- calibration


def cache_path() -> Path:
    root = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
    return Path(os.path.expanduser(root)) / 'channel-attention-bench' / CACHE_NAME


def code_revision() -> str:
    """A digest of the code that trains a trial (bench/trial, models): a calibration of
    other code is not used."""
    root = PROJECT_ROOT
    digest = hashlib.sha256()
    for folder in ('bench/trial', 'models'):
        for path in sorted((root / folder).rglob('*')):
            if path.suffix in ('.py', '.cc') and path.is_file():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_key(device: str, network: str) -> str:
    return hashlib.sha256(f'{code_revision()}|{device}|{network}'.encode()).hexdigest()[:24]


def _read_cache() -> dict[str, Any]:
    """The calibration cache; empty where it is missing, damaged, or not a regular file
    of a sane size (a pipe would hang the read, a link to /dev/zero fill the memory)."""
    try:
        fd = os.open(cache_path(), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        with os.fdopen(fd, 'rb', closefd=False) as handle:
            blob = handle.read(MAX_CACHE_BYTES + 1)
        if len(blob) > MAX_CACHE_BYTES:
            return {}
        cache = json.loads(blob)
    except (OSError, ValueError, RecursionError, MemoryError):
        return {}
    finally:
        os.close(fd)
    return cache if isinstance(cache, dict) else {}


def cached_calibration(device: str, networks: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The calibrations of `networks` on `device` that this machine has cached for this
    code (an unreadable cache counts as empty)."""
    cache = _read_cache()
    found = {}
    for network in networks:
        entry = cache.get(_cache_key(device, network))
        if _valid_entry(entry):
            found[network] = entry
    return found


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    steps, evaluation = entry.get('step_seconds'), entry.get('eval_seconds_per_image')
    return (
        isinstance(steps, list)
        and bool(steps)
        and all(isinstance(s, (int, float)) and MIN_SECONDS < s < 1e4 for s in steps)
        and isinstance(evaluation, (int, float))
        and 0 <= evaluation < 1e2
    )


def unmeasured(
    specs: Iterable[TrialSpec],
    stored: Mapping[tuple[str, str, int], tuple[list[float], int]],
    device: str,
    train_images: int,
) -> list[TrialSpec]:
    """The specs whose network the `stored` epoch times hold nothing of on `device`: what
    a calibration still has to time."""
    measured = {
        network for network, kind, images in stored if kind == device and images == train_images
    }
    return [spec for spec in specs if network_key(spec) not in measured]


def calibrate(
    specs: Sequence[TrialSpec],
    resources: Resources,
    device: str,
    progress: Callable[[str], object] = print,
) -> dict[str, dict[str, Any]]:
    """The calibration of every distinct network of `specs` on this machine: the cached
    ones, the rest timed in a child process per backend (with the trial's thread count)
    and cached."""
    networks = {network_key(spec): spec for spec in specs}
    found = cached_calibration(device, networks)
    missing = [spec for key, spec in networks.items() if key not in found]
    if not missing:
        return found
    progress(
        f'calibrating {len(missing)} network(s) on {device}: {WARMUP_STEPS + CALIBRATION_STEPS} '
        'training steps and one evaluation each'
    )
    measured = {}
    # One child per backend: MXNet and PyTorch in one process share one OpenMP runtime,
    # which then slows PyTorch's steps (bench/benchmark/child.py); a trial runs alone.
    # Each child's figures are cached at once: a later child's failure keeps them.
    backends = {spec.recipe.backend for spec in missing}
    for backend in sorted(backends):
        group = [spec for spec in missing if spec.recipe.backend == backend]
        figures = _calibration_in_child(group, resources, device)
        _store_calibration(device, figures)
        measured.update(figures)
    return {**found, **measured}


def _calibration_in_child(
    specs: Sequence[TrialSpec], resources: Resources, device: str
) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix='calibration-') as folder:
        request, answer = Path(folder) / 'request.json', Path(folder) / 'answer.json'
        write_json_atomic(
            request,
            {
                'specs': [spec.to_dict() for spec in specs],
                'cpus_per_trial': resources.cpus_per_trial,
                'gpus_per_trial': resources.gpus_per_trial if device.startswith('gpu') else 0,
            },
        )
        child = subprocess.run(
            [sys.executable, '-m', 'bench.sweep.estimate', str(request), str(answer)],
            capture_output=True,
            text=True,
            # `-m` puts the working folder first on the import path: run from the project's
            # own root, so that this code is timed, never a bench/ of the user's folder.
            cwd=PROJECT_ROOT,
        )
        if child.returncode != 0:
            why = (child.stderr.strip().splitlines() or ['no message'])[-1]
            raise EstimateError(f'the calibration failed: {why}')
        return read_json(answer)


def _store_calibration(device: str, measured: Mapping[str, Any]) -> None:
    path = cache_path()
    cache = _read_cache()
    cache.update({_cache_key(device, network): entry for network, entry in measured.items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cache)
    except OSError:
        pass  # a cache that cannot be written only costs the next dry run its time


def _time_network(spec: TrialSpec, gpus_per_trial: float) -> dict[str, Any]:
    """Time training steps and an evaluation of `spec`'s network (in the child)."""
    import time

    import numpy as np

    from bench.trial.batches import epoch_plan
    from bench.trial.data import DataIdentity, Dataset
    from bench.trial.loop import get_backend

    rng = np.random.default_rng(0)
    batch = spec.recipe.batch_size
    train = WARMUP_STEPS + CALIBRATION_STEPS
    images = rng.integers(0, 256, size=(train * batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=train * batch).astype(np.int32)
    identity = DataIdentity('calibration', False, '0', 'bin', '', len(images), batch)
    data = Dataset(images, labels, images[:batch], labels[:batch], identity)
    backend = get_backend(spec.recipe.backend)
    devices = backend.trial_devices(gpus_per_trial, ['0'] if gpus_per_trial else [])
    session = backend.open_session(spec, data, devices)
    session.set_learning_rate(spec.recipe.lr)
    plan = epoch_plan(rng, len(images), batch)
    seconds = []
    for step, (indices, rows, cols, flips) in enumerate(plan[:train]):
        started = time.perf_counter()
        loss, _ = session.train_batch(indices, rows, cols, flips)
        session.values([loss])  # waits for the step
        if step >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - started)
    session.evaluate()  # the first evaluation builds its graph
    started = time.perf_counter()
    session.evaluate()
    return {
        'step_seconds': seconds,
        'eval_seconds_per_image': (time.perf_counter() - started) / batch,
    }


def _calibration_child(request_path: str, answer_path: str) -> None:
    request = read_json(request_path)
    from bench.trial.threads import pin_cpus

    pin_cpus(request['cpus_per_trial'])  # before the framework is imported
    answer = {}
    for values in request['specs']:
        spec = TrialSpec.from_dict(values)
        answer[network_key(spec)] = _time_network(spec, request['gpus_per_trial'])
    write_json_atomic(answer_path, answer)


if __name__ == '__main__':
    try:
        _calibration_child(sys.argv[1], sys.argv[2])
    except BenchError as error:  # said as the parent's one line, without a traceback
        print(str(error).replace('\n', ' '), file=sys.stderr)
        sys.exit(error.exit_code)
