"""Per-epoch checkpoints of a trial: parameters, optimizer state, epoch, RNG state, history.

A checkpoint is a folder `epoch-NNNN` holding the trial backend's own files (for
Gluon `model.params`, `optimizer.params` and `optimizer.json`) and `state.json`; it
is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint under a real name. Framework-free: the backend writes and reads its
files through the functions it is handed.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.errors import BenchError
from bench.fileio import publish_dir_atomic, read_json, write_json_atomic
from bench.validation import bounded_repr, one_line

STATE_FILE = 'state.json'
# MXNet's pickled optimizer state, which Gluon checkpoints of earlier versions hold: read
# once more as data when such a checkpoint is resumed (bench.trial.gluon.optimizer_state),
# never unpickled, and not written any more.
LEGACY_PICKLE_FILE = 'trainer.states'
FORMAT_VERSION = 1
_EPOCH_DIR = re.compile(r'^epoch-(\d{4,})$')


class CheckpointMismatch(BenchError, RuntimeError):
    """A checkpoint that belongs to another trial."""


def write_checkpoint(
    folder: str | Path, save_weights: Callable[[Path], None], state: Mapping[str, Any]
) -> Path:
    """Write a complete checkpoint into `folder` (which must not exist yet); the
    backend's `save_weights(folder)` writes its own files."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    save_weights(folder)
    write_json_atomic(folder / STATE_FILE, dict(state, format=FORMAT_VERSION))
    return folder


def save_checkpoint(
    root: str | Path, save_weights: Callable[[Path], None], state: Mapping[str, Any], keep: int = 1
) -> Path:
    """Checkpoint of the epoch state['epoch'] under root, keeping the newest `keep` of them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix='.staging-', dir=root))
    shutil.rmtree(staging)
    write_checkpoint(staging, save_weights, state)
    final = publish_dir_atomic(staging, root / f'epoch-{state["epoch"]:04d}')
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _EPOCH_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's state.json; DamagedFile (a ValueError) when it is not JSON or not
    of the shape this project writes (bench.records), OSError when it cannot be read."""
    from bench.records import DamagedFile, check_record

    try:
        value = read_json(Path(folder) / STATE_FILE)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, or nested too deeply
        raise DamagedFile(str(error)) from None
    return check_record(value, STATE_FILE)


def load_checkpoint(
    folder: str | Path,
    load_weights: Callable[[Path], None],
    expected_spec: Mapping[str, Any] | None = None,
    expected_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore the backend's files through `load_weights(folder)`; return the state dict.
    CheckpointMismatch, naming what differs, where the checkpoint is of another trial
    (`expected_spec`, but for its epochs) or of other data (`expected_data`: a data
    identity; a checkpoint of a version that kept none is not judged on it)."""
    folder = Path(folder)
    state = read_state(folder)
    differences = []
    if expected_spec is not None:
        differences += run_differences(state.get('spec'), expected_spec)
    saved_data = state.get('data')
    if expected_data is not None and isinstance(saved_data, Mapping):
        differences += [
            f'data {key}: {_shown(expected_data.get(key))} here, '
            f'{_shown(saved_data.get(key))} in the checkpoint'
            for key in DATA_IDENTITY_KEYS
            if saved_data.get(key) != expected_data.get(key)
        ]
    if differences:
        raise CheckpointMismatch(
            f'the checkpoint in {folder} was made for another trial ('
            + '; '.join(differences)
            + '); move it away or point the trial at its own folder'
        )
    load_weights(folder)
    return state


# What makes two data sets the same in a trial's identity (bench.trial.recipe.trial_id).
DATA_IDENTITY_KEYS = ('digest', 'official')


def run_differences(saved_spec: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> list[str]:
    """What of `spec` differs from a checkpoint's `saved_spec`, each as `key: value here,
    value in the checkpoint` ([] when the checkpoint is a prefix of a run of `spec`)."""
    if same_run(saved_spec, spec):
        return []
    saved = dict(saved_spec) if isinstance(saved_spec, Mapping) else {}
    found = []
    for key in sorted(set(spec) | set(saved)):
        here, there = spec.get(key), saved.get(key)
        if key == 'recipe' and isinstance(here, Mapping) and isinstance(there, Mapping):
            found += [
                f'recipe.{name}: {_shown(here.get(name))} here, '
                f'{_shown(there.get(name))} in the checkpoint'
                for name in sorted(set(here) | set(there))
                if name != 'epochs' and here.get(name) != there.get(name)
            ]
        elif here != there:
            found.append(f'{key}: {_shown(here)} here, {_shown(there)} in the checkpoint')
    return found or ['its spec']


def _shown(value: Any) -> str:
    return one_line(bounded_repr(value))


def same_run(saved_spec: Mapping[str, Any] | None, spec: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint of `saved_spec` is a prefix of a run of `spec`.

    The number of epochs is left out: the schedule does not depend on it, so a
    run may be extended from its last checkpoint.
    """

    def without_epochs(s: Mapping[str, Any] | None) -> dict[str, Any]:
        s = dict(s or {})
        s['recipe'] = {k: v for k, v in dict(s.get('recipe') or {}).items() if k != 'epochs'}
        return s

    return without_epochs(saved_spec) == without_epochs(spec)


# A checkpoint crosses from a trial to the driver (and back, to resume) as the bytes of
# an uncompressed tar of its files: the trial's node and the store's need share no disk.
MAX_CHECKPOINT_FILES = 64
MAX_CHECKPOINT_BYTES = 4 << 30


def pack_checkpoint(folder: str | Path) -> bytes:
    """The bytes of the checkpoint folder: a tar of its files (sorted, no folders)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=path.name, recursive=False)
    return buffer.getvalue()


def unpack_checkpoint(blob: bytes, folder: str | Path) -> Path:
    """Write the files of a packed checkpoint into `folder` (which must not exist yet);
    ValueError for anything but plain files with plain names, within the size bounds.
    Returns folder."""
    folder = Path(folder)
    if len(blob) > MAX_CHECKPOINT_BYTES:
        raise ValueError(f'a checkpoint of {len(blob):,} bytes is larger than any trial writes')
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode='r:') as tar:
            members = tar.getmembers()
            if len(members) > MAX_CHECKPOINT_FILES:
                raise ValueError(f'{len(members)} files: more than a checkpoint holds')
            folder.mkdir(parents=True)
            for member in members:
                name = member.name
                if (
                    not member.isfile()
                    or '/' in name
                    or name.startswith('.')
                    or name in ('', '..')
                    or '\0' in name
                ):
                    raise ValueError(f'{name!r:.80} is not a plain file of a checkpoint')
                with tar.extractfile(member) as source, open(folder / name, 'xb') as target:
                    shutil.copyfileobj(source, target)
    except tarfile.TarError as error:
        raise ValueError(f'not a packed checkpoint ({error})') from None
    return folder
