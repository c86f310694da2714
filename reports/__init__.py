"""Reports from a results store: the README table, a Markdown table, figures, report.html.

Reads only the store's files (pandas); never imports Ray or MXNet.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterator, Mapping, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from bench.fileio import write_text_atomic
from bench.store import ResultsStore
from bench.trial.recipe import RecipeError, describe_recipe
from bench.validation import bounded, bounded_repr, last_line, one_line
from models.names import VARIANTS, parse_model_name

from .escape import html_text, markdown_text, markdown_url
from .exports import CELLS_NOTE, cells_frame, latex_table
from .outputs import (
    REPORT_MARK,
    REPORT_STORE_META,
    SWEEP_OUTPUT_NAMES,
    check_outputs,
    store_reference,
)
from .readme import (
    BEGIN,
    END,
    ReportError,
    begin_marker,
    check_readme,
    inject_block,
    write_readme,
)
from .reference import load_reference
from .significance import MIN_SEEDS, REFERENCE_RULE, RULE
from .store import load_environment, load_histories, load_manifest, load_trials, split_by_sweep
from .table import PROPORTIONS, cell_speeds, table_context

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    'BEGIN',
    'END',
    'ReportError',
    'check_readme',
    'inject_block',
    'load_histories',
    'load_manifest',
    'load_trials',
    'render_all',
    'split_by_sweep',
    'table_context',
]

# Every value a template prints is escaped for the template's format: HTML entities in
# the .html.j2 templates, Markdown backslash escapes in the .md.j2 ones (reports.escape);
# only Markup made by our own templates passes as it is.
_ENV = Environment(
    loader=PackageLoader('reports', 'templates'),
    undefined=StrictUndefined,
    autoescape=select_autoescape(['html.j2']),
    keep_trailing_newline=True,
    finalize=html_text,
)
_MARKDOWN_ENV = Environment(
    loader=PackageLoader('reports', 'templates'),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=markdown_text,
)
MACS_NOTE = (
    "MACs: convolutions and dense layers, plus each attention's passes over its "
    'C×H×W input (its pooling or other reductions, and the scaling), one MAC per element '
    'each; BN and ReLU are not counted.'
)
SPEED_NOTE = (
    'Speed: training images/s, the median over the epochs and seeds of the cell as its '
    'trials recorded them, and its ratio to vanilla where both trained on the same kind of '
    'device ("other device" where not: never compared)'
)
ORIGINAL_LOSS_NOTE = (
    '"train loss" is the last epoch\'s mean training loss: what the original table called loss.'
)


def render(template: str, **context: Any) -> str:
    env = _MARKDOWN_ENV if template.endswith('.md.j2') else _ENV
    return env.get_template(template).render(**context)


def _title_and_caption(
    context: Mapping[str, Any], trials: pd.DataFrame, manifest: Mapping[str, Any] | None = None
) -> tuple[str, str, list[str]]:
    """The table's title, its short caption (what trained what, on which data, over how
    many seeds) and the notes of 'How to read this' (method, marks, definitions)."""
    data = ', '.join(context['data_names']) or 'unknown data'
    title = (
        'loss and accuracy on the CIFAR-10 test set'
        if context['official']
        else f'loss and accuracy on {data} (not CIFAR-10)'
    )
    recipes = sorted(set(trials['recipe']))
    recipe = json.loads(recipes[0]) if len(recipes) == 1 else None
    parts = [
        f'{context["finished"]} of {context["total"]} trials finished'
        + (f', {context["failed"]} failed' if context['failed'] else '')
    ]
    if (manifest or {}).get('overrides'):
        # A sweep given overrides on the command line is not its file's sweep: say so.
        parts.append(
            f'Sweep {manifest.get("sweep_file") or "file"} with '
            + ', '.join(str(o) for o in manifest['overrides'])
        )
    if context['reference'] and not context['finished']:
        parts.insert(
            0,
            "Not reproduced yet: the original's published numbers stand under "
            'the cells, which are not trained here yet (TBA)',
        )
    if not context['official']:
        parts.append('Trained on data that is not the official CIFAR-10')
    if context['seeds']:
        seeds = ', '.join(map(str, context['seeds']))
        n = context['common_n']
        parts.append(
            (f'Mean ± std over {n} seeds ({seeds})' if n > 1 else f'One seed per cell ({seeds})')
            + ('; a cell with another count says it (n=k)' if context['uneven_seeds'] else '')
            + '; accuracy in percent'
        )
    if recipe:
        parts.append(_recipe_part(recipe))
    parts.append(_backends_part(trials, trained=bool(context['finished'])))
    notes = []
    notes += _networks_parts(trials)
    notes += _reference_and_marks_parts(context)
    if any(m in PROPORTIONS for m in context['metrics']):
        notes.append(
            "Under an attention's accuracy: its difference to vanilla's, in percentage points"
        )
    if 'train_loss' in context['metrics']:
        notes.append(ORIGINAL_LOSS_NOTE)
    if context['overhead']:
        notes.append(MACS_NOTE)
        if context['cost'] and context['cost']['speed']:
            notes.append(SPEED_NOTE)
    if any(cell['text'] == 'TBA' for row in context['rows'] for cell in row['cells']):
        notes.append('TBA: not trained yet')
    if any(cell['text'] == 'failed' for row in context['rows'] for cell in row['cells']):
        notes.append(
            'failed: every trial of the cell failed; report.html lists their errors, and '
            'run_sweep.py --retry-failed trains them again'
        )
    return title, _sentences(parts), [_sentences([note]) for note in notes]


def _sentences(parts: Sequence[str]) -> str:
    return ' '.join(part[0].upper() + part[1:].rstrip('.') + '.' for part in parts)


def _networks_parts(trials: pd.DataFrame) -> list[str]:
    """Which network definitions (and revisions) trained the table's trials: a note for
    the original's networks, one for each declared variant."""
    revisions = sorted(
        {
            (parse_model_name(m).family, int(r))
            for m, r in zip(trials['model'], trials['network_revision'])
        }
    )
    original = [f'{f} revision {r}' for f, r in revisions if f not in VARIANTS]
    notes = []
    if original:
        notes.append(
            f"Network definitions: {', '.join(original)} (the original repository's networks)"
        )
    notes += [
        f'Network definition {family} revision {revision} (the *_{family} rows): '
        f'{VARIANTS[family].source}'
        for family, revision in revisions
        if family in VARIANTS
    ]
    return notes


def _recipe_part(recipe: dict[str, Any]) -> str:
    """The recipe as the caption states it: only the decay points its run reaches."""
    try:
        return describe_recipe(recipe)
    except RecipeError:  # stored by a version with other rules: said as it is stored
        return 'recipe ' + json.dumps(recipe, sort_keys=True)


def _reference_and_marks_parts(context: Mapping[str, Any]) -> list[str]:
    """The caption's account of the reference line under each cell and of the marks."""
    parts = []
    if context['reference']:
        parts.append(
            'Under each cell: orig, the value the original published, and our '
            'difference to it (accuracy in points); orig TBA where the original left '
            f'the cell out. Source: {context["reference"]["source"]}'
        )
    if context['most_seeds'] >= MIN_SEEDS:
        parts.append(
            f'†: differs from vanilla and bold: better than every other cell of the row, '
            f'by {RULE}'
            + (
                f'; *: differs from the published value by {REFERENCE_RULE}'
                if context['reference']
                else ''
            )
        )
    elif context['finished']:
        parts.append(
            f'Fewer than {MIN_SEEDS} seeds per cell: no difference between cells'
            + (', or from the published values,' if context['reference'] else '')
            + f' is judged (train {MIN_SEEDS} seeds or more to judge), so nothing is marked'
        )
    return parts


BACKEND_LABELS = {
    'gluon': 'MXNet Gluon (backend gluon, the reference)',
    'torch': 'PyTorch (backend torch)',
}


def _backends_part(trials: pd.DataFrame, trained: bool = True) -> str:
    """Which framework trained the table (or will): one for all, or which cells each."""
    backends = trials['backend']
    if backends.nunique() <= 1:
        name = 'gluon' if backends.empty else backends.iloc[0]
        return f'{"Trained" if trained else "To be trained"} with {BACKEND_LABELS.get(name, name)}'
    cells = {}
    for (model, attention), backend in zip(zip(trials['model'], trials['attention']), backends):
        cells.setdefault(backend, set()).add(f'{model} {attention}')
    return f'{"Trained" if trained else "To be trained"} with ' + '; '.join(
        f'{BACKEND_LABELS.get(b, b)}: {", ".join(sorted(c))}' for b, c in sorted(cells.items())
    )


def render_all(
    store_dir: str | Path,
    readme: str | Path | None = None,
    figures_dir: str | Path | None = None,
    report_path: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    layout: Mapping[str, Sequence[str]] | None = None,
    insert: bool = False,
    manifest: Mapping[str, Any] | None = None,
    protected: Collection[str | Path] = (),
    figures: bool = True,
    names: Mapping[str, str] = SWEEP_OUTPUT_NAMES,
) -> list[Path]:
    """Every report of the store at `store_dir`; returns the paths written.

    Only the trials the sweep consists of now (its sweep.json) enter the tables and
    figures; other stored trials are listed in report.html under their own heading.
    `options` and `layout` default to the sweep's own; `manifest` to the store's
    sweep.json (--report-only passes one where nothing can be recorded yet).
    Nothing is written where an output points at a file this project did not write, or
    at one of `protected` (the sweep file): ReportError says which and what to do.
    `figures=False`: the tables alone (no figure is drawn, linked, or removed).
    `names`: what messages call the outputs (the sweep file's keys, or a tool's flags).
    """
    store_dir = Path(store_dir)
    figures_dir = Path(figures_dir) if figures_dir else store_dir / 'figures'
    manifest = manifest or load_manifest(store_dir)
    check_outputs(
        readme=readme,
        report=report_path,
        figures_dir=figures_dir,
        insert=insert,
        protected=protected,
        models=(layout or {}).get('models') or manifest.get('models'),
        store_dir=store_dir,
        names=names,
    )
    options = dict(manifest.get('report') or {}, **(options or {}))
    layout = {'models': manifest['models'], 'attentions': manifest['attentions'], **(layout or {})}
    trials, others = split_by_sweep(load_trials(store_dir, manifest), manifest)
    if trials.empty:
        raise ReportError(f'the sweep recorded in {store_dir} has no trials')
    histories = load_histories(store_dir, trials)
    metrics = options.get('metrics', ('val_loss', 'val_acc'))
    context = table_context(
        trials,
        layout.get('models'),
        layout.get('attentions'),
        metrics=metrics,
        overhead=options.get('overhead', False),
        reference=options.get('reference') and load_reference(options['reference']),
        speeds=_speeds(trials, histories),
    )
    title, caption, notes = _title_and_caption(context, trials, manifest)
    # Rendered by our own template with every value escaped, so it is markup to keep.
    table_html = Markup(render('readme_table.html.j2', **context).strip())
    cost_html = (
        Markup(render('cost_table.html.j2', **context['cost']).strip()) if context['cost'] else None
    )
    written = []
    cells = cells_frame(trials, context['statistics'])
    written.append(_write_text(store_dir / 'cells.csv', CELLS_NOTE + cells.to_csv(index=False)))
    written.append(_write_text(store_dir / 'table.tex', latex_table(context, title, caption)))
    if figures:
        from .figures import write_figures  # matplotlib: only where figures are drawn

        figures = write_figures(
            trials,
            histories,
            figures_dir,
            layout.get('models'),
            layout.get('attentions'),
            store_dir=store_dir,
        )
    else:
        figures = []
    written += [path for _, path in figures]

    markdown_path = store_dir / 'table.md'
    _write_text(
        markdown_path,
        f'Results: {markdown_text(title)}. {markdown_text(caption)}\n\n'
        + render('table.md.j2', **context, notes=notes),
    )
    written.append(markdown_path)

    if readme is not None:
        readme = Path(readme)
        block = render(
            'readme_block.md.j2',
            title=title,
            caption=caption,
            notes=notes,
            table_html=table_html,
            cost_html=cost_html,
            figures=[
                {
                    'title': t,
                    'path': markdown_url(Path(os.path.relpath(p, readme.parent)).as_posix()),
                }
                for t, p in figures
            ],
        )
        begin = begin_marker(store_reference(store_dir, readme))
        written.append(
            write_readme(readme, block, insert=insert, begin=begin, name=names['readme'])
        )

    if report_path is not None:
        store = ResultsStore(store_dir)
        environment, environment_problem = load_environment(store_dir)
        html = render(
            'report.html.j2',
            name=store_dir.name,
            title=title,
            caption=caption,
            notes=notes,
            generator=Markup(REPORT_MARK),
            store_meta=Markup(
                REPORT_STORE_META.format(store=store_reference(store_dir, report_path))
            ),
            table_html=table_html,
            cost_html=cost_html,
            figures=[
                {'title': t, 'base64': base64.b64encode(Path(p).read_bytes()).decode('ascii')}
                for t, p in figures
            ],
            trials=_trial_rows(trials, in_order=True),
            others=_trial_rows(others),
            problems=[
                (row['name'], problem)
                for row in trials.to_dict('records')
                for problem in row['problems']
            ]
            + [
                (
                    trial_id,
                    f'{problem}; the trial is in no table or results.csv until its spec.json '
                    'is mended (or its folder removed)',
                )
                for trial_id, problem in store.unreadable_trials(
                    set(trials['trial_id']) | set(others['trial_id'])
                )
            ]
            + store.foreign_entries(),
            environments=_environment_sections(trials, environment, environment_problem),
            reference=context['reference'],
            reference_rows=context['reference_rows'],
            recipes=sorted(set(trials['recipe'])),
        )
        written.append(_write_text(Path(report_path), html))
    return written


def _speeds(trials: pd.DataFrame, histories: pd.DataFrame) -> dict[tuple[str, str], Any]:
    """Each cell's training speed from its finished trials' epochs, with the kind of
    device each trial recorded."""
    from bench.store import DONE

    done = trials[trials['status'] == DONE]
    devices = dict(zip(done['trial_id'], done['device_kind']))
    return cell_speeds(histories[histories['trial_id'].isin(devices)], devices)


def _trial_rows(trials: pd.DataFrame, in_order: bool = False) -> list[dict[str, Any]]:
    """The trials as report.html lists them: `in_order` as given (the sweep's matrix
    order), else by model, attention and seed."""

    def number(value: float | None) -> str:
        return '' if value is None or value != value else f'{value:.4f}'

    rows = []
    ordered = trials if in_order else trials.sort_values(['model', 'attention', 'seed'])
    for trial in ordered.to_dict('records'):
        seconds = trial['total_seconds']
        rows.append(
            {
                **trial,
                'val_loss': number(trial['val_loss']),
                'val_acc': number(trial['val_acc']),
                'train_loss': number(trial['train_loss']),
                'time': '' if seconds is None or seconds != seconds else f'{seconds:.0f}s',
                'device': one_line(bounded(str(trial['device_kind'])))
                if isinstance(trial.get('device_kind'), str)
                else '',
                # A missing error is None, or NaN where pandas 3 makes the
                # column strings: only text is an error.
                'error': last_line(trial['error']) if isinstance(trial['error'], str) else '',
                'reason': trial.get('reason', ''),
            }
        )
    return rows


# Names listed under an environment's heading before "and N more".
NAMES_LISTED = 8


def _names(names: Sequence[str]) -> str:
    listed = ', '.join(one_line(n) for n in names[:NAMES_LISTED])
    more = len(names) - NAMES_LISTED
    return listed + (f' and {more} more' if more > 0 else '')


def _trials(count: int, finished: bool = True) -> str:
    return f'{count} {"finished " if finished else ""}trial' + ('' if count == 1 else 's')


def _environment_sections(
    trials: pd.DataFrame, last_run: Mapping[str, Any], last_run_problem: str | None = None
) -> list[dict[str, Any]]:
    """report.html's Environment: what the finished trials shown were trained with, one
    section per distinct environment (each trial keeps its finishing run's), and the last
    run's (environment.json) where no trial records one of its own."""
    from bench.store import DONE

    groups: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
    unrecorded, unreadable = [], []
    for trial in trials[trials['status'] == DONE].to_dict('records'):
        environment = trial['environment']
        if environment is None:
            unrecorded.append(trial['name'])
        elif not isinstance(environment, dict) or not environment:
            unreadable.append(trial['name'])
        else:
            try:
                key = json.dumps(environment, sort_keys=True, default=str)
            except (RecursionError, ValueError):  # a crafted one, nested past the limit
                key = f'unreadable {trial["trial_id"]}'
            groups.setdefault(key, (environment, []))[1].append(trial['name'])
    sections = []
    if groups:
        sections.append(
            {
                'title': 'Each finished trial keeps the environment of the run that finished '
                "it (a trial resumed by a later run: that run's); packages, GPUs and driver are "
                "those of the machine that ran run_sweep.py, each trial's device is in its row "
                'above.',
                'rows': [],
            }
        )
    alone = len(groups) == 1 and not unrecorded and not unreadable
    for environment, names in groups.values():
        if alone:
            title = (
                'The finished trial shown was trained with:'
                if len(names) == 1
                else f'All {len(names)} finished trials shown were trained with:'
            )
        else:
            title = (
                f'{_trials(len(names))} {"was" if len(names) == 1 else "were"} trained with '
                f'this: {_names(names)}'
            )
        sections.append({'title': title, 'rows': _flatten(environment)})
    for some, what in (
        (unreadable, 'whose final.json holds an environment that is not what this project writes'),
        (unrecorded, 'finished by an earlier version, which recorded no environment per trial'),
    ):
        if some:
            count = _trials(len(some), finished=False)
            sections.append({'title': f'{count} {what}: {_names(some)}', 'rows': []})
    if last_run_problem:  # damage is named wherever it is, not only where it is shown
        sections.append({'title': one_line(bounded(last_run_problem, 600)), 'rows': []})
    elif not groups:
        sections.append(_last_run_section(last_run, trained=bool(unrecorded or unreadable)))
    return sections


def _last_run_section(last_run: Mapping[str, Any], trained: bool) -> dict[str, Any]:
    """environment.json, where no trial shown records an environment of its own."""
    if not last_run:
        return {'title': 'No run has recorded its environment in this store yet.', 'rows': []}
    recorded = last_run.get('recorded_at')
    when = f', recorded {one_line(bounded(str(recorded), 40))}' if recorded else ''
    maybe = ' (the finished trials may have been trained with another)' if trained else ''
    return {'title': f"The last run's (environment.json{when}){maybe}:", 'rows': _flatten(last_run)}


# Bounds of an environment as report.html lists it: a crafted store's file could nest
# past Python's recursion limit or hold thousands of keys.
ENVIRONMENT_ROWS, ENVIRONMENT_DEPTH = 100, 4


def _flatten(mapping: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An environment as (dotted key, value) lines of inert text, at most ENVIRONMENT_ROWS
    of them; what nests deeper than ENVIRONMENT_DEPTH keys is shown as one cut value."""

    def lines(mapping: Mapping[str, Any], prefix: str, depth: int) -> Iterator[tuple[str, str]]:
        for key, value in mapping.items():
            if isinstance(value, dict) and depth < ENVIRONMENT_DEPTH:
                yield from lines(value, f'{prefix}{key}.', depth + 1)
            else:
                text = bounded_repr(value) if isinstance(value, (dict, list)) else value
                yield one_line(bounded(f'{prefix}{key}')), one_line(bounded(str(text)))

    items = list(itertools.islice(lines(mapping, '', 1), ENVIRONMENT_ROWS + 1))
    if len(items) > ENVIRONMENT_ROWS:
        items[ENVIRONMENT_ROWS - 1 :] = [
            ('...', f'more keys than the {ENVIRONMENT_ROWS - 1} listed')
        ]
    return items


def _write_text(path: Path, text: str) -> Path:
    try:
        return write_text_atomic(path, text)
    except OSError as error:
        raise ReportError(
            f'cannot write {path}: {error.strerror or error}; check the '
            "outputs of the sweep file and the folder's permissions"
        ) from None
