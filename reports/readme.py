"""Put the results block into a README between two marker comments, touching nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from bench.errors import BenchError
from bench.fileio import write_bytes_atomic

BEGIN = '<!-- results:begin (written by run_sweep.py; edits inside are overwritten) -->'
END = '<!-- results:end -->'
BEGIN_PREFIX = '<!-- results:begin'
# The begin marker names the store whose results the block shows (reports.outputs.
# store_reference), so that a second sweep pointed at this README does not replace the
# first one's table; BEGIN, naming none, is what older versions wrote.
_OWNED_BEGIN = (
    '<!-- results:begin (written by run_sweep.py from the store {store}; '
    'edits inside are overwritten) -->'
)
# A README inside its own store refers to it as '.', which reads as a stray dot alone:
# the marker says what it is.
_HERE_NOTE = " (this README's folder)"
_OWNER = re.compile(
    r'<!-- results:begin \(written by run_sweep\.py from the store (\S+)'
    rf'(?:{re.escape(_HERE_NOTE)})?;'
)


def begin_marker(store: str | None = None) -> str:
    """The begin marker line of a block showing the store `store` refers to."""
    if store is None:
        return BEGIN
    return _OWNED_BEGIN.format(store=store + _HERE_NOTE if store == '.' else store)


def block_owner(text: str) -> str | None:
    """The store reference that the begin marker in `text` names; None where it names none."""
    match = _OWNER.search(text)
    return match.group(1) if match else None


class ReportError(BenchError, RuntimeError):
    """The reports cannot be written; the message says why and what to do."""


def inject_block(
    text: str,
    block: str,
    insert: bool = False,
    source: str = 'README.md',
    begin: str = BEGIN,
) -> str:
    """`text` with the block between the markers replaced by `block`, and the begin
    marker by `begin`.

    Without markers: a ReportError, or with `insert` the block appended at the end.
    """
    begins, ends = text.count(BEGIN_PREFIX), text.count(END)
    if begins > 1 or ends > 1:
        raise ReportError(
            f'{source} holds {begins} result begin markers and {ends} end markers; '
            'it needs exactly one pair (a block was duplicated by hand or by an '
            'older version): delete the extra blocks, keeping one pair of '
            f'{BEGIN!r} and {END!r}'
        )
    if BEGIN_PREFIX in block or END in block:
        # The block is escaped text of ours: marker text in it is a bug, and writing it
        # would make the README grow by a block on every run.
        raise ReportError(
            f'the results block for {source} contains result marker text; '
            'nothing was written (please report this)'
        )
    start = text.find(BEGIN_PREFIX)
    end = text.find(END, start + 1) if start >= 0 else -1
    newline = '\r\n' if '\r\n' in text else '\n'
    body = block.strip('\n').replace('\n', newline)
    if start < 0 or end < 0:
        if start >= 0 or END in text:
            raise ReportError(
                f'{source}: only one of the two result markers is present; '
                f'it needs both {BEGIN!r} and {END!r} on lines of their own'
            )
        if not insert:
            raise ReportError(
                f'{source} has no results markers. Add the two lines\n  {BEGIN}\n  {END}\n'
                'where the table should go, or run again with --insert to append it'
            )
        separator = '' if text.endswith(newline) or not text else newline
        return f'{text}{separator}{newline}{begin}{newline}{body}{newline}{END}{newline}'
    return text[:start] + begin + newline + body + newline + text[end:]


def check_readme(path: str | Path, insert: bool = False) -> str | None:
    """Raise the ReportError that writing the block into `path` would raise, before a
    sweep spends hours training for a table it cannot place; else the store reference
    its block names (None: none, or no README yet)."""
    path = Path(path)
    if not path.is_file():
        return None
    text = path.read_text(encoding='utf-8')
    inject_block(text, '', insert=insert, source=str(path))
    return block_owner(text)


def write_readme(
    path: str | Path,
    block: str,
    insert: bool = False,
    begin: str = BEGIN,
    name: str = 'outputs.readme',
) -> Path:
    """Inject into the README at `path` (created if missing); rewrite only on change.
    `name`: what the user set the path with, for the message where it cannot be written."""
    path = Path(path)
    if not path.is_file():
        insert = True  # a new file holds nothing that could be lost
        original = ''
    else:
        with open(path, encoding='utf-8', newline='') as handle:
            original = handle.read()
    updated = inject_block(original, block, insert=insert, source=str(path), begin=begin)
    if updated != original:
        try:
            write_bytes_atomic(path, updated.encode('utf-8'))
        except OSError as error:
            raise ReportError(
                f'cannot write {path}: {error.strerror or error}; make it writable, or '
                f'point {name} at another file'
            ) from None
    return path
