"""TensorBoard event files of a sweep's trials, one folder per trial under the store
(results/<sweep>/tensorboard/<trial name>), written with tensorboardX (no framework).

Scalars are TensorBoard's float32 values (history.csv's numbers rounded to float32:
TensorBoard's fast loader ignores double-precision scalars, so the exact numbers stay in the
store and MLflow). The recipe and the cell are the trial's HParams, so TensorBoard's
HParams table compares the cells.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from bench.fileio import write_json_atomic
from bench.store import read_json_checked
from bench.tracking import FAILED, FINISHED, trial_params

if TYPE_CHECKING:
    from tensorboardX import FileWriter

    from bench.records import TrialRecord

# history.csv's columns as TensorBoard's tags: a section per kind of number.
SCALAR_TAGS = {
    'train_loss': 'loss/train',
    'val_loss': 'loss/val',
    'train_acc': 'accuracy/train',
    'val_acc': 'accuracy/val',
    'lr': 'learning_rate',
    'epoch_seconds': 'pace/epoch_seconds',
    'train_seconds': 'pace/train_seconds',
    'images_per_second': 'pace/images_per_second',
}
# The metrics of the HParams table: the last value of each.
HPARAM_METRICS = ('accuracy/val', 'loss/val', 'loss/train')
EVENT_FILES = 'events.out.tfevents.*'
# Beside a trial's event files: what they hold (its epochs and how it ended), so that a
# finished trial written whole is not written again by each later run.
WRITTEN_FILE = 'written.json'


class TensorBoardTracker:
    label = 'TensorBoard'

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        _refuse_link(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writers: dict[str, FileWriter] = {}
        self.epochs: dict[str, int] = {}  # trial id -> the epochs its events hold

    def folder(self, record: TrialRecord) -> Path:
        return self.root / re.sub(r'[^A-Za-z0-9_.=-]', '_', record.name)

    def trial_started(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        from tensorboardX import FileWriter
        from tensorboardX.summary import hparams

        self._close(record.trial_id)
        folder = self.folder(record)
        _refuse_link(folder)
        # The trial's events are written again from the store, whole: a resumed trial's
        # curve is the store's, with no epoch twice and none that the store rolled back.
        for old in [*folder.glob(EVENT_FILES), folder / WRITTEN_FILE]:
            old.unlink(missing_ok=True)
        writer = FileWriter(str(folder), flush_secs=30)
        self.writers[record.trial_id] = writer
        experiment, session_start, _ = hparams(
            trial_params(record), dict.fromkeys(HPARAM_METRICS, 0.0)
        )
        for summary in (experiment, session_start):
            writer.add_summary(summary)
        for row in history:
            self._write_row(writer, row)
        self.epochs[record.trial_id] = len(history)
        writer.flush()

    def epoch(self, record: TrialRecord, row: Mapping[str, Any]) -> None:
        writer = self.writers[record.trial_id]
        self._write_row(writer, row)
        self.epochs[record.trial_id] = int(row['epoch'])
        writer.flush()  # watched live: every epoch on disk as soon as it is stored

    def _write_row(self, writer: FileWriter, row: Mapping[str, Any]) -> None:
        from tensorboardX.summary import scalar

        for key, tag in SCALAR_TAGS.items():
            if row.get(key) is not None:
                writer.add_summary(scalar(tag, float(row[key])), int(row['epoch']))

    def trial_ended(self, record: TrialRecord, status: str, error: str | None) -> None:
        writer = self.writers.get(record.trial_id)
        if writer is not None:
            writer.add_summary(session_end(status))
            self._close(record.trial_id)
            written = {
                'trial_id': record.trial_id,
                'epochs': self.epochs.get(record.trial_id, 0),
                'status': status,
            }
            write_json_atomic(self.folder(record) / WRITTEN_FILE, written)

    def catch_up(
        self, record: TrialRecord, history: Sequence[Mapping[str, Any]], where: Mapping[str, Any]
    ) -> None:
        folder = self.folder(record)
        _refuse_link(folder)
        written, _ = read_json_checked(folder / WRITTEN_FILE)
        holds = {'trial_id': record.trial_id, 'epochs': len(history), 'status': FINISHED}
        if written == holds and any(folder.glob(EVENT_FILES)):
            return  # as the store holds it: left alone
        self.trial_started(record, history, where)
        self.trial_ended(record, FINISHED, None)

    def sweep_ended(self, status: str, artifacts: Sequence[Path]) -> None:
        self.close()

    def _close(self, trial_id: str) -> None:
        writer = self.writers.pop(trial_id, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for trial_id in list(self.writers):
            self._close(trial_id)


def _refuse_link(path: Path) -> None:
    # Event files are deleted and written here: never through a link out of the store.
    if path.is_symlink():
        raise OSError(f'{path} is a symbolic link; TensorBoard files are written only in the store')


def session_end(status: str) -> Any:
    """The HParams plugin's end of a trial: finished, failed, or unknown (killed, to resume)."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    code = {FINISHED: 'STATUS_SUCCESS', FAILED: 'STATUS_FAILURE'}.get(status, 'STATUS_UNKNOWN')
    content = HParamsPluginData(
        session_end_info=SessionEndInfo(status=Status.Value(code), end_time_secs=time.time()),
        version=0,
    )
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name='hparams', content=content.SerializeToString()
        )
    )
    return Summary(value=[Summary.Value(tag='_hparams_/session_end_info', metadata=metadata)])
