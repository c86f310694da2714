"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def nearest_entry(path: str | Path) -> Path | None:
    """The nearest of `path` and its parents that is there (a link to nothing counts),
    or None: where making the missing folders down to `path` would start."""
    path = Path(path)
    for entry in (path, *path.parents):
        try:
            os.lstat(entry)
        except OSError as error:
            # Not there (or below a file or a link loop); any other error, such as a folder
            # this user may not enter, is the caller's to report.
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        return entry
    return None


def not_a_folder_in_the_way(folder: str | Path) -> str | None:
    """Why `folder` cannot be made (or used) as a folder, found without making any: the
    nearest of it and its parents that is there, when that is a file, a link to nothing
    or a link loop (None when it is a folder, or nothing is there at all)."""
    entry = nearest_entry(folder)
    if entry is None or entry.is_dir():
        return None
    kind = 'a link to nothing' if entry.is_symlink() else 'a file'
    return f'{entry} is {kind}, not a folder'


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # The new file keeps the old one's permissions (mkstemp makes it 0600).
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode('utf-8'))


def write_json_atomic(path: str | Path, obj: object) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


# A \uD800-\uDFFF escape: JSON may hold a lone surrogate, which no UTF-8 writer can write.
_SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F]')


def read_json(path: str | Path) -> dict[str, Any] | list[Any] | str | int | float | bool | None:
    """The JSON value of a file; a lone surrogate in its text (a crafted file, or an
    error message that held a file name's undecodable bytes) becomes a backslash escape,
    so that whatever is read can be written again."""
    with open(path, encoding='utf-8') as handle:
        text = handle.read()
    value = json.loads(text)
    return _without_lone_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode('utf-8', 'backslashreplace').decode('utf-8')
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _without_lone_surrogates(key): _without_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def publish_dir_atomic(staging: str | Path, final: str | Path) -> Path:
    """Move a fully written folder `staging` to `final`, replacing any old `final`.

    Folders cannot be swapped in one rename, so the old one is first renamed out of
    the way; a crash in between leaves `final` missing, never half-written.
    """
    staging, final = Path(staging), Path(final)
    _fsync_dir(staging)
    retired = None
    if final.exists():
        retired = final.with_name(f'.{final.name}.retired')
        if retired.exists():
            shutil.rmtree(retired)
        os.replace(final, retired)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return final
