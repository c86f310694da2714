"""The sweep: plan the trials the store lacks, run them with Ray Tune, record everything.

Ray's experiment folder is scratch space: Tune cannot add trials to a restored
experiment, so every run starts a fresh Tuner over what the store lacks, each
trial resuming from its own latest checkpoint in the store.
"""
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from models.names import network_revision

from .config import expand, matches_only, trial_id
from .data import DEMO_FOLDER, DataError, load_cifar10, load_demo_digits
from .progress import print_line
from .recipe import TrialRun
from .store import (CHECKPOINT_DIR, DAMAGED, DONE, FAILED, LOCK_FILE, PARTIAL, PENDING,
                    ResultsStore)


class SweepError(RuntimeError):
    """The sweep cannot start; the message says what to change."""


@dataclass
class PlannedTrial:
    trial_id: str
    name: str
    spec: object
    status: str
    epochs_done: int
    error: str = None
    problems: tuple = ()     # damaged or repairable files, each with what to do

    @property
    def will_train(self):
        return self.status in (PENDING, PARTIAL)


@dataclass
class SweepOutcome:
    planned: list
    trained: list
    statuses: dict
    errors: dict
    problems: dict = None     # trial id -> problems of the trials left damaged
    interrupted: bool = False  # the run stopped (Ctrl-C) before every trial ended

    @property
    def failed(self):
        return {tid: err for tid, err in self.errors.items() if self.statuses[tid] == FAILED}

    @property
    def damaged(self):
        return {tid: p for tid, p in (self.problems or {}).items()
                if self.statuses[tid] == DAMAGED}


def load_sweep_data(loaded, download=None):
    """The data set the sweep declares (CIFAR-10 or the demo digits) with its identity.

    `download` overrides the sweep's data.download (reports never download)."""
    data = loaded.config.data
    if data.dataset == 'demo':
        root = loaded.resolve(data.root) if data.root else loaded.base_dir / DEMO_FOLDER
        return load_demo_digits(root)
    return load_cifar10(loaded.resolve(data.root) if data.root else None,
                        download=data.download if download is None else download)


def sweep_trials(config, data_identity):
    """(trial id, spec) of every trial of the matrix, in table order, under this code
    and this data: the trials the sweep consists of now."""
    return [(trial_id(spec, data_identity), spec) for spec in expand(config)]


def sweep_manifest(config, data_identity):
    """The record of what the sweep consists of now, for the store's sweep.json.

    Reports read it to show these trials and no others: a stored trial of another
    recipe, data set or network definition is never taken for a current one.
    """
    return {'name': config.name, 'models': list(config.models),
            'attentions': list(config.attentions), 'seeds': list(config.seeds),
            'report': config.report.model_dump(), 'data': data_identity,
            'trials': [{'trial_id': tid, 'name': spec.name, 'model': spec.model,
                        'attention': spec.attention, 'seed': spec.seed, 'spec': spec.to_dict(),
                        'network_revision': network_revision(spec.model)}
                       for tid, spec in sweep_trials(config, data_identity)]}


def record_sweep(loaded, data_identity):
    """Write the sweep's manifest into its store, and return it."""
    manifest = sweep_manifest(loaded.config, data_identity)
    ResultsStore(loaded.store_dir).write_manifest(manifest)
    return manifest


def report_data_identity(loaded, progress=print_line):
    """The data identity that decides which stored trials are current, for a report.

    Read from the data files when they are there (never downloaded for a report);
    otherwise the identity the last run recorded, said as such.
    """
    try:
        return load_sweep_data(loaded, download=False).identity.to_dict()
    except DataError as error:
        manifest = ResultsStore(loaded.store_dir).read_manifest()
        if manifest is None:
            raise DataError(f'{error}\n(the report needs the data only to tell which stored '
                            'trials belong to this sweep, and no run has recorded that yet)') \
                from None
        progress(f"data not found ({str(error).splitlines()[0]}); reporting the trials of "
                 f"the data the last run used: {manifest['data'].get('name')}, "
                 f"digest {str(manifest['data'].get('digest'))[:12]}")
        return manifest['data']


def plan(loaded, data_identity, only=None, retry_failed=False):
    """Every trial of the matrix with its status in the store (and what will train)."""
    store = ResultsStore(loaded.store_dir)
    planned = []
    for tid, spec in sweep_trials(loaded.config, data_identity):
        if only and not matches_only(spec, only):
            continue
        state = store.trial_state(tid)
        status, epochs = state.status, state.epochs_done
        error = store.read_error(tid) if status == FAILED else None
        if status == FAILED and retry_failed:
            status = PARTIAL if epochs else PENDING
        planned.append(PlannedTrial(tid, spec.name, spec, status, epochs, error,
                                    state.problems))
    return planned


def data_problems(planned, data_identity):
    """What keeps planned trials from training on this data, each with what to change."""
    images = data_identity['train_images']
    return [f'{p.name}: batch_size {p.spec.recipe.batch_size} is larger than the {images} '
            f"training images of {data_identity['name']}; lower recipe.batch_size"
            for p in planned if p.will_train and p.spec.recipe.batch_size > images]


def local_devices(resources):
    """What --dry-run says about this machine's devices and what trials will get."""
    from .gpu import describe_gpus, physical_gpus
    from .threads import available_cpus
    gpus = physical_gpus()
    cpus = available_cpus()
    text = f'{cpus} CPU cores; {describe_gpus(gpus)}'
    if resources.cpus_per_trial > cpus:
        text += (f' (cpus_per_trial {resources.cpus_per_trial:g} is more than this machine '
                 'has: a run here is refused; on a cluster, each node must have that many)')
    if resources.gpus_per_trial and not gpus:
        text += ' (gpus_per_trial ignored: trials run on CPUs)'
    return text


def format_plan(planned, resources, devices=None):
    lines = []
    if devices:
        lines.append(f'devices: {devices}')
    ask = f"{resources.cpus_per_trial:g} CPU" + (
        f" + {resources.gpus_per_trial:g} GPU" if resources.gpus_per_trial else '')
    width = max([len(p.name) for p in planned] + [5])
    for p in planned:
        state = {DONE: 'done', PENDING: 'pending', FAILED: 'failed', DAMAGED: 'damaged',
                 PARTIAL: f'partial (epoch {p.epochs_done} of {p.spec.recipe.epochs})'}[p.status]
        lines.append(f'{p.name:<{width}}  {p.trial_id}  {state:<28}'
                     + (f'  asks {ask}' if p.will_train else ''))
        if p.error:
            lines.append(f'{"":<{width}}  error: {p.error.strip().splitlines()[-1]}')
        for problem in p.problems:
            lines.append(f'{"":<{width}}  problem: {problem}')
    counts = {s: sum(1 for p in planned if p.status == s) for s in (DONE, PARTIAL, PENDING,
                                                                    FAILED, DAMAGED)}
    lines.append(f'{len(planned)} trials: {counts[DONE]} done, {counts[PARTIAL]} partial, '
                 f'{counts[PENDING]} pending, {counts[FAILED]} failed'
                 + (f', {counts[DAMAGED]} damaged' if counts[DAMAGED] else ''))
    return '\n'.join(lines)


def start_ray(address=None, num_cpus=None, num_gpus=None):
    """Join the cluster at `address` (or RAY_ADDRESS), else start Ray on this machine."""
    import ray
    os.environ.setdefault('RAY_AIR_NEW_OUTPUT', '0')
    os.environ.setdefault('TUNE_DISABLE_AUTO_CALLBACK_LOGGERS', '1')
    if ray.is_initialized():
        return ray
    options = dict(include_dashboard=False, logging_level=logging.WARNING,
                   log_to_driver=False, configure_logging=True)
    address = address or os.environ.get('RAY_ADDRESS')
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **options)
    return ray


def check_shared_storage(ray, folder):
    """Every alive node must see `folder`: trials resume from checkpoints kept there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    nodes = [n for n in ray.nodes() if n.get('Alive')]
    if len(nodes) < 2:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f'.storage-probe-{os.getpid()}'
    probe.write_text('probe')

    @ray.remote(num_cpus=0)
    def sees(path):
        return os.path.isfile(path)
    try:
        answers = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n['NodeID'], soft=False)).remote(str(probe)) for n in nodes], timeout=60)
    finally:
        probe.unlink()
    blind = [n.get('NodeManagerAddress', n['NodeID']) for n, ok in zip(nodes, answers) if not ok]
    if blind:
        raise SweepError(
            f"the results folder {folder} is not visible on node(s) {', '.join(blind)}; "
            'on a cluster, outputs.results in sweep.yaml must be on storage every node '
            'mounts at the same path (e.g. NFS)')


def cluster_devices(ray):
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get('Alive'))
    return (f"{nodes} node(s), {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs")


def check_cluster_gpus(ray, gpus_per_trial):
    """On every node that offers GPUs: a CUDA build of MXNet and only supported cards.

    Runs as a CPU-only task on each node, reading the cards through NVML, so no
    CUDA context is created before the trials start.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .gpu import GPUError

    @ray.remote(num_cpus=0)
    def node_check():
        from bench.gpu import GPUError as RemoteGPUError
        from bench.gpu import check_gpus, describe_gpus
        try:
            return True, describe_gpus(check_gpus(gpus_per_trial))
        except RemoteGPUError as error:
            return False, str(error)
    nodes = [n for n in ray.nodes() if n.get('Alive') and n.get('Resources', {}).get('GPU')]
    answers = ray.get([node_check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n['NodeID'], soft=False)).remote() for n in nodes], timeout=120)
    problems = [f"node {n.get('NodeManagerAddress', n['NodeID'])}: {text}"
                for n, (ok, text) in zip(nodes, answers) if not ok]
    if problems:
        raise GPUError('\n'.join(problems))
    return [text for _, text in answers]


def check_trials_fit(ray, resources):
    """Refuse a trial that no node of the cluster can hold (Tune would wait forever)."""
    nodes = [n.get('Resources', {}) for n in ray.nodes() if n.get('Alive')]
    for kind, asked in (('CPU', resources.cpus_per_trial), ('GPU', resources.gpus_per_trial)):
        largest = max((node.get(kind, 0) for node in nodes), default=0)
        if asked and asked > largest:
            raise SweepError(
                f'each trial asks for {asked:g} {kind}s, but the largest node of the Ray '
                f'cluster has {largest:g}; lower resources.{kind.lower()}s_per_trial in the '
                'sweep file (a cluster that scales up must offer such a node first)')


def cpu_fallback(resources, ray, progress=print_line):
    """Resources to ask for: on a cluster without GPUs, GPU trials run on CPUs instead."""
    if resources.gpus_per_trial and not ray.cluster_resources().get('GPU', 0):
        progress(f'no GPU in the Ray cluster: gpus_per_trial {resources.gpus_per_trial:g} '
                 'ignored, trials run on CPUs')
        return resources.model_copy(update={'gpus_per_trial': 0})
    return resources


def trial_run(planned, store, resources):
    # The trial resumes from the store's checkpoint whenever one is there, also when
    # Tune restarts it after a crash; the folder is on storage every node reaches.
    return TrialRun(trial_id=planned.trial_id, name=planned.name, spec=planned.spec,
                    store_checkpoint=str(store.trial_dir(planned.trial_id) / CHECKPOINT_DIR),
                    cpus=resources.cpus_per_trial, gpus=resources.gpus_per_trial)


def run_sweep(loaded, data, planned, address=None, progress=print_line, ray_init=None):
    """Train every planned trial that needs it; returns a SweepOutcome.

    `ray_init` (tests) starts Ray its own way; by default Ray starts locally or
    joins `address`.
    """
    config = loaded.config
    store = ResultsStore(loaded.store_dir)
    manifest = record_sweep(loaded, data.identity.to_dict())
    for p in planned:
        for repaired in store.repair(p.trial_id):
            progress(f'{p.name}: {repaired}')
        store.write_spec(p.trial_id, p.name, p.spec.to_dict(), data.identity.to_dict(),
                         network_revision(p.spec.model), model_stats=_stats_of(p.spec))
        if p.will_train:
            store.clear_error(p.trial_id)
    to_train = [p for p in planned if p.will_train]
    if not to_train:
        return _outcome(store, planned, [], manifest)

    ray = ray_init() if ray_init else start_ray(address)
    check_shared_storage(ray, store.root)
    from ray import tune

    from .environment import describe_environment
    from .tune_trial import StoreCallback, run_trial
    store.write_environment(describe_environment(loaded.base_dir, data.identity,
                                                 cluster_devices(ray)))
    resources = cpu_fallback(config.resources, ray, progress)
    check_trials_fit(ray, resources)
    if resources.gpus_per_trial:
        for description in check_cluster_gpus(ray, resources.gpus_per_trial):
            progress(description)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data),
        {'cpu': resources.cpus_per_trial, 'gpu': resources.gpus_per_trial})
    callback = StoreCallback(store, planned, progress)
    run_name = f'{config.name}-{time.strftime("%Y%m%d-%H%M%S")}'
    tuner = tune.Tuner(
        trainable,
        param_space={'trial': tune.grid_search(
            [trial_run(p, store, resources).to_config() for p in to_train])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=resources.max_concurrent_trials,
            # A fresh process per trial: MXNet fixes its threads at import and AMP
            # rewrites its operators for the whole process.
            reuse_actors=False,
            trial_name_creator=lambda t: t.config['trial']['name'],
            trial_dirname_creator=lambda t: f"{t.config['trial']['name']}-"
                                            f"{t.config['trial']['trial_id']}"),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(store.root / 'ray'),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0))
    started = time.monotonic()
    # Failed trials are reported from the store, with their errors; Tune's own
    # end-of-run complaints about them would only repeat that, less clearly.
    logging.getLogger('ray.tune').setLevel(logging.CRITICAL)
    # A first Ctrl-C makes Tune stop its trials and return; a trial that has then
    # neither finished nor failed tells that the run was interrupted.
    tuner.fit()
    # Everything worth keeping is in the store by now; Tune's copies of it are not.
    shutil.rmtree(store.root / 'ray' / run_name, ignore_errors=True)
    outcome = _outcome(store, planned, to_train, manifest)
    ended = {s: sum(1 for p in to_train if outcome.statuses[p.trial_id] == s)
             for s in (DONE, FAILED)}
    outcome.interrupted = ended[DONE] + ended[FAILED] < len(to_train)
    progress(f'ran {len(to_train)} trial(s) in {time.monotonic() - started:.0f}s: '
             f'{ended[DONE]} finished, {ended[FAILED]} failed'
             + (f', {len(to_train) - ended[DONE] - ended[FAILED]} unfinished'
                if outcome.interrupted else ''))
    return outcome


_STATS_CACHE = {}


def _stats_of(spec):
    """Params and MACs of the trial's network (CPU, no GPU touched), for the reports."""
    key = (spec.model, spec.attention, tuple(sorted(spec.attention_kwargs.items())))
    if key not in _STATS_CACHE:
        from models import model_stats
        try:
            stats = model_stats(spec.model, spec.attention,
                                attention_kwargs=spec.attention_kwargs)
        except (TypeError, ValueError):
            # A network that cannot be built fails its own trial, where the error is
            # stored with it; the other trials must still run.
            _STATS_CACHE[key] = None
        else:
            _STATS_CACHE[key] = {'params': stats.params, 'macs': stats.macs}
    return _STATS_CACHE[key]


def _outcome(store, planned, trained, manifest):
    store.write_results_csv(manifest)
    statuses, errors, problems = {}, {}, {}
    for p in planned:
        state = store.trial_state(p.trial_id)
        statuses[p.trial_id], problems[p.trial_id] = state.status, state.problems
        if state.status == FAILED:
            errors[p.trial_id] = store.read_error(p.trial_id)
    return SweepOutcome(planned, trained, statuses, errors, problems)


def remove_store(loaded):
    """Delete everything the sweep's results folder holds but its lock (for --fresh)."""
    if loaded.store_dir.exists():
        for path in loaded.store_dir.iterdir():
            if path.name == LOCK_FILE:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
