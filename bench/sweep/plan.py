"""What a sweep consists of and what of it the store lacks: the plan, before any training.

Framework-free: --dry-run and --report-only run here without MXNet or PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from bench.errors import BenchError
from bench.progress import print_line
from bench.records import TrialRecord
from bench.store import DAMAGED, DONE, FAILED, PARTIAL, PENDING, ResultsStore
from bench.sweep.config import expand, matches_only, trial_id
from bench.trial.data import (
    DEMO_FOLDER,
    DataError,
    DataMissing,
    demo_digits_identity,
    load_cifar10,
    load_demo_digits,
    official_identity,
)
from bench.validation import last_line, one_line
from models.names import network_revision

if TYPE_CHECKING:
    from bench.sweep.config import LoadedSweep, Resources, SweepConfig
    from bench.trial.data import Dataset
    from bench.trial.recipe import TrialSpec


class SweepError(BenchError, RuntimeError):
    """The sweep cannot start; the message says what to change."""


# A planned trial is the trial's record as the sweep declares it and the store holds it.
PlannedTrial = TrialRecord


def _data_root(loaded: LoadedSweep) -> Path | None:
    data = loaded.config.data
    if data.dataset == 'demo':
        return loaded.resolve(data.root) if data.root else loaded.base_dir / DEMO_FOLDER
    return loaded.resolve(data.root) if data.root else None


def load_sweep_data(loaded: LoadedSweep, download: bool | None = None) -> Dataset:
    """The data set the sweep declares (CIFAR-10 or the demo digits) with its identity.

    `download` overrides the sweep's data.download (reports never download)."""
    data = loaded.config.data
    if data.dataset == 'demo':
        return load_demo_digits(_data_root(loaded))
    return load_cifar10(
        _data_root(loaded), download=data.download if download is None else download
    )


def planned_data_identity(loaded: LoadedSweep) -> tuple[dict[str, Any], str | None]:
    """(identity dict, note) of the sweep's data for a plan, writing and fetching nothing:
    read from the files where they are; the demo digits computed in memory; the official
    CIFAR-10 from its published checksums when its files are not here yet (the note says
    so, and how to get them). Malformed files are a DataError, as for a run."""
    if loaded.config.data.dataset == 'demo':
        root = _data_root(loaded)
        identity = demo_digits_identity(root)
        return identity.to_dict(), None if Path(identity.source).exists() else (
            f'the demo data is not written yet: a run writes it to {root}'
        )
    try:
        return load_cifar10(_data_root(loaded), download=False).identity.to_dict(), None
    except DataMissing as error:
        first = str(error).splitlines()[0]
        how = (
            'a run downloads it (data.download is true)'
            if loaded.config.data.download
            else 'data.download is false, so fetch it first'
        )
        return official_identity(_data_root(loaded)).to_dict(), (
            f'{first} The plan below is for the official CIFAR-10, whose trial ids are '
            f'known from its published checksums; {how}: ' + str(error).splitlines()[-1]
        )


def sweep_trials(
    config: SweepConfig, data_identity: Mapping[str, Any]
) -> list[tuple[str, TrialSpec]]:
    """(trial id, spec) of every trial of the matrix, in table order, under this code
    and this data: the trials the sweep consists of now."""
    return [(trial_id(spec, data_identity), spec) for spec in expand(config)]


def sweep_manifest(
    config: SweepConfig,
    data_identity: dict[str, Any],
    overrides: Sequence[str] = (),
    sweep_file: str | None = None,
) -> dict[str, Any]:
    """The record of what the sweep consists of now, for the store's sweep.json.

    Reports read it to show these trials and no others: a stored trial of another
    recipe, data set or network definition is never taken for a current one. A sweep
    given overrides on the command line records them and its sweep file (captions say
    "sweep.yaml with recipe.epochs=1").
    """
    given = {'sweep_file': sweep_file, 'overrides': list(overrides)} if overrides else {}
    return {
        **given,
        'name': config.name,
        'models': list(config.models),
        'attentions': list(config.attentions),
        'seeds': list(config.seeds),
        'report': config.report.model_dump(),
        'data': data_identity,
        'trials': [
            {
                'trial_id': tid,
                'name': spec.name,
                'model': spec.model,
                'attention': spec.attention,
                'seed': spec.seed,
                'spec': spec.to_dict(),
                'network_revision': network_revision(spec.model),
            }
            for tid, spec in sweep_trials(config, data_identity)
        ],
    }


def record_sweep(loaded: LoadedSweep, data_identity: dict[str, Any]) -> dict[str, Any]:
    """Write the sweep's manifest into its store, and return it."""
    manifest = sweep_manifest(loaded.config, data_identity, loaded.changes, loaded.path.name)
    ResultsStore(loaded.store_dir).write_manifest(manifest)
    return manifest


def report_data_identity(
    loaded: LoadedSweep, progress: Callable[[str], object] = print_line
) -> dict[str, Any]:
    """The data identity that decides which stored trials are current, for a report.

    Read from the data files when they are there (never downloaded for a report);
    otherwise the identity the last run recorded, said as such.
    """
    try:
        if loaded.config.data.dataset == 'demo':
            return demo_digits_identity(_data_root(loaded)).to_dict()
        return load_cifar10(_data_root(loaded), download=False).identity.to_dict()
    except DataError as error:
        manifest = ResultsStore(loaded.store_dir).read_manifest()
        if manifest is None:
            raise DataError(
                f'{error}\n(the report needs the data only to tell which stored '
                'trials belong to this sweep, and no run has recorded that yet)'
            ) from None
        progress(
            f'data not found ({str(error).splitlines()[0]}); reporting the trials of '
            f'the data the last run used: {one_line(manifest["data"]["name"])}, '
            f'digest {one_line(manifest["data"]["digest"][:12])}'
        )
        return manifest['data']


def plan(
    loaded: LoadedSweep,
    data_identity: Mapping[str, Any],
    only: Mapping[str, Sequence[str]] | None = None,
    retry_failed: bool = False,
) -> list[TrialRecord]:
    """Every trial of the matrix with its status in the store (and what will train)."""
    store = ResultsStore(loaded.store_dir)
    planned = []
    for tid, spec in sweep_trials(loaded.config, data_identity):
        if only and not matches_only(spec, only):
            continue
        state = store.trial_state(tid, spec.recipe.epochs)
        status, epochs = state.status, state.epochs_done
        error = store.read_error(tid) if status == FAILED else None
        if status == FAILED and retry_failed:
            status = PARTIAL if epochs else PENDING
        planned.append(
            TrialRecord(
                tid,
                spec.name,
                spec,
                status,
                epochs,
                error,
                state.problems,
                network_revision=spec.network_revision,
                data=data_identity,
            )
        )
    return planned


def data_problems(planned: Sequence[TrialRecord], data_identity: Mapping[str, Any]) -> list[str]:
    """What keeps planned trials from training on this data, each with what to change."""
    images = data_identity['train_images']
    return [
        f'{p.name}: batch_size {p.spec.recipe.batch_size} is larger than the {images} '
        f'training images of {data_identity["name"]}; lower recipe.batch_size'
        for p in planned
        if p.will_train and p.spec.recipe.batch_size > images
    ]


def trained_in_the_files_store(loaded: LoadedSweep, planned: Sequence[TrialRecord]) -> list[str]:
    """A variant (command-line overrides) has a store of its own: the trials it would
    train that the sweep file's own store holds, finished or in part (the same ids: an
    override of models, attentions or seeds alone), would train a second time from their
    first epoch. One problem naming them and what was meant, [] when there are none."""
    from bench.sweep.config import ConfigError, load_config

    to_train = {p.trial_id: p.name for p in planned if p.will_train}
    if loaded.variant_of is None or not to_train:
        return []
    try:
        files_store = ResultsStore(load_config(loaded.path).store_dir)
    except ConfigError:  # the file alone is no sweep: it has no store
        return []
    if not files_store.root.is_dir():
        return []
    trained = [
        to_train[trial_id]
        for trial_id in files_store.trial_ids()
        if trial_id in to_train and files_store.status(trial_id)[0] in (DONE, PARTIAL)
    ]
    if not trained:
        return []
    more = f' and {len(trained) - 3} more' if len(trained) > 3 else ''
    sweep_file = one_line(loaded.path.name)
    return [
        f'{", ".join(trained[:3])}{more}: trained (finished or in part) in '
        f'{one_line(files_store.root)}, the store of the sweep {one_line(loaded.variant_of)} '
        f"in {sweep_file}, and would train again from epoch 1 in this variant's own store "
        f'{one_line(loaded.store_dir)}. For a part of the sweep, use --only (e.g. --only '
        'model=NAME,attention=NAME) instead of overriding models, attentions or seeds; to '
        f'add rows, columns or seeds, edit {sweep_file} (only the new cells train)'
    ]


def backend_problems(planned: Sequence[TrialRecord], resources: Resources) -> list[str]:
    """What keeps planned trials from training on their backends here, each with the fix."""
    from bench.trial.loop import missing_framework

    problems = []
    for backend in sorted({p.spec.recipe.backend for p in planned if p.will_train}):
        names = [p.name for p in planned if p.will_train and p.spec.recipe.backend == backend]
        which = names[0] + (f' and {len(names) - 1} more' if len(names) > 1 else '')
        missing = missing_framework(backend)
        if missing:
            problems.append(f'{which}: {missing}')
        if backend == 'torch' and resources.gpus_per_trial > 1:
            problems.append(
                f'{which}: backend torch trains a trial on one GPU; set '
                f'resources.gpus_per_trial to 1 or less (it is '
                f'{resources.gpus_per_trial:g}), several trials then share a card'
            )
    return problems


def precision_problems(planned: Sequence[TrialRecord], gpus_here: int) -> list[str]:
    """Mixed precision runs on GPUs only: what cannot train on this machine without one
    (on a cluster, its nodes' GPUs decide)."""
    mixed = sorted({p.spec.recipe.precision for p in planned if p.will_train} - {'float32'})
    if gpus_here or not mixed:
        return []
    return [
        f'precision {", ".join(mixed)} runs on GPUs only and this machine has none: run it '
        'on a machine with one, or on a cluster with GPUs (--address), or add the override '
        'recipe.precision=float32 to train in float32 here'
    ]


def format_plan(
    planned: Sequence[TrialRecord], resources: Resources, devices: str | None = None
) -> str:
    lines = []
    if devices:
        lines.append(f'devices: {devices}')
    ask = f'{resources.cpus_per_trial:g} CPU' + (
        f' + {resources.gpus_per_trial:g} GPU' if resources.gpus_per_trial else ''
    )
    width = max([len(p.name) for p in planned] + [5])
    for p in planned:
        state = {
            DONE: 'done',
            PENDING: 'pending',
            FAILED: 'failed',
            DAMAGED: 'damaged',
            PARTIAL: f'partial (epoch {p.epochs_done} of {p.spec.recipe.epochs})',
        }[p.status]
        lines.append(
            f'{p.name:<{width}}  {p.trial_id}  {state:<28}'
            + (f'  asks {ask}' if p.will_train else '')
        )
        error = last_line(p.error) if p.error else ''
        if error:
            lines.append(f'{"":<{width}}  error: {error}')
        for problem in p.problems:
            lines.append(f'{"":<{width}}  problem: {one_line(problem)}')
    counts = {
        s: sum(1 for p in planned if p.status == s)
        for s in (DONE, PARTIAL, PENDING, FAILED, DAMAGED)
    }
    lines.append(
        f'{len(planned)} trial{"" if len(planned) == 1 else "s"}: {counts[DONE]} done, '
        f'{counts[PARTIAL]} partial, '
        f'{counts[PENDING]} pending, {counts[FAILED]} failed'
        + (f', {counts[DAMAGED]} damaged' if counts[DAMAGED] else '')
    )
    return '\n'.join(lines)
