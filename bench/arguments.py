"""Checks shared by the command-line tools (`bench.train`, `bench.benchmark`): a number out
of range or an output that cannot be written is refused before any work starts, with one
message, as run_sweep.py refuses a bad sweep file."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bench.fileio import nearest_entry, not_a_folder_in_the_way

# JSON outputs of the tools are small; a larger file at their path is not one of them.
_MAX_JSON_BYTES = 64 << 20


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
        if value < low or (high is not None and value > high):
            span = f'{low} to {high}' if high is not None else f'at least {low}'
            raise argparse.ArgumentTypeError(f'expected {span}, got {value}')
        return value

    parse.__name__ = 'whole number'
    return parse


def network_name_problems(
    models: Iterable[str], attentions: list[str], backends: Sequence[str], backend_flag: bool
) -> list[str]:
    """What is wrong with the networks a tool is asked for: unknown models and attentions
    (each message lists the valid names) and attentions a backend lacks (with `--backend`
    choices where the tool has that flag). Puts the registry's spelling of each known
    attention into `attentions`."""
    from models.names import parse_model_name
    from models.registry import attention_spec, parse_attention_name

    problems = []
    for name in models:
        try:
            parse_model_name(name)
        except KeyError as error:
            problems.append(str(error))
    for index, name in enumerate(attentions):
        try:
            attentions[index] = parse_attention_name(name)
        except KeyError as error:
            problems.append(str(error))
            continue
        spec = attention_spec(attentions[index])
        for backend in backends:
            problem = spec.backend_problem(backend)
            if problem:
                choose = ' or choose --backend ' + ' or '.join(spec.backends)
                problems.append(f'{problem}; leave it out{choose if backend_flag else ""}')
    return problems


def writable_json_problem(path: str | Path, what: str) -> str | None:
    """Why the tool's JSON output cannot be written at `path` (None when it can): a folder,
    a file that is not JSON (the tool writes JSON, so anything else there is someone else's
    and is not overwritten), or a place where writing fails, tried by creating and removing
    a file beside it, so that hours of work do not end in a failed write."""
    try:
        return _json_target_problem(Path(path), what)
    except OSError as error:  # a folder on the way that this user may not enter
        return f'{what} {path} cannot be checked ({error.strerror or error})'


def _json_target_problem(path: Path, what: str) -> str | None:
    if path.is_dir():
        return f'{what} {path} is a folder; name a file'
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return f'{what} {path} is a link or a special file; name a file of its own'
    if path.is_file() and not _holds_json(path):
        return (
            f'{what} {path} exists and is not JSON, so this tool did not write it; '
            'choose another path (it is not overwritten)'
        )
    return _unwritable_folder(path.parent, f'{what} {path}')


def writable_folder_problem(path: str | Path, what: str) -> str | None:
    """Why files cannot be written in the folder `path` (None when they can)."""
    path = Path(path)
    try:
        return _unwritable_folder(path, f'{what} {path}')
    except OSError as error:  # a folder on the way that this user may not enter
        return f'{what} {path} cannot be checked ({error.strerror or error})'


def _unwritable_folder(folder: Path, named: str) -> str | None:
    """Why `named` cannot be written in `folder` or in the folders the write would create
    there: tried by creating and removing a file in the nearest folder that exists. Creates
    no folder, so a check that fails (or a run stopped by another problem) leaves none."""
    blocked = not_a_folder_in_the_way(folder)
    if blocked:
        return f'{named} cannot be written: {blocked}'
    try:
        handle, probe = tempfile.mkstemp(prefix='.probe-', dir=nearest_entry(folder) or '.')
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f'{named} cannot be written ({error.strerror or error})'
    return None


def _holds_json(path: Path) -> bool:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            return False
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True
