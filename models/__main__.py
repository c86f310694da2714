"""`python -m models`: params and MACs of every model x attention, with the overhead
against vanilla.

MACs count the convolutions and dense layers, plus each attention's passes over its
C x H x W input (its pooling or other reductions, and the scaling), one MAC per
element each (docs/attentions.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence

from . import MODELS, attention_names, parse_attention_name, stats_table


def format_stats_table(rows: Iterable[Mapping[str, str | int | float]]) -> str:
    header = (
        f'{"model":<20} {"attention":<9} {"params":>10} {"+params":>9} '
        f'{"MACs":>13} {"+MACs":>9} {"+params %":>9} {"+MACs %":>8}'
    )
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(
            f'{row["model"]:<20} {row["attention"]:<9} {row["params"]:>10,} '
            f'{row["extra_params"]:>9,} {row["macs"]:>13,} {row["extra_macs"]:>9,} '
            f'{row["params_overhead_pct"]:>8.3f}% {row["macs_overhead_pct"]:>7.4f}%'
        )
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m models', description=__doc__)
    parser.add_argument('--models', nargs='+', default=list(MODELS), metavar='MODEL')
    parser.add_argument('--attentions', nargs='+', default=list(attention_names()), metavar='NAME')
    args = parser.parse_args(argv)
    try:
        attentions = [parse_attention_name(name) for name in args.attentions]
        rows = stats_table(args.models, attentions)
    except KeyError as error:
        parser.error(str(error))
    print(format_stats_table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
