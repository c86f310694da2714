"""The two halves of a trial under Ray Tune, and what passes between them.

`run_trial` runs in a Ray worker, on any node of the cluster: it trains one spec and
reports every epoch with its checkpoint's bytes, and receives the checkpoint it resumes
from from a `StoreReader` on the driver's node. `StoreCallback` runs in the driver and
turns the reports into the results store. So the driver is the store's only writer,
the nodes need no disk in common, and no path of the store is used on another node.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import ray
from ray import tune

from bench.progress import SweepProgress, print_line, stamped
from bench.store import HISTORY_FIELDS
from bench.tracking import FAILED, FINISHED, Trackers
from bench.trial.recipe import TrialRun
from bench.validation import one_line

if TYPE_CHECKING:
    from ray.actor import ActorHandle
    from ray.tune.experiment import Trial

    from bench.records import TrialRecord
    from bench.store import ResultsStore
    from bench.trial.data import Dataset

DIVERGED_KEY = 'diverged'
# The packed checkpoint of the epoch a report is about (bench.trial.checkpoint).
CHECKPOINT_KEY = 'checkpoint_blob'
# A trial's first report: where it runs and the epoch it starts from.
STARTED_KEY = 'started_at_epoch'
# Ray's words when a trial's worker stops answering (its node died, or the network
# dropped it), and how long to wait for Ray to tell which (its health checks).
UNREACHABLE_SIGNS = (
    'is unavailable',
    'Socket closed',
    'actor died',
    'owner has died',
    'ActorDiedError',
    'ActorUnavailableError',
    'node',
)
NODE_DEATH_WAIT_SECONDS = 15.0
# What Ray lost under a failed trial (StoreCallback._why), beside the trial's own errors.
LOST_NODE, LOST_UNSTARTED = 'node', 'unstarted'
# The header Ray puts on an error that the trial's own code raised, in train() or in its
# actor's creation (__init__): that error is the trial's, whatever words of
# UNREACHABLE_SIGNS its text holds (a path under /home/node, an FX graph 'node').
RAISED_IN_TRIAL = re.compile(r'ray::\w+\.\w+\(\)')
# Ray's memory monitor killed the worker: its text names the node, which is alive.
OUT_OF_MEMORY_SIGN = 'running low on memory'
# Tune appends each failure of a trial to one error file, as 'Failure # k (occurred at
# ...)': the last one is the failure at hand.
FAILURE_HEADER = re.compile(r'^Failure # \d+', re.MULTILINE)
# What each trial reports about where and how it ran; kept in its final record.
PLACEMENT_KEYS = (
    'node_id',
    'node_ip',
    'omp_threads',
    'devices',
    'kernels',
    'kernel_isa',
    'fusion',
    'cuda',
    'cudnn',
    'tf32',
    'device_kind',
)


@ray.remote(num_cpus=0)
class StoreReader:
    """On the driver's node: the newest checkpoint the store holds for a trial, packed, for
    a trial to resume from wherever it runs (also when Tune restarts it after a failure
    on another node). It only reads: the driver alone writes the store."""

    def __init__(self, store_root: str | Path) -> None:
        from bench.store import ResultsStore

        self.store = ResultsStore(store_root)

    def checkpoint(self, trial_id: str) -> bytes | None:
        from bench.trial.checkpoint import pack_checkpoint

        folder = self.store.checkpoint_path(trial_id)
        return pack_checkpoint(folder) if folder is not None else None


def start_store_reader(store_root: str | Path) -> ActorHandle:
    """A StoreReader pinned to this (the driver's) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return StoreReader.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    ).remote(str(store_root))


def run_trial(
    param_space: dict[str, Any],
    data: Dataset | None = None,
    store_reader: ActorHandle | None = None,
) -> None:
    """Ray Tune function trainable for one TrialRun (built by bench.sweep): the trial's
    backend opens a session on the devices Ray assigned, and bench.trial.loop drives it."""
    run = TrialRun.from_config(param_space['trial'])
    from bench.trial.threads import pin_cpus

    threads = pin_cpus(run.cpus)  # before the framework is imported in this worker

    from bench.gpu import (
        apply_tf32,
        check_gpus,
        driver_cuda_version,
        gluon_fusion_setting,
        physical_gpus,
        share_card,
        visible_gpus,
    )
    from bench.sweep.estimate import trial_device
    from bench.trial.checkpoint import pack_checkpoint, read_state, unpack_checkpoint
    from bench.trial.loop import TrainingDiverged, get_backend, run_epochs

    fusion = gpu_name = None
    if run.gpus:
        # Before the framework touches the device: an unsupported card gets one clear error.
        check_gpus(run.gpus, gpus=visible_gpus(physical_gpus()), backend=run.spec.recipe.backend)
        share_card(run.gpus, run.spec.recipe.backend)
        gpu_name = next(iter(visible_gpus(physical_gpus())), None)
        gpu_name = gpu_name.name if gpu_name else None
        if run.spec.recipe.backend == 'gluon':
            fusion = gluon_fusion_setting(driver_cuda_version()).why
            apply_tf32(run.spec.recipe)
    backend = get_backend(run.spec.recipe.backend)
    session = backend.open_session(
        run.spec, data, backend.trial_devices(run.gpus, ray.get_gpu_ids())
    )
    context = ray.get_runtime_context()
    placement = {
        'node_id': context.get_node_id(),
        'omp_threads': threads,
        'pid': os.getpid(),
        'fusion': fusion,
        # What the estimate of later sweeps matches stored epochs by (bench.sweep.estimate).
        'device_kind': trial_device(run.cpus, gpu_name),
        **session.describe(),
    }
    with tempfile.TemporaryDirectory(
        prefix=f'{run.trial_id}-', dir=scratch_root(run.scratch)
    ) as scratch:
        packed = ray.get(store_reader.checkpoint.remote(run.trial_id)) if store_reader else None
        resume_from = unpack_checkpoint(packed, Path(scratch) / 'resume') if packed else None
        start = read_state(resume_from)['epoch'] if resume_from else 0
        tune.report({STARTED_KEY: start, **placement})

        def report(metrics: dict[str, Any], checkpoint_path: Path | None) -> None:
            # The session's account again: only its steps tell whether the attentions
            # took the fused CPU kernels and whether compiling held.
            tune.report(
                {
                    **metrics,
                    **placement,
                    **session.describe(),
                    CHECKPOINT_KEY: pack_checkpoint(checkpoint_path),
                }
            )

        try:
            run_epochs(
                session,
                run.spec,
                data,
                checkpoint_dir=Path(scratch) / 'checkpoints',
                resume_from=resume_from,
                on_epoch=report,
            )
        except TrainingDiverged as error:
            # Deterministic: retrying would diverge again, so it is reported as a
            # result (stored as the trial's error) rather than raised to Tune.
            tune.report({DIVERGED_KEY: str(error), 'epoch': error.epoch + 1})


def scratch_root(folder: str | None) -> str | None:
    """The store's scratch folder for a trial's temporary files, created where missing;
    the system's temporary folder where this node cannot write there (another node)."""
    if folder:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe = tempfile.TemporaryDirectory(dir=folder)
            probe.cleanup()
            return folder
        except OSError:
            pass
    return None


class StoreCallback(tune.Callback):
    """Driver-side: epoch rows, checkpoints, final metrics and errors into the store."""

    def __init__(
        self,
        store: ResultsStore,
        planned: Iterable[TrialRecord],
        progress: Callable[[str], object] = print_line,
        ray_lost: Callable[[], str | None] | None = None,
        quiet: bool = False,
        max_failures: int = 0,
        nodes: Callable[[], dict[str, dict[str, Any]]] | None = None,
        trackers: Trackers | None = None,
        environment: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        # The run's packages, commit and data (bench.environment), kept in each trial it
        # finishes: environment.json is the last run's only, and a store's trials may
        # have been finished by several runs.
        self.environment = (
            None
            if environment is None
            else {k: v for k, v in environment.items() if k != 'recorded_at'}
        )
        # Live views (TensorBoard, MLflow), fed what the store has just recorded.
        self.trackers = trackers if trackers is not None else Trackers([])
        self.max_failures = max_failures
        # node id -> whether it is alive and its address (Ray's ray.nodes()), to tell a
        # trial that failed from a node that died under it.
        self.nodes = nodes or (lambda: {})
        # Why Ray's head is gone, if it is: trials that end with it did not fail, and
        # resume at the next run.
        self.ray_lost = ray_lost
        self.planned = {p.trial_id: p for p in planned}
        self.progress = progress
        self.started = time.monotonic()
        self.diverged = set()
        self.follow = SweepProgress(planned)
        self.quiet = quiet
        self.placement = {}  # trial id -> {PLACEMENT_KEYS: what it reported}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (for a restore this project never
        # does); the watchdog's threads and processes are not data.
        return dict(self.__dict__, ray_lost=None, trackers=Trackers([]))

    def _trial_id(self, trial: Trial) -> str:
        return TrialRun.from_config(trial.config['trial']).trial_id

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        trial_id = self._trial_id(trial)
        planned = self.planned[trial_id]
        # Out of the result before Tune keeps it (callbacks may change it in place): Tune
        # need not hold, or write into its own records, megabytes per epoch.
        packed = result.pop(CHECKPOINT_KEY, None)
        if STARTED_KEY in result:
            node = self.nodes().get(result.get('node_id'), {})
            self.placement[trial_id] = dict(
                {key: result.get(key) for key in PLACEMENT_KEYS},
                node_ip=node.get('NodeManagerAddress'),
            )
            start = result[STARTED_KEY]
            self.follow.started(trial_id, start)
            stored = self.store.read_history(trial_id)
            self.trackers.trial_started(
                planned, [r for r in stored if r['epoch'] <= start], self.placement[trial_id]
            )
            starts = f'resumes after epoch {start}' if start else 'starts'
            self._say(
                f'{planned.name} {starts}'
                f' on node {node.get("NodeManagerAddress")} '
                f'({str(result.get("node_id"))[:8]}), {result.get("devices")}'
            )
            return
        if DIVERGED_KEY in result:
            self.diverged.add(trial_id)
            self.store.write_error(
                trial_id, result[DIVERGED_KEY], self.store.checkpoint_epoch(trial_id)
            )
            self.follow.finished(trial_id, failed=True)
            self.trackers.trial_ended(planned, FAILED, result[DIVERGED_KEY])
            self._say(f'{planned.name}: {result[DIVERGED_KEY]}')
            return
        self.store.record_epoch(trial_id, result)
        if packed is not None:
            self._record_checkpoint(trial_id, packed)
        self.placement[trial_id] = dict(
            self.placement.get(trial_id, {}),
            **{key: result.get(key) for key in PLACEMENT_KEYS if key in result},
        )
        self.follow.epoch(trial_id, int(result['epoch']), float(result['epoch_seconds']))
        self.trackers.epoch(planned, {key: result[key] for key in HISTORY_FIELDS})
        if not self.quiet:
            self._say(
                f'{planned.name} epoch {result["epoch"]}/{planned.spec.recipe.epochs}: '
                f'train loss {result["train_loss"]:.4f}, val loss {result["val_loss"]:.4f}, '
                f'val acc {result["val_acc"]:.4f} ({result["epoch_seconds"]:.1f}s); '
                f'{self.follow.status()}'
            )

    def _say(self, text: str) -> None:
        """One progress line, after the time of day."""
        self.progress(stamped(text))

    def _record_checkpoint(self, trial_id: str, packed: bytes) -> None:
        from bench.trial.checkpoint import unpack_checkpoint

        # In the store's root, where the next run's clean-up finds it after a crash.
        staging = Path(tempfile.mkdtemp(prefix='.incoming-', suffix='.tmp', dir=self.store.root))
        try:
            self.store.record_checkpoint(trial_id, unpack_checkpoint(packed, staging / 'c'))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        trial_id = self._trial_id(trial)
        if trial_id in self.diverged:
            return
        planned = self.planned[trial_id]
        history = self.store.read_history(trial_id)
        if len(history) < planned.spec.recipe.epochs:
            self.follow.finished(trial_id, failed=True)
            message = f'the trial ended after {len(history)} of {planned.spec.recipe.epochs} epochs'
            self.store.write_error(trial_id, message, len(history))
            self.trackers.trial_ended(planned, FAILED, message)
            return
        final = dict(history[-1])
        final.update(
            epochs=len(history),
            total_seconds=sum(r['epoch_seconds'] for r in history),
            finished_at=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            **self.placement.get(trial_id, dict.fromkeys(PLACEMENT_KEYS)),
        )
        if self.environment is not None:
            final['environment'] = self.environment
        self.store.write_final(trial_id, final)
        self.follow.finished(trial_id)
        self.trackers.trial_ended(planned, FINISHED)
        self._say(f'{planned.name} done: val acc {final["val_acc"]:.4f}; {self.follow.status()}')

    def _node_address(self, trial_id: str) -> str:
        placement = self.placement.get(trial_id, {})
        return placement.get('node_ip') or str(placement.get('node_id'))[:8]

    def _lost_node(self, trial_id: str, wait: float = 0.0) -> str | None:
        """The address of the node the trial last ran on if Ray marks it dead within `wait`
        seconds (Ray's health checks take several to tell a dead node from a slow one)."""
        node_id = self.placement.get(trial_id, {}).get('node_id')
        deadline = time.monotonic() + wait
        while node_id:
            node = self.nodes().get(node_id)
            if node is not None and not node.get('Alive', True):
                return node.get('NodeManagerAddress') or str(node_id)[:8]
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        return None

    def _why(
        self, trial_id: str, trial: Trial, wait: float = NODE_DEATH_WAIT_SECONDS
    ) -> tuple[str, str | None]:
        """Why the trial failed, and what Ray lost under it: LOST_NODE (a node that died,
        or a worker that stopped answering: said as such, not as Ray's actor errors),
        LOST_UNSTARTED (a worker lost before it reported its start) or None (the trial's
        own error)."""
        text = _last_failure(_error_text(trial))
        if OUT_OF_MEMORY_SIGN in text:
            line = next(line for line in text.splitlines() if OUT_OF_MEMORY_SIGN in line)
            return (
                f"Ray's memory monitor killed the trial's worker: {one_line(line.strip())[:300]} "
                '(fewer trials at once, resources.max_concurrent_trials, or a smaller '
                'recipe.batch_size leave each more memory)'
            ), None
        unreachable = not RAISED_IN_TRIAL.search(text) and any(
            sign in text for sign in UNREACHABLE_SIGNS
        )
        lost = self._lost_node(trial_id, wait=wait if unreachable else 0.0)
        if lost:
            return f'node {lost} died while the trial trained there', LOST_NODE
        if unreachable and trial_id not in self.placement:
            # No start was ever reported: no node to blame, and Ray's own last line
            # (e.g. 'cancelled before it started running') is the only clue there is.
            return (
                f"Ray lost the trial's worker before it started ({_last_line(text)})",
                LOST_UNSTARTED,
            )
        if unreachable:
            return (
                f"the trial's worker on node {self._node_address(trial_id)} stopped "
                f'answering (its node died, or lost its connection)'
            ), LOST_NODE
        return (_last_line(text) if text else 'the trial failed'), None

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Tune retries a failed trial: say why, and from which epoch it goes on."""
        trial_id = self._trial_id(trial)
        self._say(
            f'{self.planned[trial_id].name}: {self._why(trial_id, trial)[0]}; Tune '
            f'retries it (retry {trial.num_failures} of {self.max_failures}) from '
            f'the last epoch the store holds ({self.store.checkpoint_epoch(trial_id)})'
        )

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        trial_id = self._trial_id(trial)
        self.follow.finished(trial_id, failed=True)
        if self.ray_lost and self.ray_lost():
            return
        why, lost = self._why(trial_id, trial)
        if lost:
            epochs = self.store.checkpoint_epoch(trial_id)
            if lost == LOST_UNSTARTED:  # no node is known to have died
                resume = f'resume it after epoch {epochs}' if epochs else 'train it'
                message = (
                    f'{why}; run again with --retry-failed to {resume}, or raise '
                    'resources.max_failures so that Tune retries it'
                )
            else:
                message = (
                    f'{why} (epoch {epochs} is in the store); run again with '
                    '--retry-failed to resume it from that epoch, or raise '
                    'resources.max_failures so that Tune retries it on another node'
                )
            self.store.write_error(trial_id, message, epochs)
            self.trackers.trial_ended(self.planned[trial_id], FAILED, message)
            self._say(f'{self.planned[trial_id].name} failed: {message}')
            return
        message = _error_text(trial)
        if why != _last_line(message):
            # Ray's text as it is, and what it means last: the line a report shows.
            message = f'{message}\n{why}'
        self.store.write_error(trial_id, message, self.store.checkpoint_epoch(trial_id))
        self.trackers.trial_ended(self.planned[trial_id], FAILED, message)
        self._say(f'{self.planned[trial_id].name} failed: {why}')


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:300] if lines else ''


def _last_failure(text: str) -> str:
    """The last of the failures Tune appended to a trial's error file."""
    starts = [match.start() for match in FAILURE_HEADER.finditer(text)]
    return text[starts[-1] :].strip() if starts else text.strip()


def _error_text(trial: Trial) -> str:
    path = getattr(trial, 'error_file', None)
    if path and Path(path).is_file():
        return Path(path).read_text(errors='replace').strip()
    return str(getattr(trial, 'error_msg', None) or 'the trial failed (no error text from Ray)')
