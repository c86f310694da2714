"""Published tables shipped with the project, to show beside our numbers.

A reference is a CSV in reports/published/ (`NAME.csv`): comment lines naming its source,
then model, attention and one column per metric it published. Cells it left TBA
are absent.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .readme import ReportError

DATA = Path(__file__).resolve().parent / 'published'
REFERENCES = ('original',)


def load_reference(name: str) -> dict[str, Any]:
    """{'name', 'source', 'metrics', 'values': {(model, attention): {metric: value}}}."""
    path = DATA / f'{name}.csv'
    if name not in REFERENCES or not path.is_file():
        raise ReportError(f'unknown reference {name!r}; shipped: {", ".join(REFERENCES)}')
    lines = path.read_text(encoding='utf-8').splitlines()
    source = ' '.join(line.lstrip('# ').strip() for line in lines if line.startswith('#'))
    rows = list(
        csv.DictReader(io.StringIO('\n'.join(line for line in lines if not line.startswith('#'))))
    )
    metrics = [column for column in rows[0] if column not in ('model', 'attention')]
    values = {
        (row['model'], row['attention']): {m: float(row[m]) for m in metrics if row[m]}
        for row in rows
    }
    return {
        'name': name,
        'source': source,
        'metrics': metrics,
        'values': values,
        'models': sorted({model for model, _ in values}),
    }
