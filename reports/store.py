"""Read a sweep's results store into pandas. Only files: no Ray, no MXNet, no bench."""
import json
from pathlib import Path

import pandas as pd

from .readme import ReportError

MANIFEST_FILE = 'sweep.json'
TRIAL_COLUMNS = ['trial_id', 'name', 'model', 'attention', 'seed', 'status', 'epochs_done',
                 'epochs', 'recipe', 'attention_kwargs', 'network_revision', 'data_name',
                 'data_official', 'data_digest', 'error', 'train_loss', 'train_acc', 'val_loss',
                 'val_acc', 'total_seconds', 'params', 'macs']


def _read_json(path):
    with open(path, encoding='utf-8') as handle:
        return json.load(handle)


def _trial_folders(store_dir):
    folder = Path(store_dir) / 'trials'
    return sorted(p for p in folder.iterdir() if (p / 'spec.json').is_file()) \
        if folder.is_dir() else []


def load_trials(store_dir):
    """One row per trial: model, attention, seed, status, final metrics, error, model stats."""
    rows = []
    for folder in _trial_folders(store_dir):
        stored = _read_json(folder / 'spec.json')
        spec, data = stored['spec'], stored.get('data') or {}
        final = _read_json(folder / 'final.json') if (folder / 'final.json').is_file() else None
        error = _read_json(folder / 'error.json') if (folder / 'error.json').is_file() else None
        history = folder / 'history.csv'
        epochs_done = final['epochs'] if final else (
            len(pd.read_csv(history)) if history.is_file() else 0)
        status = 'done' if final else ('failed' if error else
                                       ('partial' if epochs_done else 'pending'))
        rows.append(_trial_row(folder.name, stored['name'], spec,
                               stored.get('network_revision', 1), data, status, epochs_done,
                               final, error['error'] if error and not final else None,
                               stored.get('model_stats')))
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def _trial_row(trial_id, name, spec, network_revision, data, status, epochs_done,
               final=None, error=None, model_stats=None):
    row = {'trial_id': trial_id, 'name': name, 'model': spec['model'],
           'attention': spec['attention'], 'seed': spec['seed'], 'status': status,
           'epochs_done': epochs_done, 'epochs': spec['recipe']['epochs'],
           'recipe': json.dumps(spec['recipe'], sort_keys=True),
           'attention_kwargs': json.dumps(spec.get('attention_kwargs') or {}, sort_keys=True),
           'network_revision': network_revision,
           'data_name': data.get('name'), 'data_official': bool(data.get('official')),
           'data_digest': data.get('digest'), 'error': error}
    row.update({k: (final or {}).get(k) for k in
                ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'total_seconds')})
    row.update({k: (model_stats or {}).get(k) for k in ('params', 'macs')})
    return row


def load_manifest(store_dir):
    """The sweep's record of which trials it consists of now (written by run_sweep.py)."""
    path = Path(store_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ReportError(
            f'{path} is missing, so which stored trials belong to the sweep cannot be told. '
            'Run `python run_sweep.py --config <sweep file> --report-only` once: it records '
            'the trials the sweep declares and renders the reports')
    return _read_json(path)


def split_by_sweep(trials, manifest):
    """(current, other): the sweep's trials, one row each in table order (trials not
    stored yet as pending), and the stored trials it no longer asks for, with why."""
    stored = trials.set_index('trial_id', drop=False)
    data = manifest.get('data') or {}
    rows = []
    for entry in manifest['trials']:
        if entry['trial_id'] in stored.index:
            rows.append(stored.loc[entry['trial_id']].to_dict())
            continue
        rows.append(_trial_row(entry['trial_id'], entry['name'], entry['spec'],
                               entry.get('network_revision', 1), data, 'pending', 0))
    current = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    wanted = {entry['trial_id'] for entry in manifest['trials']}
    other = trials[~trials['trial_id'].isin(wanted)].copy()
    by_name = {entry['name']: entry for entry in manifest['trials']}
    other['reason'] = [_why_not_current(row, by_name.get(row['name']), data)
                       for row in other.to_dict('records')]
    return current, other


def _why_not_current(row, entry, data):
    """What separates a stored trial from the sweep's trial of the same cell."""
    if entry is None:
        return 'its model, attention or seed is not in the sweep'
    reasons = []
    recipe, wanted = json.loads(row['recipe']), entry['spec']['recipe']
    changed = sorted(k for k in set(recipe) | set(wanted) if recipe.get(k) != wanted.get(k))
    if changed:
        reasons.append('recipe differs: ' + ', '.join(
            f'{k} {_shown(recipe.get(k))} (sweep: {_shown(wanted.get(k))})' for k in changed))
    if json.loads(row['attention_kwargs']) != (entry['spec'].get('attention_kwargs') or {}):
        reasons.append(f"attention options {row['attention_kwargs']} differ from the sweep's")
    if int(row['network_revision']) != int(entry.get('network_revision', 1)):
        reasons.append(f"trained by network definition revision {row['network_revision']} "
                       f"(now {entry.get('network_revision', 1)})")
    if row['data_digest'] != data.get('digest'):
        reasons.append(f"trained on other data ({row['data_name']})")
    return '; '.join(reasons) or 'trained by another version of this code'


def _shown(value):
    return 'default' if value is None else json.dumps(value)


def load_histories(store_dir, trial_ids=None):
    """One row per trial x epoch, with the trial's model, attention and seed
    (only the trials in `trial_ids`, when given)."""
    frames = []
    for folder in _trial_folders(store_dir):
        history = folder / 'history.csv'
        if not history.is_file() or (trial_ids is not None and folder.name not in trial_ids):
            continue
        spec = _read_json(folder / 'spec.json')['spec']
        frame = pd.read_csv(history)
        frame.insert(0, 'trial_id', folder.name)
        frame.insert(1, 'model', spec['model'])
        frame.insert(2, 'attention', spec['attention'])
        frame.insert(3, 'seed', spec['seed'])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=['trial_id', 'model', 'attention', 'seed', 'epoch',
                                     'val_loss', 'val_acc', 'train_loss', 'train_acc'])
    return pd.concat(frames, ignore_index=True)


def load_environment(store_dir):
    path = Path(store_dir) / 'environment.json'
    return _read_json(path) if path.is_file() else {}
