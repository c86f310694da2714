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
from typing import Any

from bench.fileio import nearest_entry, not_a_folder_in_the_way

# JSON outputs of the tools are small; a larger file at their path is not one of them.
_MAX_JSON_BYTES = 64 << 20
# The key that names the tool which wrote a JSON output: the only mark that tells a file
# a tool may replace from any other JSON (a store's final.json, a package.json).
WRITTEN_BY = 'written_by'


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


def tool_json(tool: str, content: dict[str, Any]) -> dict[str, Any]:
    """`content` as `tool` writes it: marked with its name, so that a later run of the
    tool replaces this file and nothing else."""
    return {WRITTEN_BY: tool, **content}


def writable_json_problem(path: str | Path, what: str, tool: str) -> str | None:
    """Why `tool`'s JSON output cannot be written at `path` (None when it can): a folder,
    a file that `tool` did not write (anything else there is someone else's and is not
    overwritten, a results store's own JSON files above all), a path inside a results store
    (only run_sweep.py writes there), or a place where writing fails, tried by creating
    and removing a file beside it, so that hours of work do not end in a failed write."""
    try:
        return _json_target_problem(Path(path), what, tool)
    except OSError as error:  # a folder on the way that this user may not enter
        return f'{what} {path} cannot be checked ({error.strerror or error})'


def _json_target_problem(path: Path, what: str, tool: str) -> str | None:
    if path.is_dir():
        return f'{what} {path} is a folder; name a file'
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return f'{what} {path} is a link or a special file; name a file of its own'
    if path.is_file() and _written_by(path) != tool:
        return (
            f'{what} {path} exists and {tool} did not write it (it is not JSON with '
            f'"{WRITTEN_BY}": "{tool}"), so it is left as it is; choose another path, or '
            'delete that file first'
        )
    store = _enclosing_store(path)
    if store is not None:
        return (
            f'{what} {path} is inside the results store {store}, which only run_sweep.py '
            'writes; choose a path outside it'
        )
    return _unwritable_folder(path.parent, f'{what} {path}')


def _enclosing_store(path: Path) -> Path | None:
    """The results store that `path` would be written into (a folder holding the store's
    sweep.json and trials/), or None."""
    from bench.store import MANIFEST_FILE

    for folder in Path(os.path.abspath(path)).parents:
        if (folder / MANIFEST_FILE).is_file() and (folder / 'trials').is_dir():
            return folder
    return None


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


def _written_by(path: Path) -> str | None:
    """The tool named in a JSON output's mark (None for any other file)."""
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            return None
        content = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return content.get(WRITTEN_BY) if isinstance(content, dict) else None
