"""Live views of a sweep in the tools researchers already watch runs in: TensorBoard and
MLflow, as the sweep file's `tracking:` asks.

The driver feeds them from what it writes into the store, so the store stays the record
and a tracker is a view of it that catches up: a trial it hears of is first brought up to
the store's history (the epochs a killed run stored but never sent, a trial finished
before tracking was on), and a view that disagrees with the store is rewritten from it.
A tracker that cannot be reached at the start, or fails later, is one warning and is
left out; the sweep goes on, and the next run brings it up to date.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from bench.progress import print_line
from bench.records import DONE
from bench.store import TENSORBOARD_DIR
from bench.validation import without_secrets

if TYPE_CHECKING:
    from bench.records import TrialRecord
    from bench.store import ResultsStore
    from bench.sweep.config import LoadedSweep

# How a trial or a sweep ended, as the trackers are told.
FINISHED, FAILED, KILLED = 'finished', 'failed', 'killed'
# The embedded MLflow store of `mlflow: true`, in the results folder: one database for
# every sweep there, an experiment each.
EMBEDDED_MLFLOW_DIR = 'mlflow'


class Tracker(Protocol):
    """One live view. Each method may raise: the caller drops the tracker, with a warning."""

    label: str

    def trial_started(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        """The trial trains (again): `history` is the store's epoch rows it resumes after,
        `where` where it runs (node, devices, device kind)."""

    def epoch(self, record: TrialRecord, row: Mapping[str, Any]) -> None:
        """One epoch row, as the store has just recorded it."""

    def trial_ended(self, record: TrialRecord, status: str, error: str | None) -> None: ...

    def catch_up(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        """A finished trial this run does not train: written whole unless the view holds
        it as the store does."""

    def sweep_ended(self, status: str, artifacts: Sequence[Path]) -> None:
        """The run ended (`status` of the sweep as a whole); `artifacts`: the reports."""

    def close(self) -> None: ...


def trial_params(record: TrialRecord) -> dict[str, Any]:
    """What a trial trains, flat, as the trackers' hyperparameters: the cell, the trial id
    and every recipe field (lists as text)."""
    spec = record.spec
    params = {
        'model': spec.model,
        'attention': spec.attention,
        'seed': spec.seed,
        'trial_id': record.trial_id,
        **{f'attention.{k}': v for k, v in sorted(spec.attention_kwargs.items())},
        **{f'recipe.{k}': v for k, v in spec.recipe.model_dump().items()},
    }
    return {k: _param_value(v) for k, v in params.items()}


def _param_value(value: object) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(list(value)) if isinstance(value, (tuple, list)) else str(value)


def trial_tags(record: TrialRecord, where: Mapping[str, Any]) -> dict[str, str]:
    """What says where a trial's numbers come from: its data, network revision and device."""
    data = record.data or {}
    tags = {
        'backend': record.spec.recipe.backend,
        'network_revision': record.network_revision,
        'data.name': data.get('name'),
        'data.digest': data.get('digest'),
        'data.official': data.get('official'),
        'device_kind': where.get('device_kind'),
        'devices': where.get('devices'),
        'node_ip': where.get('node_ip'),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


@dataclass
class Trackers:
    """The sweep's trackers behind one seam: each call goes to every tracker still in; a
    tracker that raises is dropped with one warning, and the sweep goes on."""

    trackers: list
    warn: Callable[[str], object] = print_line

    def __post_init__(self) -> None:
        self.open: dict[str, TrialRecord] = {}  # trials started and not ended

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:  # any failure of a view must leave the sweep running
                self.trackers.remove(tracker)
                self.warn(
                    f'warning: {tracker.label} stopped taking results '
                    f'({short_reason(error)}); the sweep goes on without it, the store '
                    'keeps every result, and the next run brings it up to date'
                )

    def trial_started(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        self.open[record.trial_id] = record
        self._each('trial_started', record, list(history), dict(where))

    def epoch(self, record: TrialRecord, row: Mapping[str, Any]) -> None:
        self._each('epoch', record, dict(row))

    def trial_ended(self, record: TrialRecord, status: str, error: str | None = None) -> None:
        if self.open.pop(record.trial_id, None) is not None:
            self._each('trial_ended', record, status, error)

    def catch_up(self, records: Sequence[TrialRecord], store: ResultsStore) -> None:
        """Trials the store holds as finished, which this run does not train: each view
        gets those it lacks, whole (a view opened after they trained, or one that was
        down); one that holds a trial as the store does is left as it is."""
        for record in records:
            if record.status != DONE:
                continue
            history = store.read_history(record.trial_id)
            self._each('catch_up', record, history, dict(record.final or {}))

    def sweep_ended(self, status: str, artifacts: Sequence[Path] = ()) -> None:
        """Trials still open did not end (an interrupted run): they are killed, to resume."""
        for record in list(self.open.values()):
            self.trial_ended(record, KILLED, None)
        self._each('sweep_ended', status, [Path(p) for p in artifacts if Path(p).is_file()])

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception:  # closing a view that already failed has nothing to report
                pass
        self.trackers = []


# The cause of a failed request, as a person needs it, out of the long texts of MLflow's
# and urllib3's exceptions (which quote the whole chain).
REASONS = (
    ('Connection refused', 'connection refused: is the server running?'),
    ('Name or service not known', 'unknown host'),
    ('nodename nor servname', 'unknown host'),
    ('Temporary failure in name resolution', 'unknown host'),
    ('timed out', 'no answer in time'),
    ('CERTIFICATE_VERIFY_FAILED', "the server's TLS certificate is not trusted"),
    ('SSL', 'no TLS at that address (is it http://, not https://?)'),
    ('404 != 200', 'no MLflow API at that address (HTTP 404): is it an MLflow server?'),
    ('MLFLOW_ALLOW_FILE_STORE', 'MLflow 3 refuses file:// stores: use sqlite:///path/mlflow.db'),
)


def short_reason(error: BaseException) -> str:
    """Why a tracker failed, in a line."""
    text = without_secrets(str(error).strip())
    for sign, reason in REASONS:
        if sign in text:
            return reason
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:300] + '...'


def embedded_mlflow_uri(loaded: LoadedSweep) -> str:
    """`mlflow: true`'s store: SQLite in the results folder, shared by its sweeps."""
    folder = loaded.resolve(loaded.config.outputs.results) / EMBEDDED_MLFLOW_DIR
    return f'sqlite:///{folder / "mlflow.db"}'


def mlflow_uri(loaded: LoadedSweep) -> str | None:
    setting = loaded.config.tracking.mlflow
    if setting is True:
        return embedded_mlflow_uri(loaded)
    return setting or None


def tensorboard_dir(loaded: LoadedSweep) -> Path:
    return loaded.store_dir / TENSORBOARD_DIR


def describe_tracking(loaded: LoadedSweep) -> list[str]:
    """Where to watch the sweep, one line per tracker the sweep file turns on."""
    lines = []
    if loaded.config.tracking.tensorboard:
        folder = tensorboard_dir(loaded)
        lines.append(
            f'tracking: TensorBoard event files in {folder}; watch with '
            f'{_command("tensorboard")} --logdir {shlex.quote(str(folder))}'
        )
    uri = mlflow_uri(loaded)
    if uri:
        local = not uri.startswith(('http://', 'https://', 'databricks'))
        how = (
            f'{_command("mlflow")} ui --backend-store-uri {shlex.quote(without_secrets(uri))}'
            if local
            else 'its UI'
        )
        where = f'{loaded.config.name} at {without_secrets(uri)}'
        lines.append(f'tracking: MLflow experiment {where}; watch with {how}')
    return lines


def _command(name: str) -> str:
    """A tool as a person runs it from here: the one beside this Python (a virtual
    environment's bin folder) where it is there."""
    beside = Path(sys.executable).parent / name
    return shlex.quote(str(beside)) if beside.is_file() else name


def tracking_problems(loaded: LoadedSweep) -> list[str]:
    """What the sweep file's tracking needs and this environment lacks (a package)."""
    import importlib.util

    wanted = []
    if loaded.config.tracking.tensorboard:
        wanted.append(('tensorboard', 'tensorboardX'))
    if loaded.config.tracking.mlflow:
        wanted.append(('mlflow', 'mlflow'))
    return [
        f'tracking.{key} is on, but the package {package} is not installed here: install '
        "the project's tracking extra (pip install -e '.[tracking]', which make install "
        f'does), or set tracking.{key}: false'
        for key, package in wanted
        if importlib.util.find_spec(package) is None
    ]


def open_trackers(
    loaded: LoadedSweep, warn: Callable[[str], object] = print_line, verbose: bool = False
) -> Trackers:
    """The trackers the sweep file turns on, each reached now; one that cannot be is
    one warning and is left out."""
    openers: list[tuple[str, Callable[[], Tracker]]] = []
    if loaded.config.tracking.tensorboard:
        from bench.tracking.tensorboard_events import TensorBoardTracker

        openers.append(('TensorBoard', lambda: TensorBoardTracker(tensorboard_dir(loaded))))
    uri = mlflow_uri(loaded)
    if uri:
        from bench.tracking.mlflow_runs import MlflowTracker

        openers.append(
            (
                f'MLflow at {without_secrets(uri)}',
                lambda: MlflowTracker(
                    uri,
                    loaded.config.name,
                    _sweep_tags(loaded),
                    store=store_key(loaded),
                    quiet=not verbose,
                ),
            )
        )
    trackers = []
    for label, opener in openers:
        try:
            tracker = opener()
        except Exception as error:  # a view that cannot be reached must not stop the sweep
            warn(
                f'warning: {label} cannot be used ({short_reason(error)}); the sweep '
                'goes on without it and the store keeps every result (the next run brings '
                'it up to date)'
            )
            continue
        trackers.append(tracker)
        if getattr(tracker, 'view', None):
            warn(f'tracking: {tracker.label}: open {tracker.view}')
    return Trackers(trackers, warn)


def _sweep_tags(loaded: LoadedSweep) -> dict[str, str]:
    config = loaded.config
    return {
        'sweep_file': loaded.described,
        'models': ', '.join(config.models),
        'attentions': ', '.join(config.attentions),
        'seeds': ', '.join(map(str, config.seeds)),
        'store': store_key(loaded),
    }


def store_key(loaded: LoadedSweep) -> str:
    """Which store a tracker's runs belong to (host and folder): stores of one sweep name
    on several machines share an experiment, never each other's runs."""
    import socket

    return f'{socket.gethostname()}:{loaded.store_dir}'
