"""The sweep's run: the planned trials the store lacks, trained with Ray Tune.

Ray's experiment folder is scratch space: Tune cannot add trials to a restored
experiment, so every run starts a fresh Tuner over what the store lacks, each
trial resuming from its own latest checkpoint in the store.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from bench.progress import print_line
from bench.store import DAMAGED, DONE, FAILED, ResultsStore
from bench.sweep.cluster import (
    check_cluster_gpus,
    check_trials_fit,
    cluster_devices,
    cpu_fallback,
    quiet_ray_warnings,
    start_ray,
)
from bench.sweep.plan import record_sweep
from bench.sweep.watchdog import RayWatchdog
from bench.trial.recipe import TrialRun
from models.architecture import network_counts
from models.names import network_revision

if TYPE_CHECKING:
    from bench.records import TrialRecord
    from bench.sweep.config import LoadedSweep, Resources
    from bench.tracking import Trackers
    from bench.trial.data import Dataset
    from bench.trial.recipe import TrialSpec


@dataclass
class SweepOutcome:
    planned: list
    trained: list
    statuses: dict
    errors: dict
    problems: dict = None  # trial id -> problems of the trials left damaged
    interrupted: bool = False  # the run stopped (Ctrl-C) before every trial ended

    @property
    def failed(self) -> dict[str, str | None]:
        return {tid: err for tid, err in self.errors.items() if self.statuses[tid] == FAILED}

    @property
    def damaged(self) -> dict[str, tuple[str, ...]]:
        return {tid: p for tid, p in (self.problems or {}).items() if self.statuses[tid] == DAMAGED}


def trial_run(planned: TrialRecord, store: ResultsStore, resources: Resources) -> TrialRun:
    # The trial resumes from the store's checkpoint, which the store reader hands it
    # wherever it runs (tune_trial): nothing here is a path another node must see.
    return TrialRun(
        trial_id=planned.trial_id,
        name=planned.name,
        spec=planned.spec,
        cpus=resources.cpus_per_trial,
        gpus=resources.gpus_per_trial,
        scratch=str(store.scratch_dir),
    )


def run_sweep(
    loaded: LoadedSweep,
    data: Dataset,
    planned: list[TrialRecord],
    address: str | None = None,
    progress: Callable[[str], object] = print_line,
    ray_init: Callable[[], ModuleType] | None = None,
    on_ray_lost: Callable[[str, Callable[[], None]], object] | None = None,
    quiet: bool = False,
    verbose: bool = False,
    trackers: Trackers | None = None,
) -> SweepOutcome:
    """Train every planned trial that needs it; returns a SweepOutcome.

    `ray_init` (tests) starts Ray its own way; by default Ray starts privately or
    joins `address`. `on_ray_lost(message, end_started)`, when given, is called from a
    watchdog thread if Ray's head dies mid-run (see bench.sweep.watchdog); it should end
    the process, since Ray's driver cannot go on. `quiet`: no epoch lines; `verbose`:
    Ray Tune's own progress output and Ray's warnings besides ours. `trackers`: the live
    views (bench.tracking) to feed, brought up to date with the finished trials first.
    """
    config = loaded.config
    store = ResultsStore(loaded.store_dir)
    manifest = record_sweep(loaded, data.identity.to_dict())
    for p in planned:
        if p.status == DAMAGED:
            # Left exactly as found (a link in it is never followed) until the user acts
            # on the problems the plan named.
            continue
        for repaired in store.repair(p.trial_id):
            progress(f'{p.name}: {repaired}')
        store.write_spec(
            p.trial_id,
            p.name,
            p.spec.to_dict(),
            data.identity.to_dict(),
            network_revision(p.spec.model),
            model_stats=_stats_of(p.spec),
        )
        if p.will_train:
            store.clear_error(p.trial_id)
            legacy = store.legacy_checkpoint_file(p.trial_id)
            if legacy:
                progress(
                    f'{p.name}: {legacy} holds optimizer state as an earlier version '
                    "wrote it (MXNet's pickle): the trial reads it as data, never "
                    'unpickled, and its next checkpoint is written without pickle'
                )
    to_train = [p for p in planned if p.will_train]
    if trackers:
        trackers.catch_up([p for p in planned if not p.will_train], store)
    if not to_train:
        return _outcome(store, planned, [], manifest)

    if not verbose:
        quiet_ray_warnings()
    ray = ray_init() if ray_init else start_ray(address)
    from ray import tune

    from bench.environment import describe_environment
    from bench.sweep.tune_trial import StoreCallback, run_trial, start_store_reader

    environment = describe_environment(data.identity, cluster_devices(ray))
    store.write_environment(environment)
    resources = cpu_fallback(config.resources, ray, progress)
    check_trials_fit(ray, resources)
    if resources.gpus_per_trial:
        backends = sorted({p.spec.recipe.backend for p in to_train})
        for description in check_cluster_gpus(ray, resources.gpus_per_trial, backends):
            progress(description)
    # Checkpoints come to the driver in the trials' reports and go back to them through
    # the store reader, on this node: the nodes need no disk in common.
    store_reader = start_store_reader(store.root)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, store_reader=store_reader),
        {'cpu': resources.cpus_per_trial, 'gpu': resources.gpus_per_trial},
    )
    watchdog = (
        RayWatchdog(ray, lambda message: on_ray_lost(message, watchdog.end_started))
        if on_ray_lost
        else None
    )
    callback = StoreCallback(
        store,
        planned,
        progress,
        ray_lost=watchdog.lost if watchdog else None,
        quiet=quiet,
        max_failures=resources.max_failures,
        nodes=lambda: {n['NodeID']: n for n in ray.nodes()},
        trackers=trackers,
        environment=environment,
    )
    run_name = f'{config.name}-{time.strftime("%Y%m%d-%H%M%S")}'
    tuner = tune.Tuner(
        trainable,
        param_space={
            'trial': tune.grid_search(
                [trial_run(p, store, resources).to_config() for p in to_train]
            )
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=resources.max_concurrent_trials,
            # A fresh process per trial: MXNet fixes its threads at import and AMP
            # rewrites its operators for the whole process.
            reuse_actors=False,
            trial_name_creator=lambda t: t.config['trial']['name'],
            trial_dirname_creator=lambda t: f'{t.config["trial"]["name"]}-'
            f'{t.config["trial"]["trial_id"]}',
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(store.root / 'ray'),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            verbose=1 if verbose else 0,
        ),
    )
    started = time.monotonic()
    # Failed trials are reported from the store, with their errors; Tune's own
    # end-of-run complaints about them would only repeat that, less clearly.
    logging.getLogger('ray.tune').setLevel(logging.CRITICAL)
    # A first Ctrl-C makes Tune stop its trials and return; a trial that has then
    # neither finished nor failed tells that the run was interrupted.
    with watchdog or contextlib.nullcontext():
        try:
            tuner.fit()
        except Exception as error:  # Tune wraps what our callbacks raise in a TuneError
            failed_write = _os_error_in(error)
            if failed_write is None:
                raise
            # The store could not be written (a full disk, a read-only folder): the same
            # error as a failed write anywhere else, for the command line to explain.
            raise failed_write from None
        finally:
            ray.kill(store_reader)
    # Everything worth keeping is in the store by now; Tune's copies of it are not.
    shutil.rmtree(store.root / 'ray' / run_name, ignore_errors=True)
    outcome = _outcome(store, planned, to_train, manifest)
    ended = {
        s: sum(1 for p in to_train if outcome.statuses[p.trial_id] == s) for s in (DONE, FAILED)
    }
    outcome.interrupted = ended[DONE] + ended[FAILED] < len(to_train)
    progress(
        f'ran {len(to_train)} trial(s) in {time.monotonic() - started:.0f}s: '
        f'{ended[DONE]} finished, {ended[FAILED]} failed'
        + (
            f', {len(to_train) - ended[DONE] - ended[FAILED]} unfinished'
            if outcome.interrupted
            else ''
        )
    )
    return outcome


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The OSError among an exception's causes and contexts, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _stats_of(spec: TrialSpec) -> dict[str, int] | None:
    """Params and MACs of the trial's network, for the reports (computed from the
    architecture: no framework is imported here)."""
    try:
        params, macs = network_counts(spec.model, spec.attention, spec.attention_kwargs)
    except (TypeError, ValueError):
        # A network that cannot be built fails its own trial, where the error is
        # stored with it; the other trials must still run.
        return None
    return {'params': params, 'macs': macs}


def _outcome(
    store: ResultsStore,
    planned: list[TrialRecord],
    trained: list[TrialRecord],
    manifest: Mapping[str, Any] | None,
) -> SweepOutcome:
    store.write_results_csv(manifest)
    statuses, errors, problems = {}, {}, {}
    for p in planned:
        state = store.trial_state(p.trial_id, p.spec.recipe.epochs)
        statuses[p.trial_id], problems[p.trial_id] = state.status, state.problems
        if state.status == FAILED:
            errors[p.trial_id] = store.read_error(p.trial_id)
    return SweepOutcome(planned, trained, statuses, errors, problems)
