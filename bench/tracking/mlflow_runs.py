"""MLflow runs of a sweep: one experiment per sweep, one run per trial named by its cell
under a parent run of the sweep, which holds the reports as artifacts.

A trial's run is found again by its trial id (a tag), so a resumed trial continues its
run; a run whose metrics are not a prefix of the store's history (a trial deleted with
--fresh and trained again, a history the store rolled back) is deleted (MLflow keeps it
in its trash) and written again from the store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import urlparse

from bench.tracking import FAILED, FINISHED, KILLED, trial_params, trial_tags
from bench.validation import without_secrets

if TYPE_CHECKING:
    from mlflow.entities import Run

    from bench.records import TrialRecord

TRIAL_TAG, ROLE_TAG, STORE_TAG = 'bench_trial_id', 'bench_role', 'bench_store'
# MLflow 3's UI opens an experiment of unknown kind as a GenAI one (traces, no runs); a
# sweep is model training.
KIND_TAG, KIND = 'mlflow.experimentKind', 'custom_model_development'
STATUSES = {FINISHED: 'FINISHED', FAILED: 'FAILED', KILLED: 'KILLED'}
# The metric a run's epochs are compared with the store's by.
CHECKED_METRIC = 'val_loss'
# MLflow's tag values hold at most 8000 characters (5000 in older servers).
MAX_TAG = 5000
# A server that is down must not hold the sweep for minutes: MLflow's default is 7
# retries with exponential backoff. A user's own settings win.
HTTP_DEFAULTS = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '10'}
# MLflow prints a link to stdout whenever a run ends; the sweep says its link once.
QUIET_DEFAULTS = {'MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT': 'true'}


class MlflowTracker:
    def __init__(
        self,
        uri: str,
        experiment: str,
        sweep_tags: Mapping[str, str],
        store: str = '',
        quiet: bool = True,
    ) -> None:
        for key, value in {**HTTP_DEFAULTS, **(QUIET_DEFAULTS if quiet else {})}.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        # MLflow's and its database migrations' INFO lines are not ours to show (after the
        # import: MLflow sets its loggers' levels as it is imported).
        if quiet:
            for name in ('mlflow', 'alembic'):
                logging.getLogger(name).setLevel(logging.WARNING)

        self.label = f'MLflow at {without_secrets(uri)}'
        database = sqlite_file(uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        # Runs are this store's only: one sweep name on two machines shares an experiment.
        self.store = hashlib.sha1(store.encode()).hexdigest()[:16]
        self.experiment_id = self._experiment(experiment, database)
        self.parent = self._parent_run(experiment, sweep_tags)
        self.runs: dict[str, str] = {}  # trial id -> run id
        scheme = urlparse(uri).scheme
        # Where a person opens the experiment (a server's UI; None for a local store).
        self.view = (
            f'{without_secrets(uri).rstrip("/")}/#/experiments/{self.experiment_id}'
            if scheme in ('http', 'https')
            else None
        )
        self.logged: dict[str, int] = {}  # trial id -> the last epoch its run holds

    def _experiment(self, name: str, database: Path | None) -> str:
        """The sweep's experiment (reaching the tracking server: the first request)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            # A SQLite store's runs would put their artifacts in ./mlruns of whatever
            # folder the sweep runs from: they go beside the database instead.
            location = (database.parent / 'artifacts' / name).as_uri() if database else None
            return self.client.create_experiment(
                name, artifact_location=location, tags={KIND_TAG: KIND}
            )
        if found.lifecycle_stage == 'deleted':
            self.client.restore_experiment(found.experiment_id)
        if KIND_TAG not in found.tags:
            self.client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id

    def _find_run(self, key: str, value: str) -> Run | None:
        """This store's newest active run whose tag `key` is `value` (a hex id or a word)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{key} = '{value}' and tags.{STORE_TAG} = '{self.store}'",
            max_results=1,
            order_by=['attributes.start_time DESC'],
        )
        return runs[0] if runs else None

    def _parent_run(self, sweep: str, sweep_tags: Mapping[str, str]) -> str:
        found = self._find_run(ROLE_TAG, 'sweep')
        if found is None:
            run = self.client.create_run(
                self.experiment_id, run_name=sweep, tags={ROLE_TAG: 'sweep', STORE_TAG: self.store}
            )
            run_id = run.info.run_id
        else:
            run_id = found.info.run_id
            self.client.update_run(run_id, status='RUNNING')
        self._tag(run_id, sweep_tags)
        return run_id

    def _tag(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[-MAX_TAG:]) for k, v in tags.items()])

    def trial_started(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        from mlflow.entities import Param

        found, logged = self._run_agreeing_with(record.trial_id, history)
        if found is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=record.name,
                tags={
                    'mlflow.parentRunId': self.parent,
                    TRIAL_TAG: record.trial_id,
                    STORE_TAG: self.store,
                },
            )
            run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in trial_params(record).items()]
            self.client.log_batch(run_id, params=params)
        else:
            run_id = found.info.run_id
            self.client.update_run(run_id, status='RUNNING')
            if 'error' in found.data.tags:  # an earlier attempt's; this one trains again
                self.client.delete_tag(run_id, 'error')
        self.runs[record.trial_id], self.logged[record.trial_id] = run_id, logged
        self._tag(run_id, trial_tags(record, where))
        self._log_rows(record.trial_id, [r for r in history if int(r['epoch']) > logged])

    def _run_agreeing_with(
        self, trial_id: str, history: Sequence[Mapping[str, Any]]
    ) -> tuple[Run | None, int]:
        """The trial's run and the last epoch it holds, if its epochs are the store's first;
        (None, 0) when there is none or it disagrees (then it is deleted)."""
        found = self._find_run(TRIAL_TAG, trial_id)
        if found is None:
            return None, 0
        run_id = found.info.run_id
        logged = {m.step: m.value for m in self.client.get_metric_history(run_id, CHECKED_METRIC)}
        stored = {int(r['epoch']): float(r[CHECKED_METRIC]) for r in history}
        agrees = all(
            step in stored and math.isclose(value, stored[step], rel_tol=1e-9, abs_tol=1e-12)
            for step, value in logged.items()
        )
        if agrees:
            return found, max(logged, default=0)
        self.client.delete_run(run_id)
        self.runs.pop(trial_id, None)
        return None, 0

    def catch_up(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        found, logged = self._run_agreeing_with(record.trial_id, history)
        if found is not None and found.info.status == 'FINISHED' and logged == len(history):
            return  # as the store holds it: left alone (its times stay the training's)
        self.trial_started(record, history, where)
        self.trial_ended(record, FINISHED, None)

    def epoch(self, record: TrialRecord, row: Mapping[str, Any]) -> None:
        self._log_rows(record.trial_id, [row])

    def _log_rows(self, trial_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(row['epoch']))
            for row in rows
            for key, value in row.items()
            if key != 'epoch' and value is not None
        ]
        # log_batch takes at most 1000 metrics a call.
        for start in range(0, len(metrics), 900):
            self.client.log_batch(self.runs[trial_id], metrics=metrics[start : start + 900])
        if rows:
            self.logged[trial_id] = max(int(r['epoch']) for r in rows)

    def trial_ended(self, record: TrialRecord, status: str, error: str | None) -> None:
        run_id = self.runs.get(record.trial_id)
        if run_id is None:
            return
        if error:
            self._tag(run_id, {'error': error.strip().splitlines()[-1] if error.strip() else ''})
            self.client.log_text(run_id, error, 'error.txt')
        self.client.set_terminated(run_id, STATUSES[status])

    def sweep_ended(self, status: str, artifacts: Sequence[Path]) -> None:
        for path in artifacts:
            self.client.log_artifact(self.parent, str(path))
        self.client.set_terminated(self.parent, STATUSES[status])

    def close(self) -> None:
        pass  # the client holds nothing to release


def sqlite_file(uri: str) -> Path | None:
    """The database file of an sqlite:/// tracking URI (None for any other kind)."""
    parsed = urlparse(uri)
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
    path = parsed.path[1:]
    if parsed.scheme != 'sqlite' or not path or path == ':memory:':
        return None
    return Path(path)
