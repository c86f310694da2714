"""The results store: the record of a sweep, one folder per trial, keyed by trial id.

    results/<sweep>/
      sweep.json                 what the sweep consists of now: its trial ids, layout,
                                 report options; reports show these trials and no others
      results.csv                one row per trial (pandas)
      sweep.lock                 while a sweep runs on the store: host, process id, since
      environment.json           packages, git commit, devices of the last run
      trials/<trial_id>/
        spec.json                the trial's spec, name, data identity
        history.csv              one row per finished epoch
        checkpoint/              the latest epoch's checkpoint (copied from Ray's)
        final.json               present only once the trial finished: its last
                                 epoch, where it ran, and the environment (packages,
                                 commit, data) of the run that finished it
        error.json               present when it failed

Every file is written atomically. A trial is done only when final.json was
renamed into place; anything else is resumed, never trusted. Paths inside the
store are relative to it, so the folder can be moved.

Nothing in a store is a link (but its root, which the user chose): a crafted or
badly copied store could otherwise make a report show a file from elsewhere (a
credential in report.html) or make a run write or delete files elsewhere. A trial
folder with a link on the way to it or inside it is damaged; nothing is read or
written through it, and the link is named with what to do.

Reading never crashes on a damaged file and never hides one: `trial_state` is
the one rule for a trial's status, used by the sweep and the reports alike, and
it names every problem it finds with the file and what to do. The checkpoint's
state.json holds the whole history too, so a cut history.csv is read from it and
rewritten by the next run, and a checkpoint left as `.checkpoint.retired` by a
crash in the middle of its swap is used and put back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, Mapping, NamedTuple

from bench.errors import BenchError
from bench.fileio import (
    not_a_folder_in_the_way,
    publish_dir_atomic,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from bench.records import (  # noqa: F401
    DAMAGED,
    DONE,
    FAILED,
    PARTIAL,
    PENDING,
    STATUSES,
    TRIAL_COLUMNS,
    TrialRecord,
    check_record,
    identity_differences,
)
from bench.trial.checkpoint import LEGACY_PICKLE_FILE, STATE_FILE, read_state
from bench.validation import bounded_repr, one_line, spreadsheet_text

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_DIR, RETIRED_CHECKPOINT_DIR = 'checkpoint', '.checkpoint.retired'
LOCK_FILE = 'sweep.lock'
MANIFEST_FILE = 'sweep.json'
# What a trial reports after every epoch: one row of history.csv.
HISTORY_FIELDS = (
    'epoch',
    'lr',
    'train_loss',
    'train_acc',
    'val_loss',
    'val_acc',
    'epoch_seconds',
    'train_seconds',
    'images_per_second',
)
# The metrics a results table may show, as its columns are labelled.
METRIC_LABELS = {
    'val_loss': 'val loss',
    'val_acc': 'val acc',
    'train_loss': 'train loss',
    'train_acc': 'train acc',
}
REPORT_METRICS = tuple(METRIC_LABELS)
LOWER_IS_BETTER = {'val_loss', 'train_loss'}


# What a store holds at its top, beside trial folders named by their ids: --fresh
# deletes these and nothing else, so a results folder that is not a store loses nothing.
STORE_FILES = (
    MANIFEST_FILE,
    'results.csv',
    'environment.json',
    'table.md',
    'cells.csv',
    'table.tex',
)
SCRATCH_DIR = 'ray'
# bench.tracking's TensorBoard event files: a view of the store, written again from it.
TENSORBOARD_DIR = 'tensorboard'
TRIAL_ID_PATTERN = re.compile(r'^[0-9a-f]{12}$')


class StoreLocked(BenchError, RuntimeError):
    """Another sweep is running on this store; the message says who and what to do."""


class LinkInStore(BenchError, RuntimeError):
    """A link where the store would write a trial's files; the message names it."""


class NotAStore(BenchError, RuntimeError):
    """The results folder holds something that is not a results store of this project."""


class ResultsStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextmanager
    def lock(self, progress: Callable[[str], object] = print) -> Iterator[None]:
        """Hold the store for one sweep. A second run is refused with who holds it (host,
        process id, since when); a lock whose process is gone from this host is taken over."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        mine = {
            'host': socket.gethostname(),
            'pid': os.getpid(),
            'since': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
        }
        while not _create_with(path, json.dumps(mine)):
            if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
                raise StoreLocked(
                    f'{path} is not a lock file of this project (a folder, a '
                    'link or a special file): if no sweep is running on '
                    f'{self.root}, delete it and run again'
                )
            holder, problem = read_json_checked(path)
            if problem:
                # A lock is written whole (a link of a complete file), so this one was
                # not written by a sweep of this project, or was damaged since.
                raise StoreLocked(
                    f'{problem}. The lock cannot tell whether a sweep is running on '
                    f'{self.root}: if none is (no run_sweep.py on any machine using this '
                    f'folder), delete {path} and run again'
                )
            if holder is None:  # released while we looked
                continue
            if holder.get('host') == mine['host'] and not _process_alive(holder.get('pid')):
                stale = path.with_name(f'.{LOCK_FILE}.stale-{os.getpid()}')
                try:
                    path.rename(stale)  # only one of several takers wins this rename
                except FileNotFoundError:
                    continue
                stale.unlink()
                progress(
                    f'took over the lock of {self.root}: process {holder.get("pid")} '
                    f'(since {one_line(holder.get("since"))}) is no longer running'
                )
                continue
            raise StoreLocked(
                f'another sweep is running on {self.root}: process {holder.get("pid")} on '
                f'host {holder.get("host")}, since {holder.get("since")}. Wait for it to '
                f'finish; if it is gone (a crashed machine), delete {path}'
            )
        try:
            yield
        finally:
            self.release_lock()

    def release_lock(self) -> None:
        """Remove the store's lock if this process holds it (also from a thread that must
        end the process before the lock's block can)."""
        path = self.root / LOCK_FILE
        current, _ = read_json_checked(path)
        if (
            current
            and current.get('pid') == os.getpid()
            and current.get('host') == socket.gethostname()
        ):
            path.unlink(missing_ok=True)

    @property
    def scratch_dir(self) -> Path:
        """Where trials keep temporary files: inside the scratch that clean_scratch empties."""
        return self.root / SCRATCH_DIR / 'trials'

    def clean_scratch(self) -> int:
        """Remove what killed runs left behind: Tune's scratch folders, half-copied
        checkpoints and temporary files. Only while holding the lock (no run is active).
        Links are never followed: a link where the scratch or a trial folder belongs is
        removed as a link, whatever it points to. Returns how many were removed."""
        scratch = self.root / SCRATCH_DIR
        if scratch.is_symlink():
            leftovers = [scratch]
        else:
            leftovers = list(scratch.iterdir()) if scratch.is_dir() else []
        leftovers += list(self.root.glob('.*.tmp'))
        trials = self.root / 'trials'
        if trials.is_dir() and not trials.is_symlink():
            for folder in trials.iterdir():
                if folder.is_dir() and not folder.is_symlink():
                    leftovers += list(folder.glob('.checkpoint-*')) + list(folder.glob('.*.tmp'))
        _remove(leftovers)
        return len(leftovers)

    def _looks_like_a_store(self) -> bool:
        """A valid sweep record, or trial folders named by trial ids holding a trial's
        files: what this project writes, and what nothing else is likely to."""
        manifest, _ = read_json_checked(self.root / MANIFEST_FILE)
        if manifest is not None:
            return True
        trials = self.root / 'trials'
        if not trials.is_dir() or trials.is_symlink():
            return False
        return any(
            TRIAL_ID_PATTERN.match(folder.name)
            and not folder.is_symlink()
            and any(
                (folder / name).exists() for name in ('spec.json', 'history.csv', CHECKPOINT_DIR)
            )
            for folder in trials.iterdir()
        )

    def _only_reports(self, entries: set[str]) -> bool:
        """Only the reports of a sweep that has not trained yet (--report-only without
        data renders the published table and records nothing): our table.md, and where
        the sweep file puts them there, the report, README and figures."""
        table = self.root / 'table.md'
        reports = {'table.md', 'cells.csv', 'table.tex', 'report.html', 'README.md', 'figures'}
        if not entries <= reports | {LOCK_FILE}:
            return False
        try:
            # A regular file only: opening a FIFO would wait for a writer.
            if table.is_symlink() or not table.is_file():
                return False
            with open(table, 'rb') as handle:
                return handle.read(9) == b'Results: '
        except OSError:
            return False

    def check_is_store(self) -> None:
        """Refuse a results folder that holds something other than a store of this project
        (a sweep `name` that is also the name of an unrelated folder): before anything
        is written, cleaned or deleted there. A missing or empty folder is a new store."""
        if not self.root.exists():
            # A file or a dangling link where a folder above the store should be: its
            # creation would fail with an error that names neither it nor the setting.
            blocked = not_a_folder_in_the_way(self.root)
            if blocked:
                raise NotAStore(
                    f'the results folder {self.root} cannot be made: {blocked}; set '
                    'outputs.results (in the sweep file or on the command line) to a '
                    'folder for results'
                )
            return
        if not self.root.is_dir():
            raise NotAStore(
                f'the results folder {self.root} is a file, not a folder; set '
                'outputs.results (or name) in the sweep file to a folder for '
                'results'
            )
        entries = {p.name for p in self.root.iterdir()}
        if entries <= {LOCK_FILE} or self._looks_like_a_store() or self._only_reports(entries):
            return
        raise NotAStore(
            f'{self.root} is not a results store of this project (no sweep record '
            f'{MANIFEST_FILE} of ours and no trial folders, but {", ".join(sorted(entries)[:5])}'
            f'{", ..." if len(entries) > 5 else ""}): nothing was written or deleted there. '
            'Set outputs.results or the sweep name in the sweep file to a folder for this '
            "sweep's results"
        )

    def fresh_targets(self, trial_ids: Iterable[str] | None = None) -> list[Path]:
        """What --fresh deletes: the trial folders of `trial_ids` (every stored trial when
        None, with the store's own files and scratch); only what this project writes,
        nothing else in the folder. NotAStore when the folder is not a store."""
        self.check_is_store()
        if not self.root.is_dir():
            return []
        trials = self.root / 'trials'
        if trials.is_symlink():  # removed as a link, never what it points to
            targets = [trials] if trial_ids is None else []
        else:
            # Trial folders, and links where one belongs (removed as links).
            stored = {
                p.name
                for p in (trials.iterdir() if trials.is_dir() else ())
                if TRIAL_ID_PATTERN.match(p.name) and (p.is_dir() or p.is_symlink())
            }
            wanted = stored if trial_ids is None else stored & set(trial_ids)
            targets = [self.trial_dir(t) for t in sorted(wanted)]
        if trial_ids is None:
            targets += [
                self.root / name
                for name in (*STORE_FILES, SCRATCH_DIR, TENSORBOARD_DIR)
                if (self.root / name).exists()
            ]
            targets += sorted(self.root.glob('.*.tmp'))
        return targets

    def delete(self, targets: Iterable[Path]) -> None:
        """Delete paths returned by fresh_targets (folders as a whole, links as links)."""
        _remove(targets)
        trials = self.root / 'trials'
        if trials.is_dir() and not trials.is_symlink() and not any(trials.iterdir()):
            trials.rmdir()

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / 'trials' / trial_id

    def trial_ids(self) -> list[str]:
        """The trials stored: folders of trials/ named by a trial id (links left out;
        foreign_entries names them)."""
        folder = self.root / 'trials'
        if not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if TRIAL_ID_PATTERN.match(p.name) and p.is_dir() and not p.is_symlink()
        )

    def foreign_entries(self) -> list[tuple[str, str]]:
        """(entry, problem) for what trials/ holds that no trial of this project is: links
        (never followed) and entries not named by a trial id. They are left as they are."""
        folder = self.root / 'trials'
        if folder.is_symlink():
            return [('trials', _link_problem(folder))]
        if not folder.is_dir():
            return []
        found = []
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink():
                found.append((one_line(entry.name), _link_problem(entry)))
            elif not TRIAL_ID_PATTERN.match(entry.name) and not entry.name.startswith('.'):
                found.append(
                    (
                        one_line(entry.name),
                        f'{one_line(str(entry))} is not a trial folder of this project '
                        '(not named by a trial id); it is left as it is',
                    )
                )
        return found

    def link_problems(self, trial_id: str) -> list[str]:
        """The links on the way to a trial's folder and inside it, each a problem with what
        to do ([] when there is none): such a trial is damaged, and nothing is read or
        written through it."""
        trials, folder = self.root / 'trials', self.trial_dir(trial_id)
        for path in (trials, folder):
            if path.is_symlink():
                return [_link_problem(path)]
        if not folder.is_dir():
            return []
        problems = []
        for parent, folders, files in os.walk(folder):
            for name in (*folders, *files):
                if os.path.islink(os.path.join(parent, name)):
                    problems.append(_link_problem(Path(parent, name)))
        return problems

    def _writable_trial_dir(self, trial_id: str) -> Path:
        """The trial's folder to write in; LinkInStore where a link is on the way (the run
        leaves damaged trials alone, so this is the last line, not the rule)."""
        trials, folder = self.root / 'trials', self.trial_dir(trial_id)
        for path in (trials, folder):
            if path.is_symlink():
                raise LinkInStore(_link_problem(path))
        return folder

    # ------------------------------------------------------------ writing
    def write_spec(
        self,
        trial_id: str,
        name: str,
        spec: dict[str, Any],
        data_identity: dict[str, Any],
        network_revision: int,
        model_stats: dict[str, int] | None = None,
    ) -> None:
        write_json_atomic(
            self._writable_trial_dir(trial_id) / 'spec.json',
            {
                'trial_id': trial_id,
                'name': name,
                'spec': spec,
                'network_revision': network_revision,
                'data': data_identity,
                'model_stats': model_stats,
            },
        )

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.root / MANIFEST_FILE, manifest)

    def read_manifest(self) -> dict | None:
        """The sweep's manifest; None when it is absent or damaged (the next run or
        --report-only rewrites it)."""
        return read_json_checked(self.root / MANIFEST_FILE).value

    def read_history(self, trial_id: str) -> list[dict]:
        """The trial's epoch rows: history.csv, or the checkpoint's copy where that holds
        more (a cut or missing history.csv)."""
        return self.history(trial_id).rows

    def history(self, trial_id: str) -> HistoryRead:
        """The trial's history and the problems found reading it; see read_history."""
        if self.link_problems(trial_id):
            return HistoryRead([], [], 0)
        return self._history(trial_id, self._checkpoint_state(trial_id).state)

    def _history(self, trial_id: str, checkpoint_state: dict | None) -> HistoryRead:
        """The trial's history, given the checkpoint's state already read (from a folder
        without links)."""
        path = self.trial_dir(trial_id) / 'history.csv'
        rows, problem = read_history_csv(path)
        recorded = len(rows)
        problems = [problem] if problem else []
        saved = [
            {k: row[k] for k in HISTORY_FIELDS}
            for row in (checkpoint_state or {}).get('history', [])
        ]
        if len(saved) > len(rows) or (problem and saved):
            problems.append(
                f'{path}: holds {len(rows)} intact epoch row(s), the checkpoint '
                f"{len(saved)}; the checkpoint's copy is used, and the next run "
                'rewrites the file'
            )
            rows = saved + [row for row in rows if row['epoch'] > len(saved)]
        return HistoryRead(rows, problems, recorded)

    def record_epoch(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """Add (or replace, when an epoch is trained again after a crash) one history row."""
        rows = {row['epoch']: row for row in self.read_history(trial_id)}
        rows[int(metrics['epoch'])] = {k: metrics[k] for k in HISTORY_FIELDS}
        self._write_history(trial_id, [rows[epoch] for epoch in sorted(rows)])

    def _write_history(self, trial_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator='\n')
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: repr(float(row[k])) if k != 'epoch' else int(row[k]) for k in HISTORY_FIELDS}
            )
        write_text_atomic(self._writable_trial_dir(trial_id) / 'history.csv', buffer.getvalue())

    def record_checkpoint(self, trial_id: str, source_dir: str | Path) -> Path:
        """Copy a checkpoint folder into the store, replacing the previous one atomically."""
        target = self._writable_trial_dir(trial_id) / CHECKPOINT_DIR
        if target.is_symlink():
            raise LinkInStore(_link_problem(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix='.checkpoint-', dir=target.parent))
        shutil.rmtree(staging)
        shutil.copytree(source_dir, staging)
        publish_dir_atomic(staging, target)
        return target

    def write_final(self, trial_id: str, final: dict[str, Any]) -> None:
        folder = self._writable_trial_dir(trial_id)
        write_json_atomic(folder / 'final.json', final)
        error = folder / 'error.json'
        if os.path.lexists(error):
            error.unlink()

    def write_error(self, trial_id: str, message: str, epochs_done: int) -> None:
        write_json_atomic(
            self._writable_trial_dir(trial_id) / 'error.json',
            {'error': message, 'epochs_done': epochs_done},
        )

    def clear_error(self, trial_id: str) -> None:
        path = self._writable_trial_dir(trial_id) / 'error.json'
        if os.path.lexists(path):
            retired = path.with_name('error-previous.json')
            path.replace(retired)

    # ------------------------------------------------------------ reading
    def checkpoint_state(self, trial_id: str) -> CheckpointFound:
        """The trial's newest intact checkpoint in the store: `checkpoint/`, or
        `.checkpoint.retired/` where a crash in the middle of the swap left only that one
        (state and folder None when there is none)."""
        if self.link_problems(trial_id):
            return CheckpointFound(None, None, [])
        return self._checkpoint_state(trial_id)

    def _checkpoint_state(self, trial_id: str) -> CheckpointFound:
        """checkpoint_state of a trial folder known to hold no links."""
        folder, problems = self.trial_dir(trial_id), []
        for name in (CHECKPOINT_DIR, RETIRED_CHECKPOINT_DIR):
            path = folder / name
            if not (path / STATE_FILE).is_file():
                continue
            try:
                state = read_state(path)
                epoch = int(state['epoch'])
            except (OSError, ValueError, KeyError, TypeError) as error:
                problems.append(f'{path / STATE_FILE}: unreadable ({_short(error)})')
                continue
            return CheckpointFound(dict(state, epoch=epoch), path, problems)
        return CheckpointFound(None, None, problems)

    def checkpoint_path(self, trial_id: str) -> Path | None:
        return self.checkpoint_state(trial_id).folder

    def legacy_checkpoint_file(self, trial_id: str) -> Path | None:
        """The pickle an earlier version left in the trial's checkpoint (None if none)."""
        folder = self.checkpoint_path(trial_id)
        legacy = folder / LEGACY_PICKLE_FILE if folder else None
        return legacy if legacy and legacy.is_file() else None

    def checkpoint_epoch(self, trial_id: str) -> int:
        state = self.checkpoint_state(trial_id).state
        return state['epoch'] if state else 0

    def trial_state(self, trial_id: str, epochs: int | None = None) -> TrialState:
        """The one rule for a trial's status: a TrialState (status, epochs done, problems).
        `epochs`, what the trial's recipe trains: a final.json that says otherwise is
        damage (as is one that contradicts the trial's own history)."""
        folder = self.trial_dir(trial_id)
        links = self.link_problems(trial_id)
        if links:
            return TrialState(DAMAGED, 0, tuple(links))
        final, final_problem = read_json_checked(folder / 'final.json')
        error, error_problem = read_json_checked(folder / 'error.json')
        state, checkpoint, problems = self._checkpoint_state(trial_id)
        planned_epochs, epochs = epochs, state['epoch'] if state else 0
        history = self._history(trial_id, state)
        recorded = history.recorded
        problems += history.problems
        if checkpoint is not None and checkpoint.name == RETIRED_CHECKPOINT_DIR:
            problems.append(
                f'{folder / CHECKPOINT_DIR}: missing after an interrupted swap; '
                f'{checkpoint} (epoch {epochs}) is used, and the next run puts '
                'it back'
            )
        contradiction = final is not None and _contradicted_final(
            final.get('epochs'), planned_epochs, len(history.rows)
        )
        if final is not None and isinstance(final.get('epochs'), int) and not contradiction:
            return TrialState(DONE, final['epochs'], tuple(problems))
        if final_problem or final is not None:
            what = final_problem or (
                f'{folder / "final.json"}: {contradiction}'
                if contradiction
                else f'{folder / "final.json"}: has no epoch count'
            )
            fix = (
                f'the checkpoint holds epoch {epochs}: delete the file and run again to rewrite it'
                if epochs
                else "restore it from a backup, or delete the trial's folder to train it again"
            )
            return TrialState(DAMAGED, epochs, tuple(problems + [f'{what}; {fix}']))
        if error is not None or error_problem:
            if error_problem:
                problems.append(f'{error_problem}; the trial counts as failed')
            return TrialState(FAILED, epochs, tuple(problems))
        # One epoch ahead of the checkpoint is the window between an epoch's report and
        # its checkpoint; more means checkpoints were lost and epochs would be retrained.
        if recorded > epochs + 1:
            where = f'is at epoch {epochs}' if epochs else 'is missing'
            return TrialState(
                DAMAGED,
                epochs,
                tuple(
                    problems
                    + [
                        f'{folder}: history.csv records {recorded} epochs but the checkpoint '
                        f'{where}, so resuming would train epochs again; restore the checkpoint, '
                        'or delete the folder to train the trial from scratch'
                    ]
                ),
            )
        return TrialState(PARTIAL if epochs else PENDING, epochs, tuple(problems))

    def status(self, trial_id: str) -> tuple[str, int]:
        """(status, epochs done) of a trial: done / failed / partial / pending / damaged."""
        state = self.trial_state(trial_id)
        return state.status, state.epochs_done

    def repair(self, trial_id: str) -> list[str]:
        """Before a run trains or reports the trial: put a retired checkpoint back and
        rewrite a cut history.csv from the checkpoint. Returns what was repaired."""
        folder, done = self.trial_dir(trial_id), []
        if self.link_problems(trial_id):
            return done
        retired = folder / RETIRED_CHECKPOINT_DIR
        if (
            not (folder / CHECKPOINT_DIR / STATE_FILE).is_file()
            and (retired / STATE_FILE).is_file()
        ):
            if (folder / CHECKPOINT_DIR).exists():
                shutil.rmtree(folder / CHECKPOINT_DIR)
            retired.replace(folder / CHECKPOINT_DIR)
            done.append(f'{folder / CHECKPOINT_DIR}: put back from {RETIRED_CHECKPOINT_DIR}')
        history = self.history(trial_id)
        if history.problems and history.rows:
            self._write_history(trial_id, history.rows)
            done.append(
                f'{folder / "history.csv"}: rewritten from the checkpoint '
                f'({len(history.rows)} epochs)'
            )
        return done

    def read_final(self, trial_id: str) -> dict | None:
        return self._read_trial_file(trial_id, 'final.json').value

    def read_error(self, trial_id: str) -> str | None:
        error, problem = self._read_trial_file(trial_id, 'error.json')
        if problem:
            return problem
        return None if error is None else str(error.get('error', ''))

    def read_spec(self, trial_id: str) -> dict | None:
        return self._read_trial_file(trial_id, 'spec.json').value

    def _read_trial_file(self, trial_id: str, name: str) -> JsonRead:
        """A JSON file of a trial's folder (read_json_checked), never through a link."""
        links = self.link_problems(trial_id)
        if links:
            return JsonRead(None, links[0])
        return read_json_checked(self.trial_dir(trial_id) / name)

    def read_trial(
        self,
        trial_id: str,
        listed: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> TrialRecord | None:
        """The record of a stored trial: its spec.json (of any version) and its state in
        the store. A trial whose spec.json is lost is described by `listed`, the sweep's
        record of it (with the sweep's `data`), where the sweep lists it; None when
        neither says what the trial is."""
        spec_file = self.trial_dir(trial_id) / 'spec.json'
        stored, spec_problem = self._read_trial_file(trial_id, 'spec.json')
        problems = [spec_problem] if spec_problem else []
        source, sweep_data, listed_said = spec_file, None, False
        if stored is not None and listed is not None:
            differs = identity_differences(
                TrialRecord.from_trial_file({**stored, 'trial_id': trial_id}),
                TrialRecord.from_trial_file({**listed, 'trial_id': trial_id}, data=data),
            )
            if differs:
                # The id names what trained there (the run writes under the id of the
                # spec it trains): the folder's spec.json was changed since.
                problems.append(
                    f'{spec_file}: describes another trial than the one its id names '
                    f'({", ".join(differs)} {"differ" if len(differs) > 1 else "differs"} '
                    "from the sweep's); the sweep's record of "
                    'the trial is used, and the next run rewrites it'
                )
                stored, listed_said = None, True
        if stored is None:
            if listed is None:
                return None
            stored, source, sweep_data = listed, "the sweep's record of it", data
            if not listed_said:
                problems.append(
                    f'{spec_file}: missing; the '
                    "sweep's record of the trial is used, and the next run "
                    'rewrites it'
                )
        state = self.trial_state(trial_id, stored['spec']['recipe']['epochs'])
        problems = list(state.problems) + problems
        return TrialRecord.from_trial_file(
            {**stored, 'trial_id': trial_id},
            data=sweep_data,
            source=str(source),
            status=state.status,
            epochs_done=state.epochs_done,
            final=self.read_final(trial_id) if state.status == DONE else None,
            error=self.read_error(trial_id) if state.status == FAILED else None,
            problems=tuple(problems),
        )

    def trial_records(self, manifest: Mapping[str, Any] | None = None) -> list[TrialRecord]:
        """The record of every stored trial (see read_trial); `manifest`, the sweep's,
        describes those whose spec.json is lost."""
        listed = {entry['trial_id']: entry for entry in (manifest or {}).get('trials', [])}
        data = (manifest or {}).get('data') or {}
        # A listed trial whose folder is a link is read too: as damaged, never through it.
        linked = [t for t in listed if TRIAL_ID_PATTERN.match(t) and self.trial_dir(t).is_symlink()]
        records = (
            self.read_trial(trial_id, listed.get(trial_id), data)
            for trial_id in sorted({*self.trial_ids(), *linked})
        )
        return [record for record in records if record is not None]

    def unreadable_trials(self, recorded: Collection[str]) -> list[tuple[str, str]]:
        """(trial id, why) of the stored trials that trial_records made no record of (ids
        not in `recorded`): their spec.json is lost or damaged and the sweep does not
        describe them. Their files stay as they are."""
        found = []
        for trial_id in self.trial_ids():
            if trial_id not in recorded:
                spec_file = self.trial_dir(trial_id) / 'spec.json'
                problem = self._read_trial_file(trial_id, 'spec.json').problem
                found.append((trial_id, problem or f'{spec_file}: missing'))
        return found

    def write_results_csv(self, manifest: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """results.csv: every stored trial, and whether the sweep asks for it now."""
        import pandas as pd

        current = {entry['trial_id'] for entry in (manifest or {}).get('trials', [])}
        frame = pd.DataFrame([r.row() for r in self.trial_records(manifest)], columns=TRIAL_COLUMNS)
        frame.insert(1, 'in_sweep', frame['trial_id'].isin(current))
        for column in ('name', 'backend', 'data_name', 'data_digest', 'error'):
            frame[column] = frame[column].map(spreadsheet_text)
        write_text_atomic(self.root / 'results.csv', frame.to_csv(index=False))
        return frame

    def write_environment(self, environment: dict[str, Any]) -> None:
        write_json_atomic(self.root / 'environment.json', environment)


@dataclass(frozen=True)
class TrialState:
    status: str  # one of STATUSES
    epochs_done: int
    problems: tuple = ()  # each names a file, what is wrong with it and what to do


class JsonRead(NamedTuple):
    """A store file read: its value (None when absent or unusable) and, when it is
    unusable, the problem naming the file and what is wrong with it."""

    value: dict | None
    problem: str | None


class CheckpointFound(NamedTuple):
    """The newest intact checkpoint of a trial: its state.json (with `epoch` an int) and
    its folder, None when there is none; the problems found on the way."""

    state: dict | None
    folder: Path | None
    problems: list[str]


class HistoryRead(NamedTuple):
    """A trial's epoch rows (history.csv, or the checkpoint's copy where that holds more),
    the problems found, and how many intact rows history.csv itself held."""

    rows: list[dict]
    problems: list[str]
    recorded: int


def read_json_checked(path: str | os.PathLike) -> JsonRead:
    """A store file's value, None when the file is absent; or the problem naming the file
    and what is wrong with it: not JSON, or not of the shape its name says
    (bench.records)."""
    path = Path(path)
    if path.is_symlink():
        return JsonRead(None, _link_problem(path))
    if not path.is_file():
        return JsonRead(None, None)
    try:
        value = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError: JSONDecodeError, and numbers too long to convert
        return JsonRead(None, f'{path}: not valid JSON ({_short(error)})')
    if not isinstance(value, dict):
        return JsonRead(None, f'{path}: expected a JSON object, found {type(value).__name__}')
    try:
        check_record(value, path.name)
    except ValueError as error:
        return JsonRead(None, f'{path}: {error}')
    return JsonRead(value, None)


def read_history_csv(path: str | Path) -> tuple[list[dict[str, int | float]], str | None]:
    """(rows, problem): the intact rows of a history.csv, in order, up to the first row
    that is cut or garbled (named in `problem`)."""
    path = Path(path)
    if path.is_symlink():
        return [], _link_problem(path)
    if not path.is_file():
        return [], None
    rows = []
    try:
        with open(path, newline='', encoding='utf-8') as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != HISTORY_FIELDS:
                return [], f'{path}: unexpected header {bounded_repr(reader.fieldnames)}'
            for line, row in enumerate(reader, start=2):
                try:
                    parsed = {
                        k: (int(row[k]) if k == 'epoch' else float(row[k])) for k in HISTORY_FIELDS
                    }
                except (TypeError, ValueError):
                    return (
                        rows,
                        f'{path}: line {line} is cut or garbled; rows from it on are not used',
                    )
                if parsed['epoch'] != len(rows) + 1:
                    return (
                        rows,
                        f'{path}: line {line} holds epoch {parsed["epoch"]} where '
                        f'epoch {len(rows) + 1} belongs',
                    )
                rows.append(parsed)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return rows, f'{path}: unreadable ({_short(error)})'
    return rows, None


def _contradicted_final(finished: Any, planned: int | None, history_rows: int) -> str | None:
    """How a final.json's epoch count contradicts the recipe's or the trial's history
    (None where it does not, or has none)."""
    if not isinstance(finished, int):
        return None
    if planned is not None and finished != planned:
        return f'says the trial finished after {finished} epochs, but its recipe trains {planned}'
    if history_rows and history_rows != finished:
        return (
            f'says the trial finished after {finished} epochs, but its history holds {history_rows}'
        )
    return None


def _link_problem(path: Path) -> str:
    return (
        f'{one_line(str(path))} is a link; a results store holds none, and none is '
        'followed (it could make a report show, or a run change, files elsewhere): put the '
        'file or folder itself there, or delete the link'
    )


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _remove(paths: Iterable[Path]) -> None:
    """Delete each path: a folder as a whole, a link or a file by itself (never what a link
    points to)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()


def _create_with(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists, atomically (a link of a full file)."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _process_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
