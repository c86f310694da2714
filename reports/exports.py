"""The results as files for other tools: cells.csv (one row per cell and metric, with its
statistics) and table.tex (a booktabs table to paste into a paper)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bench.store import DONE
from bench.validation import one_line, spreadsheet_text

from .significance import ALPHA, CONFIDENCE, MIN_SEEDS

if TYPE_CHECKING:
    import pandas as pd

    from .table import CellStatistics

CELL_COLUMNS = (
    'model',
    'attention',
    'metric',
    'n',
    'mean',
    'std',
    'difference_to_vanilla',
    'ci_low',
    'ci_high',
    'p',
    'significant',
    'backend',
)


def cells_frame(
    trials: pd.DataFrame, cells: Mapping[tuple[str, str, str], CellStatistics]
) -> pd.DataFrame:
    """One row per model, attention and metric of the table (`cells`, as
    reports.table.table_context computed them): n, mean, sample std, the difference to
    vanilla with its CONFIDENCE interval and Welch's p, and whether it is significant
    (reports.significance: p < ALPHA with MIN_SEEDS seeds or more a side), and the
    backends of the cell's finished trials. Values are as stored (accuracy as a
    fraction): a file for other tools."""
    import pandas as pd

    done = trials[trials['status'] == DONE]
    rows = []
    for (model, attention, metric), (values, summary, gap) in cells.items():
        cell = done[(done['model'] == model) & (done['attention'] == attention)]
        rows.append(
            {
                'model': model,
                'attention': attention,
                'metric': metric,
                'n': len(values),
                'mean': summary.mean if summary else None,
                'std': summary.std if summary and len(values) > 1 else None,
                'difference_to_vanilla': gap.difference if gap else None,
                'ci_low': gap.ci[0] if gap and gap.ci else None,
                'ci_high': gap.ci[1] if gap and gap.ci else None,
                'p': gap.p if gap else None,
                'significant': bool(gap and gap.significant),
                'backend': spreadsheet_text(','.join(sorted(set(cell['backend'])))),
            }
        )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


CELLS_NOTE = (
    f'# difference_to_vanilla: mean minus vanilla mean; ci_low/ci_high: its '
    f"{CONFIDENCE:.0%} confidence interval; p: Welch's t-test; significant: p < {ALPHA:g} "
    f'with {MIN_SEEDS} seeds or more on each side\n'
)


def latex_table(context: Mapping[str, Any], title: str, caption: str) -> str:
    """The results table (reports.table.table_context) as a booktabs LaTeX table, through
    pandas' Styler: every text escaped for LaTeX, the significant best in bold, ± and the
    marks as math."""
    import pandas as pd

    columns = pd.MultiIndex.from_tuples(
        [(group['label'], column) for group in context['groups'] for column in group['columns']]
    )
    index = pd.Index([row['model'] for row in context['rows']])
    texts = [[_cell_text(cell) for cell in row['cells']] for row in context['rows']]
    bold = [[bool(cell.get('bold')) for cell in row['cells']] for row in context['rows']]
    frame = pd.DataFrame(texts, index=index, columns=columns)
    weights = pd.DataFrame(bold, index=index, columns=columns).replace(
        {True: 'textbf: --rwrap;', False: ''}
    )
    styler = (
        frame.style.format(escape='latex')
        .format_index(escape='latex', axis=0)
        .format_index(escape='latex', axis=1)
        .apply(lambda _: weights, axis=None)
    )
    latex = styler.to_latex(
        hrules=True,
        column_format='l' + 'c' * len(frame.columns),
        multicol_align='c',
        caption=latex_text(f'{title}. {caption}'),
        position='htbp',
    )
    return '% Needs \\usepackage{booktabs} in the preamble.\n' + _math_signs(latex)


def _cell_text(cell: Mapping[str, Any]) -> str:
    return cell['text'] + ('†' if cell.get('beyond_vanilla') else '')


LATEX_SPECIAL = {
    '\\': r'\textbackslash{}',
    '&': r'\&',
    '%': r'\%',
    '$': r'\$',
    '#': r'\#',
    '_': r'\_',
    '{': r'\{',
    '}': r'\}',
    '~': r'\textasciitilde{}',
    '^': r'\textasciicircum{}',
}


def latex_text(text: str) -> str:
    """Plain text as LaTeX text: its special characters escaped."""
    return ''.join(LATEX_SPECIAL.get(character, character) for character in one_line(text))


def _math_signs(latex: str) -> str:
    return latex.replace('±', r'$\pm$').replace('†', r'$^\dagger$').replace('×', r'$\times$')
