"""The two halves of a trial under Ray Tune.

`run_trial` runs in a Ray worker: it trains one spec and reports every epoch
with its checkpoint. `StoreCallback` runs in the driver: it turns those reports
into the results store, so the store is written in one place even when trials
run on other nodes.
"""
import os
import tempfile
import time
from pathlib import Path

from ray import tune

from bench.progress import print_line
from bench.trial.recipe import TrialRun

DIVERGED_KEY = 'diverged'
# What each trial reports about where and how it ran; kept in its final record.
PLACEMENT_KEYS = ('node_id', 'omp_threads', 'devices', 'kernels', 'kernel_isa', 'fusion', 'cuda',
                  'cudnn', 'tf32')


def run_trial(param_space, data=None):
    """Ray Tune function trainable for one TrialRun (built by bench.sweep): the trial's
    backend opens a session on the devices Ray assigned, and bench.trial.loop drives it."""
    run = TrialRun.from_config(param_space['trial'])
    from bench.trial.threads import pin_cpus
    threads = pin_cpus(run.cpus)   # before the framework is imported in this worker
    import ray

    from bench.gpu import (apply_tf32, check_gpus, driver_cuda_version, gluon_fusion_setting,
                           physical_gpus, share_card, visible_gpus)
    from bench.trial.loop import TrainingDiverged, get_backend, run_epochs

    fusion = None
    if run.gpus:
        # Before the framework touches the device: an unsupported card gets one clear error.
        check_gpus(run.gpus, gpus=visible_gpus(physical_gpus()),
                   backend=run.spec.recipe.backend)
        share_card(run.gpus, run.spec.recipe.backend)
        if run.spec.recipe.backend == 'gluon':
            fusion = gluon_fusion_setting(driver_cuda_version())[1]
            apply_tf32(run.spec.recipe)
    backend = get_backend(run.spec.recipe.backend)
    session = backend.open_session(run.spec, data,
                                   backend.trial_devices(run.gpus, ray.get_gpu_ids()))
    restored = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix=f'{run.trial_id}-',
                                     dir=scratch_root(run.scratch)) as scratch:
        candidates = [run.store_checkpoint]
        if restored is not None:         # Tune restarting this trial after a failure
            candidates.append(restored.to_directory(str(Path(scratch) / 'restored')))
        resume_from = newest_checkpoint(candidates)

        placement = {'node_id': ray.get_runtime_context().get_node_id(),
                     'omp_threads': threads, 'pid': os.getpid(),
                     'fusion': fusion, **session.describe()}

        def report(metrics, checkpoint_path):
            tune.report(dict(metrics, **placement),
                        checkpoint=tune.Checkpoint.from_directory(str(checkpoint_path)))
        try:
            run_epochs(session, run.spec, data, checkpoint_dir=Path(scratch) / 'checkpoints',
                       resume_from=resume_from, on_epoch=report)
        except TrainingDiverged as error:
            # Deterministic: retrying would diverge again, so it is reported as a
            # result (stored as the trial's error) rather than raised to Tune.
            tune.report({DIVERGED_KEY: str(error), 'epoch': error.epoch + 1})


def scratch_root(folder):
    """The store's scratch folder for a trial's temporary files, created where missing;
    the system's temporary folder where this node cannot write there."""
    if folder:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            pass
    return None


def newest_checkpoint(folders):
    """The checkpoint folder with the most epochs among `folders` (None if none is complete).

    Tune's restored checkpoint and the store's copy are both considered: a crash
    can leave either one behind the other.
    """
    from bench.trial.checkpoint import STATE_FILE, read_state
    found = [(read_state(f)['epoch'], str(f)) for f in folders
             if f and (Path(f) / STATE_FILE).is_file()]
    return max(found)[1] if found else None


class StoreCallback(tune.Callback):
    """Driver-side: epoch rows, checkpoints, final metrics and errors into the store."""

    def __init__(self, store, planned, progress=print_line, ray_lost=None):
        self.store = store
        # Why Ray's head is gone, if it is: trials that end with it did not fail, and
        # resume at the next run.
        self.ray_lost = ray_lost
        self.planned = {p.trial_id: p for p in planned}
        self.progress = progress
        self.started = time.monotonic()
        self.diverged = set()
        self.epoch_seconds = []
        self.finished = set()
        self.placement = {}   # trial id -> {PLACEMENT_KEYS: what it reported}

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment (for a restore this project never
        # does); the watchdog's threads and processes are not data.
        return dict(self.__dict__, ray_lost=None)

    def _trial_id(self, trial):
        return TrialRun.from_config(trial.config['trial']).trial_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = self._trial_id(trial)
        planned = self.planned[trial_id]
        if DIVERGED_KEY in result:
            self.diverged.add(trial_id)
            self.store.write_error(trial_id, result[DIVERGED_KEY],
                                   self.store.checkpoint_epoch(trial_id))
            self.progress(f'{planned.name}: {result[DIVERGED_KEY]}')
            return
        self.store.record_epoch(trial_id, result)
        self.placement[trial_id] = {key: result.get(key) for key in PLACEMENT_KEYS}
        self.epoch_seconds.append(result['epoch_seconds'])
        self.progress(
            f"{planned.name} epoch {result['epoch']}/{planned.spec.recipe.epochs}: "
            f"train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}, "
            f"val acc {result['val_acc']:.4f} ({result['epoch_seconds']:.1f}s)"
            f"{self._time_left(trials)}")

    def _time_left(self, trials):
        """Remaining epochs x mean epoch time / trials running at once."""
        if not self.epoch_seconds:
            return ''
        remaining = 0
        for trial in trials:
            planned = self.planned[self._trial_id(trial)]
            if planned.trial_id in self.finished or planned.trial_id in self.diverged:
                continue
            done = trial.last_result.get('epoch', planned.epochs_done) if trial.last_result \
                else planned.epochs_done
            remaining += max(0, planned.spec.recipe.epochs - int(done))
        running = max(1, sum(1 for t in trials if t.status == 'RUNNING'))
        seconds = remaining * (sum(self.epoch_seconds) / len(self.epoch_seconds)) / running
        return f'; about {format_duration(seconds)} left' if remaining else ''

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        with checkpoint.as_directory() as folder:
            self.store.record_checkpoint(self._trial_id(trial), folder)

    def on_trial_complete(self, iteration, trials, trial, **info):
        trial_id = self._trial_id(trial)
        self.finished.add(trial_id)
        if trial_id in self.diverged:
            return
        planned = self.planned[trial_id]
        history = self.store.read_history(trial_id)
        if len(history) < planned.spec.recipe.epochs:
            self.store.write_error(trial_id, f'the trial ended after {len(history)} of '
                                   f'{planned.spec.recipe.epochs} epochs', len(history))
            return
        final = dict(history[-1])
        final.update(epochs=len(history), total_seconds=sum(r['epoch_seconds'] for r in history),
                     finished_at=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                     **self.placement.get(trial_id, dict.fromkeys(PLACEMENT_KEYS)))
        self.store.write_final(trial_id, final)
        self.progress(f'{planned.name} done: val acc {final["val_acc"]:.4f}')

    def on_trial_error(self, iteration, trials, trial, **info):
        trial_id = self._trial_id(trial)
        self.finished.add(trial_id)
        if self.ray_lost and self.ray_lost():
            return
        message = _error_text(trial)
        self.store.write_error(trial_id, message, self.store.checkpoint_epoch(trial_id))
        self.progress(f'{self.planned[trial_id].name} failed: {message.splitlines()[-1]}')


def _error_text(trial):
    path = getattr(trial, 'error_file', None)
    if path and Path(path).is_file():
        return Path(path).read_text(errors='replace').strip()
    return str(getattr(trial, 'error_msg', None) or 'the trial failed (no error text from Ray)')


def format_duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f'{hours}h{minutes:02d}m' if hours else (f'{minutes}m{seconds:02d}s' if minutes
                                                     else f'{seconds}s')
