"""The results store: the record of a sweep, one folder per trial, keyed by trial id.

    results/<sweep>/
      sweep.json                 what the sweep consists of now: its trial ids, layout,
                                 report options; reports show these trials and no others
      results.csv                one row per trial (pandas)
      environment.json           packages, git commit, devices of the last run
      trials/<trial_id>/
        spec.json                the trial's spec, name, data identity
        history.csv              one row per finished epoch
        checkpoint/              the latest epoch's checkpoint (copied from Ray's)
        final.json               present only once the trial finished
        error.json               present when it failed

Every file is written atomically. A trial is done only when final.json was
renamed into place; anything else is resumed, never trusted. Paths inside the
store are relative to it, so the folder can be moved.
"""
import csv
import io
import shutil
import tempfile
from pathlib import Path

from .checkpoint import STATE_FILE, read_state
from .fileio import publish_dir_atomic, read_json, write_json_atomic, write_text_atomic

DONE, FAILED, PARTIAL, PENDING = 'done', 'failed', 'partial', 'pending'
MANIFEST_FILE = 'sweep.json'
HISTORY_FIELDS = ('epoch', 'lr', 'train_loss', 'train_acc', 'val_loss', 'val_acc',
                  'epoch_seconds', 'train_seconds', 'images_per_second')


class ResultsStore:
    def __init__(self, root):
        self.root = Path(root)

    def trial_dir(self, trial_id):
        return self.root / 'trials' / trial_id

    def trial_ids(self):
        folder = self.root / 'trials'
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    # ------------------------------------------------------------ writing
    def write_spec(self, trial_id, name, spec, data_identity, network_revision,
                   model_stats=None):
        write_json_atomic(self.trial_dir(trial_id) / 'spec.json',
                          {'trial_id': trial_id, 'name': name, 'spec': spec,
                           'network_revision': network_revision,
                           'data': data_identity, 'model_stats': model_stats})

    def write_manifest(self, manifest):
        write_json_atomic(self.root / MANIFEST_FILE, manifest)

    def read_manifest(self):
        path = self.root / MANIFEST_FILE
        return read_json(path) if path.is_file() else None

    def read_history(self, trial_id):
        path = self.trial_dir(trial_id) / 'history.csv'
        if not path.is_file():
            return []
        with open(path, newline='', encoding='utf-8') as handle:
            return [{k: (int(v) if k == 'epoch' else float(v)) for k, v in row.items()}
                    for row in csv.DictReader(handle)]

    def record_epoch(self, trial_id, metrics):
        """Add (or replace, when an epoch is trained again after a crash) one history row."""
        rows = {row['epoch']: row for row in self.read_history(trial_id)}
        rows[int(metrics['epoch'])] = {k: metrics[k] for k in HISTORY_FIELDS}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator='\n')
        writer.writeheader()
        for epoch in sorted(rows):
            writer.writerow({k: repr(float(v)) if k != 'epoch' else int(v)
                             for k, v in rows[epoch].items()})
        write_text_atomic(self.trial_dir(trial_id) / 'history.csv', buffer.getvalue())

    def record_checkpoint(self, trial_id, source_dir):
        """Copy a checkpoint folder into the store, replacing the previous one atomically."""
        target = self.trial_dir(trial_id) / 'checkpoint'
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix='.checkpoint-', dir=target.parent))
        shutil.rmtree(staging)
        shutil.copytree(source_dir, staging)
        publish_dir_atomic(staging, target)
        return target

    def write_final(self, trial_id, final):
        write_json_atomic(self.trial_dir(trial_id) / 'final.json', final)
        error = self.trial_dir(trial_id) / 'error.json'
        if error.exists():
            error.unlink()

    def write_error(self, trial_id, message, epochs_done):
        write_json_atomic(self.trial_dir(trial_id) / 'error.json',
                          {'error': message, 'epochs_done': epochs_done})

    def clear_error(self, trial_id):
        path = self.trial_dir(trial_id) / 'error.json'
        if path.exists():
            retired = path.with_name('error-previous.json')
            path.replace(retired)

    # ------------------------------------------------------------ reading
    def checkpoint_path(self, trial_id):
        path = self.trial_dir(trial_id) / 'checkpoint'
        return path if (path / STATE_FILE).is_file() else None

    def checkpoint_epoch(self, trial_id):
        path = self.checkpoint_path(trial_id)
        return int(read_state(path)['epoch']) if path else 0

    def status(self, trial_id):
        """(status, epochs done) of a trial: done / failed / partial / pending."""
        folder = self.trial_dir(trial_id)
        if (folder / 'final.json').is_file():
            return DONE, int(read_json(folder / 'final.json').get('epochs', 0))
        epochs = self.checkpoint_epoch(trial_id)
        if (folder / 'error.json').is_file():
            return FAILED, epochs
        return (PARTIAL, epochs) if epochs else (PENDING, 0)

    def read_final(self, trial_id):
        path = self.trial_dir(trial_id) / 'final.json'
        return read_json(path) if path.is_file() else None

    def read_error(self, trial_id):
        path = self.trial_dir(trial_id) / 'error.json'
        return read_json(path)['error'] if path.is_file() else None

    def read_spec(self, trial_id):
        path = self.trial_dir(trial_id) / 'spec.json'
        return read_json(path) if path.is_file() else None

    def trial_rows(self, current_ids=()):
        """One flat dict per stored trial: identity, recipe, status, final metrics, error,
        and whether the sweep (as in `current_ids`) still asks for it."""
        rows = []
        for trial_id in self.trial_ids():
            stored = self.read_spec(trial_id)
            if stored is None:
                continue
            spec, data = stored['spec'], stored.get('data') or {}
            status, epochs = self.status(trial_id)
            row = {'trial_id': trial_id, 'name': stored['name'], 'model': spec['model'],
                   'attention': spec['attention'], 'seed': spec['seed'],
                   'in_sweep': trial_id in current_ids,
                   'network_revision': stored.get('network_revision', 1),
                   'status': status, 'epochs_done': epochs,
                   'epochs': spec['recipe']['epochs'],
                   'data_name': data.get('name'), 'data_official': data.get('official'),
                   'data_digest': data.get('digest')}
            row.update({f'recipe.{k}': (str(v) if isinstance(v, list) else v)
                        for k, v in spec['recipe'].items()})
            row['attention_kwargs'] = str(spec.get('attention_kwargs') or {})
            final = self.read_final(trial_id) or {}
            for key in HISTORY_FIELDS[1:] + ('total_seconds',):
                row[key] = final.get(key)
            row['error'] = self.read_error(trial_id) if status == FAILED else None
            rows.append(row)
        return rows

    def write_results_csv(self, current_ids=()):
        import pandas as pd
        frame = pd.DataFrame(self.trial_rows(set(current_ids)))
        write_text_atomic(self.root / 'results.csv', frame.to_csv(index=False))
        return frame

    def write_environment(self, environment):
        write_json_atomic(self.root / 'environment.json', environment)
