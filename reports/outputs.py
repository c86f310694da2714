"""Where the reports go, checked before anything is written: never over a file that this
project did not write, never over the sweep file, never two outputs on one path.

The README is ours between its two markers (reports.readme); report.html and the
figures carry a mark of this project (a generator meta tag; a PNG text chunk), and a
file at their path without it is refused rather than overwritten. Each output also names
the store it shows, so that a second sweep whose outputs point at the first one's is
refused instead of replacing them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from bench.validation import bounded, one_line

from .readme import BEGIN, ReportError, check_readme

GENERATOR = 'channel-attention-bench'
REPORT_MARK = f'<meta name="generator" content="{GENERATOR}">'
# report.html as versions before the mark wrote it.
LEGACY_REPORT_MARK = ': channel attention on CIFAR ResNets</title>'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Where report.html and the figures name the store they show (store_reference).
REPORT_STORE_META = '<meta name="results-store" content="{store}">'
_REPORT_STORE = re.compile(r'<meta name="results-store" content="([^"<>]*)">')
FIGURE_STORE_KEY = 'Results store'
# Figures of versions before the mark: matplotlib's Software chunk and the 110 dpi they
# were saved at (pHYs: 4331 pixels per metre), which a user's default savefig lacks.
LEGACY_FIGURE_MARKS = (b'Software\x00Matplotlib', b'pHYs\x00\x00\x10\xeb\x00\x00\x10\xeb\x01')
# The figures' names: a curves figure per model, one bar chart. Those of ours that a
# report no longer shows are deleted; present ones are replaced.
CURVES_PREFIX, ACCURACY_FIGURE = 'curves_', 'final_accuracy.png'
COST_FIGURE, SPEED_FIGURE = 'accuracy_vs_cost.png', 'speed.png'
FIGURE_PATTERNS = (f'{CURVES_PREFIX}*.png', ACCURACY_FIGURE, COST_FIGURE, SPEED_FIGURE)


def figure_names(models: Iterable[str]) -> list[str]:
    """The files the figures of a report on these models are written to."""
    return [f'{CURVES_PREFIX}{model}.png' for model in models] + [
        ACCURACY_FIGURE,
        COST_FIGURE,
        SPEED_FIGURE,
    ]


# What each output may be: the reports write HTML and Markdown, and nothing else is
# written over or created (a sweep file that names ~/.ssh/authorized_keys is refused).
README_SUFFIXES = ('.md', '.markdown')
REPORT_SUFFIXES = ('.html', '.htm')


def _head(path: str | Path, size: int = 4096) -> bytes:
    """The first bytes of a regular file (OSError for anything else: opening a FIFO
    would wait for a writer)."""
    if not Path(path).is_file():
        raise OSError(f'{path} is not a regular file')
    with open(path, 'rb') as handle:
        return handle.read(size)


def store_reference(store_dir: str | Path, output: str | Path) -> str:
    """How an output names the store it shows: the store's path from the output's folder
    (a checkout moved as a whole keeps it), as given, not through links (a results folder
    linked to another disk keeps it too), percent-quoted so that it is one word that no
    HTML attribute, comment or PNG text chunk can be broken out of."""
    relative = os.path.relpath(os.path.abspath(store_dir), os.path.dirname(os.path.abspath(output)))
    return quote(Path(relative).as_posix(), safe='/-._~', errors='surrogateescape')


# A crafted reference is quoted in a message up to this many characters.
_REFERENCE_LIMIT = 200


def _other_store(reference: str | None, output: Path, store_dir: str | Path | None) -> str | None:
    """The store that `reference`, read from `output`, names, where that is not
    `store_dir`, described for a message; None where it names none or this one."""
    if reference is None or store_dir is None:
        return None
    named = Path(os.path.dirname(os.path.abspath(output))) / unquote(
        reference, errors='surrogateescape'
    )
    try:
        resolved = named.resolve()
        if resolved == Path(store_dir).resolve():
            return None
        there = resolved.is_dir()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a loop of links
        there = False
    text = bounded(one_line(os.path.normpath(named)), _REFERENCE_LIMIT)
    return text if there else f'{text}, which is not there any more: moved or renamed?'


def report_store(path: str | Path) -> str | None:
    """The store reference a report of ours names; None for older reports and others."""
    try:
        match = _REPORT_STORE.search(_head(path).decode('utf-8', errors='replace'))
    except OSError:
        return None
    return match.group(1) if match else None


def _png_text(head: bytes) -> dict[str, str]:
    """The tEXt chunks ahead of the image data in the first bytes of a PNG."""
    text, position = {}, len(PNG_SIGNATURE)
    while position + 8 <= len(head):
        length = int.from_bytes(head[position : position + 4], 'big')
        kind, data = head[position + 4 : position + 8], head[position + 8 : position + 8 + length]
        if kind == b'IDAT' or len(data) < length:
            break
        if kind == b'tEXt':
            key, _, value = data.partition(b'\0')
            text[key.decode('latin-1')] = value.decode('latin-1')
        position += 12 + length
    return text


def figure_store(path: str | Path) -> str | None:
    """The store reference a figure of ours names; None for older figures and others."""
    try:
        return _png_text(_head(path)).get(FIGURE_STORE_KEY)
    except OSError:
        return None


def figure_of_another_store(path: str | Path, store_dir: str | Path | None) -> str | None:
    """The other store whose results the figure at `path` shows; None where it shows
    `store_dir`'s, or names no store."""
    return _other_store(figure_store(path), Path(path), store_dir)


def shows_store(output: str | Path, store_dir: str | Path, kind: str) -> bool:
    """Whether the output at `output` (kind 'readme', 'report' or 'figures', a folder) was
    rendered from the store at `store_dir` by a version that names it in its outputs."""
    from .readme import block_owner

    output = Path(output)

    def names_this_store(reference: str | None, path: Path) -> bool:
        return reference is not None and _other_store(reference, path, store_dir) is None

    try:
        if kind == 'readme':
            text = output.read_text(encoding='utf-8', errors='replace') if output.is_file() else ''
            return names_this_store(block_owner(text), output)
        if kind == 'report':
            return output.is_file() and names_this_store(report_store(output), output)
        return output.is_dir() and any(
            names_this_store(figure_store(png), png) for png in output.glob('*.png')
        )
    except OSError:
        return False


def is_our_report(path: str | Path) -> bool:
    try:
        head = _head(path).decode('utf-8', errors='replace')
    except OSError:
        return False
    return REPORT_MARK in head or LEGACY_REPORT_MARK in head


def is_our_figure(path: str | Path) -> bool:
    """A PNG this project wrote: marked with the generator (older versions: matplotlib's
    own Software chunk, the only writer of PNGs by these names here)."""
    try:
        head = _head(path)
    except OSError:
        return False
    return head.startswith(PNG_SIGNATURE) and (
        GENERATOR.encode() in head or all(mark in head for mark in LEGACY_FIGURE_MARKS)
    )


# How each output is named in a message: the sweep file's key, or the flag of
# `python -m reports`, whichever the user gave.
SWEEP_OUTPUT_NAMES = {
    'readme': 'outputs.readme',
    'report': 'outputs.report',
    'figures': 'outputs.figures',
}
FLAG_OUTPUT_NAMES = {'readme': '--readme', 'report': '--report', 'figures': '--figures'}


def output_problems(
    readme: str | Path | None = None,
    report: str | Path | None = None,
    figures_dir: str | Path | None = None,
    protected: Collection[str | Path] = (),
    insert: bool = False,
    models: Iterable[str] | None = None,
    store_dir: str | Path | None = None,
    names: Mapping[str, str] = SWEEP_OUTPUT_NAMES,
) -> list[str]:
    """What keeps the reports from being written where the outputs point, each with what to
    do; [] when nothing does. `protected`: files no output may be (the sweep file);
    `models`: those the figures show (None: any figure name of ours counts); `store_dir`:
    the store whose results they show (outputs showing another store's are refused);
    `names`: what the messages call each output."""
    given = {'readme': readme, 'report': report, 'figures': figures_dir}
    given = {key: Path(path) for key, path in given.items() if path is not None}
    problems = _path_problems(given, protected, names)
    if problems:
        return problems
    if 'report' in given:
        problems += _report_problems(given['report'], store_dir, names['report'])
    if 'readme' in given:
        problems += _readme_problems(given['readme'], insert, store_dir, names['readme'])
    if 'figures' in given:
        problems += _figures_problems(given['figures'], models, store_dir, names['figures'])
    return problems


def _path_problems(
    given: Mapping[str, Path], protected: Collection[str | Path], names: Mapping[str, str]
) -> list[str]:
    """Outputs at the sweep file, at one path together, or of the wrong kind of file."""
    problems = []
    for key, path in given.items():
        if any(path.resolve() == Path(p).resolve() for p in protected):
            problems.append(
                f'{names[key]} is {path}, the sweep file itself; point it at a file of its own'
            )
    seen = {}
    for key, path in given.items():
        if path.resolve() in seen:
            problems.append(
                f'{names[key]} and {names[seen[path.resolve()]]} are both {path}; give each '
                'its own path'
            )
        seen.setdefault(path.resolve(), key)
    for key, suffixes, kind in (
        ('readme', README_SUFFIXES, 'Markdown README'),
        ('report', REPORT_SUFFIXES, 'HTML report'),
    ):
        path = given.get(key)
        if path is None:
            continue
        if path.suffix.lower() not in suffixes:
            problems.append(
                f'{names[key]} is {path}: the {kind} is written only to a file ending in '
                f'{" or ".join(suffixes)}; name such a file'
            )
        elif path.is_symlink():
            problems.append(f'{names[key]} is {path}, a link; name a file of its own')
    return problems


def _report_problems(report: Path, store_dir: str | Path | None, name: str) -> list[str]:
    if not report.exists():
        return []
    if report.is_dir() or not is_our_report(report):
        return [
            f'{name} is {report}, which this project did not write (no report of ours is '
            'there); choose another path for the report, or move that file away'
        ]
    other = _other_store(report_store(report), report, store_dir)
    if other is not None:
        return [
            f'{name} is {report}, the report of another store ({other}); choose another '
            'path for this report, or move that file away'
        ]
    return []


def _readme_problems(
    readme: Path, insert: bool, store_dir: str | Path | None, name: str
) -> list[str]:
    if readme.is_dir():
        return [f'{name} is {readme}, a folder; name a Markdown file']
    if not readme.is_file():
        return []
    try:
        other = _other_store(check_readme(readme, insert=insert), readme, store_dir)
    except ReportError as error:
        return [str(error)]
    except (OSError, UnicodeDecodeError) as error:
        return [f'{name} {readme} cannot be read as text ({error}); name a Markdown file']
    if other is not None:
        return [
            f'{name} is {readme}, whose results block shows another store ({other}); '
            f"point {name} at this sweep's own README, or replace that block's begin "
            f'marker line by {BEGIN} to give the block to this sweep'
        ]
    return []


def _figures_problems(
    figures: Path, models: Iterable[str] | None, store_dir: str | Path | None, name: str
) -> list[str]:
    if figures.is_symlink():
        return [
            f'{name} is {figures}, a link; name a folder of its own (the figures are never '
            'written through a link)'
        ]
    if not figures.exists():
        return []
    if not figures.is_dir():
        return [f'{name} is {figures}, a file; name a folder for the figures']
    present = (
        sorted(p for pattern in FIGURE_PATTERNS for p in figures.glob(pattern))
        if models is None
        else [figures / figure for figure in figure_names(models)]
    )
    problems = []
    for path in present:
        if os.path.lexists(path) and not is_our_figure(path):
            problems.append(
                f'{path} is not a figure this project wrote, and the reports would replace '
                f'it; move it away, or point {name} at a folder of its own'
            )
        elif other := figure_of_another_store(path, store_dir):
            problems.append(
                f'{path} is a figure of another store ({other}), which the reports would '
                f'replace; point {name} at a folder of its own, or move that figure away'
            )
    return problems


def check_outputs(**outputs: Any) -> None:
    """Raise ReportError listing output_problems(**outputs), if any."""
    problems = output_problems(**outputs)
    if problems:
        raise ReportError('\n'.join(problems))
