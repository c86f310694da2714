"""`python -m reports RESULTS_DIR`: README table, Markdown table, figures and report.html
from a sweep's results store, without training and without Ray.

Shows the trials the sweep consisted of when it was last run or reported
(RESULTS_DIR/sweep.json); after editing the sweep file, use
`python run_sweep.py --report-only` instead, which records the sweep as it is now."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.errors import BenchError, report
from bench.store import REPORT_METRICS
from bench.validation import one_line

from . import render_all
from .outputs import FLAG_OUTPUT_NAMES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m reports', description=__doc__)
    parser.add_argument('results_dir', help='a sweep folder of the store, e.g. results/demo')
    parser.add_argument('--readme', default=None, help='README to write the table into')
    parser.add_argument(
        '--insert', action='store_true', help='append the block when the README has no markers'
    )
    parser.add_argument('--figures', default=None, help='default: RESULTS_DIR/figures')
    parser.add_argument('--report', default=None, help='default: RESULTS_DIR/report.html')
    parser.add_argument(
        '--metrics',
        nargs='+',
        default=None,
        choices=REPORT_METRICS,
        help="table columns (default: the sweep's report.metrics)",
    )
    parser.add_argument('--no-overhead', action='store_true', help='no params/MACs columns')
    args = parser.parse_args(argv)
    if args.insert and args.readme is None:
        parser.error('--insert appends the results block to the README of --readme; name one')
    store = Path(args.results_dir)
    try:
        written = render_all(
            store,
            readme=args.readme,
            figures_dir=args.figures,
            report_path=args.report or store / 'report.html',
            options={
                **({'metrics': args.metrics} if args.metrics else {}),
                **({'overhead': False} if args.no_overhead else {}),
            },
            insert=args.insert,
            names=FLAG_OUTPUT_NAMES,
        )
    except BenchError as error:
        return report(error)
    for path in written:
        print(f'wrote {one_line(path)}')
    if args.readme is None:
        # The README is the sweep file's to name; a store's files never choose a path.
        print(
            'no README block written: name the README with --readme, or run '
            'run_sweep.py --config SWEEP_FILE --report-only, which writes every output '
            'the sweep file names'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
