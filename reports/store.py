"""Read a sweep's results store into pandas: no Ray, no MXNet.

The store's files are read through bench.store (plain Python), whose one rule
decides each trial's status for the sweep and the reports alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from bench.fileio import not_a_folder_in_the_way
from bench.records import (
    PENDING,
    TrialRecord,
    metric_problem,
    unregistered_attention_problem,
    upgrade_trial_file,
)
from bench.store import MANIFEST_FILE, TRIAL_COLUMNS, ResultsStore, read_json_checked
from bench.trial.recipe import Recipe
from bench.validation import one_line
from models.registry import ENTRY_POINT_GROUP

from .readme import ReportError

# Beyond results.csv's columns (bench.store.TRIAL_COLUMNS): where each finished trial
# ran, from its final.json, so speeds are compared on one kind of device only.
REPORT_COLUMNS = (*TRIAL_COLUMNS, 'device_kind', 'environment')


def load_trials(store_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per stored trial (see bench.store.ResultsStore.trial_records): results.csv's
    columns, and the kind of device a finished trial ran on and the environment of the
    run that finished it, as final.json holds them (None where not recorded)."""
    records = ResultsStore(store_dir).trial_records(manifest)
    return pd.DataFrame(
        [
            {
                **record.row(),
                'device_kind': (record.final or {}).get('device_kind'),
                'environment': (record.final or {}).get('environment'),
            }
            for record in records
        ],
        columns=REPORT_COLUMNS,
    )


def load_manifest(store_dir: str | Path) -> dict[str, Any]:
    """The sweep's record of which trials it consists of now (written by run_sweep.py)."""
    store_dir = Path(store_dir)
    try:
        # Else the message would be about a missing sweep.json inside it.
        why = None
        if not store_dir.is_dir():
            why = not_a_folder_in_the_way(store_dir) or f'{store_dir} does not exist'
    except OSError as error:  # a folder on the way that this user may not enter
        raise ReportError(f'{store_dir} cannot be read ({error.strerror or error})') from None
    if why:
        raise ReportError(
            f"{why}: give the folder of a sweep's results store, "
            'outputs.results/<sweep name> (e.g. results/demo)'
        )
    path = store_dir / MANIFEST_FILE
    if not path.is_file():
        stores = _stores_inside(store_dir)
        if stores:
            # The results folder itself, given where one of its stores was meant.
            raise ReportError(
                f'{store_dir} holds the stores of several sweeps, not one; give the folder '
                f'of one: {", ".join(one_line(str(store)) for store in stores)}'
            )
        raise ReportError(
            f'{path} is missing, so which stored trials belong to the sweep cannot be told. '
            'Run `python run_sweep.py --config <sweep file> --report-only` once: it records '
            'the trials the sweep declares and renders the reports'
        )
    manifest, problem = read_json_checked(path)
    if problem:
        missing = _unregistered_attentions(path)
        if missing:
            # Not damage: the package that brings these attentions is not installed here.
            raise ReportError(
                f'{path} names attention(s) this installation does not know: '
                f'{", ".join(missing)}. Install the package that brings them (entry point '
                f'group {ENTRY_POINT_GROUP}) and run again; the stored results are untouched'
            )
        raise ReportError(
            f'{problem}. It is rewritten by `python run_sweep.py --config '
            '<sweep file> --report-only`'
        )
    return manifest


def _stores_inside(folder: Path, limit: int = 5) -> list[Path]:
    """A few of the sweep stores directly inside `folder` (not through links)."""
    try:
        entries = sorted(folder.iterdir())[:1000]
    except OSError:
        return []
    return [
        entry
        for entry in entries
        if not entry.is_symlink() and entry.is_dir() and (entry / MANIFEST_FILE).is_file()
    ][:limit]


def _unregistered_attentions(path: Path) -> list[str]:
    """The attentions a sweep record lists that no installed spec registers (bounded, as
    shown); [] where the file is not even JSON of that shape."""
    from models.registry import attention_key, attention_names

    if path.is_symlink():  # nothing in a store is read through a link
        return []
    try:
        attentions = json.loads(path.read_text(encoding='utf-8')).get('attentions')
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(attentions, list):
        return []
    known = set(attention_names())
    missing = [str(a)[:40] for a in attentions if attention_key(a) not in known]
    return list(dict.fromkeys(missing))[:10]


def split_by_sweep(
    trials: pd.DataFrame, manifest: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current, other): the sweep's trials, one row each in table order (trials not
    stored yet as pending), and the stored trials it no longer asks for, with why."""
    stored = trials.set_index('trial_id', drop=False)
    data = manifest.get('data') or {}
    rows = []
    for entry in manifest['trials']:
        if entry['trial_id'] in stored.index:
            rows.append(stored.loc[entry['trial_id']].to_dict())
            continue
        rows.append(TrialRecord.from_trial_file(entry, data=data, status=PENDING).row())
    current = pd.DataFrame(rows, columns=trials.columns)
    wanted = {entry['trial_id'] for entry in manifest['trials']}
    other = trials[~trials['trial_id'].isin(wanted)].copy()
    by_name = {entry['name']: upgrade_trial_file(entry) for entry in manifest['trials']}
    other['reason'] = [
        _why_not_current(row, by_name.get(row['name']), data) for row in other.to_dict('records')
    ]
    return current, other


def _why_not_current(
    row: Mapping[str, Any], entry: Mapping[str, Any] | None, data: Mapping[str, Any]
) -> str:
    """What separates a stored trial from the sweep's trial of the same cell."""
    missing = unregistered_attention_problem(row['attention'])
    if entry is None:
        return '; '.join(
            ['its model, attention or seed is not in the sweep'] + ([missing] if missing else [])
        )
    reasons = [missing] if missing else []
    # The stored recipe leaves out options at their defaults; it is read as stored (it
    # may break this version's rules, or hold another version's options).
    recipe = {**_full_recipe(Recipe()), **json.loads(row['recipe'])}
    wanted = _full_recipe(entry['spec'].recipe)
    changed = sorted(k for k in set(recipe) | set(wanted) if recipe.get(k) != wanted.get(k))
    if changed:
        reasons.append(
            'recipe differs: '
            + ', '.join(
                f'{k} {_shown(recipe.get(k))} (sweep: {_shown(wanted.get(k))})' for k in changed
            )
        )
    if json.loads(row['attention_kwargs']) != entry['spec'].attention_kwargs:
        reasons.append(f"attention options {row['attention_kwargs']} differ from the sweep's")
    if int(row['network_revision']) != entry['network_revision']:
        reasons.append(
            f'trained by network definition revision {row["network_revision"]} '
            f'(now {entry["network_revision"]})'
        )
    if row['data_digest'] != data.get('digest'):
        reasons.append(f'trained on other data ({row["data_name"]})')
    return '; '.join(reasons) or 'trained by another version of this code'


def _full_recipe(recipe: Recipe) -> dict[str, Any]:
    """Every option of a recipe, as JSON values (the decay epochs a list)."""
    return json.loads(json.dumps(recipe.model_dump()))


def _shown(value: object) -> str:
    return 'default' if value is None else json.dumps(value)


def load_histories(store_dir: str | Path, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial x epoch, with the trial's model, attention and seed, for the
    rows of `trials` (default: every stored trial)."""
    store = ResultsStore(store_dir)
    if trials is None:
        trials = load_trials(store_dir, store.read_manifest())
    frames = []
    for trial in trials.to_dict('records'):
        rows = store.read_history(trial['trial_id'])
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        for metric in frame.columns.drop('epoch'):
            # A value no trial records (1e308 images/s) is left out, as a missing one is.
            frame[metric] = frame[metric].where(
                [metric_problem(metric, value) is None for value in frame[metric]]
            )
        frame.insert(0, 'trial_id', trial['trial_id'])
        frame.insert(1, 'model', trial['model'])
        frame.insert(2, 'attention', trial['attention'])
        frame.insert(3, 'seed', trial['seed'])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(
            columns=[
                'trial_id',
                'model',
                'attention',
                'seed',
                'epoch',
                'val_loss',
                'val_acc',
                'train_loss',
                'train_acc',
            ]
        )
    return pd.concat(frames, ignore_index=True)


def load_environment(store_dir: str | Path) -> tuple[dict[str, Any], str | None]:
    """What the last run recorded of its machine and packages ({} before any run), and
    what is wrong with its file (None: nothing), shown rather than stopping the reports."""
    path = Path(store_dir) / 'environment.json'
    environment, problem = read_json_checked(path)
    if problem is None and environment is None and os.path.lexists(path):
        problem = f'{path} is not a file; it is rewritten by the next run once it is removed'
    return environment or {}, problem
