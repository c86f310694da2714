"""Read a sweep's results store into pandas. Only files: no Ray, no MXNet, no bench."""
import json
from pathlib import Path

import pandas as pd


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
        row = {'trial_id': folder.name, 'name': stored['name'], 'model': spec['model'],
               'attention': spec['attention'], 'seed': spec['seed'], 'status': status,
               'epochs_done': epochs_done, 'epochs': spec['recipe']['epochs'],
               'recipe': json.dumps(spec['recipe'], sort_keys=True),
               'data_name': data.get('name'), 'data_official': bool(data.get('official')),
               'error': error['error'] if error and not final else None}
        row.update({k: (final or {}).get(k) for k in
                    ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'total_seconds')})
        stats = stored.get('model_stats') or {}
        row.update({k: stats.get(k) for k in ('params', 'macs')})
        rows.append(row)
    columns = ['trial_id', 'name', 'model', 'attention', 'seed', 'status', 'epochs_done',
               'epochs', 'recipe', 'data_name', 'data_official', 'error', 'train_loss',
               'train_acc', 'val_loss', 'val_acc', 'total_seconds', 'params', 'macs']
    return pd.DataFrame(rows, columns=columns)


def load_histories(store_dir):
    """One row per trial x epoch, with the trial's model, attention and seed."""
    frames = []
    for folder in _trial_folders(store_dir):
        history = folder / 'history.csv'
        if not history.is_file():
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
