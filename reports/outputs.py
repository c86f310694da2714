"""Where the reports go, checked before anything is written: never over a file that this
project did not write, never over the sweep file, never two outputs on one path.

The README is ours between its two markers (reports.readme); report.html and the
figures carry a mark of this project (a generator meta tag; a PNG text chunk), and a
file at their path without it is refused rather than overwritten.
"""
from pathlib import Path

from .readme import ReportError, check_readme

GENERATOR = 'channel-attention-bench'
REPORT_MARK = f'<meta name="generator" content="{GENERATOR}">'
# report.html as versions before the mark wrote it.
LEGACY_REPORT_MARK = ': channel attention on CIFAR ResNets</title>'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The figures' names (reports.figures): stale ones are deleted, present ones replaced.
FIGURE_PATTERNS = ('curves_*.png', 'final_accuracy.png')
# The README's own kinds of file: --insert appends a Markdown block to nothing else.
README_SUFFIXES = ('.md', '.markdown', '')


def _head(path, size=4096):
    with open(path, 'rb') as handle:
        return handle.read(size)


def is_our_report(path):
    try:
        head = _head(path).decode('utf-8', errors='replace')
    except OSError:
        return False
    return REPORT_MARK in head or LEGACY_REPORT_MARK in head


def is_our_figure(path):
    """A PNG this project wrote: marked with the generator (older versions: matplotlib's
    own Software chunk, the only writer of PNGs by these names here)."""
    try:
        head = _head(path)
    except OSError:
        return False
    return head.startswith(PNG_SIGNATURE) and (
        GENERATOR.encode() in head or b'Software\x00Matplotlib' in head)


def output_problems(readme=None, report=None, figures_dir=None, protected=(), insert=False):
    """What keeps the reports from being written where the outputs point, each with what to
    do; [] when nothing does. `protected`: files no output may be (the sweep file)."""
    named = {'outputs.readme': readme, 'outputs.report': report,
             'outputs.figures': figures_dir}
    named = {key: Path(path).resolve() for key, path in named.items() if path is not None}
    problems = []
    for key, path in named.items():
        if any(path == Path(p).resolve() for p in protected):
            problems.append(f'{key} is {path}, the sweep file itself; point it at a file '
                            'of its own')
    seen = {}
    for key, path in named.items():
        if path in seen:
            problems.append(f'{key} and {seen[path]} are both {path}; give each its own path')
        seen.setdefault(path, key)
    if problems:
        return problems
    report = named.get('outputs.report')
    if report is not None and report.exists() and (report.is_dir() or not is_our_report(report)):
        problems.append(f'outputs.report is {report}, which this project did not write (no '
                        'report of ours is there); choose another path for the report, or '
                        'move that file away')
    readme = named.get('outputs.readme')
    if readme is not None and readme.is_dir():
        problems.append(f'outputs.readme is {readme}, a folder; name a Markdown file')
    elif readme is not None and readme.is_file():
        try:
            check_readme(readme, insert=insert)
        except ReportError as error:
            problems.append(str(error))
        except (OSError, UnicodeDecodeError) as error:
            problems.append(f'outputs.readme {readme} cannot be read as text ({error}); name '
                            'a Markdown file')
        else:
            if insert and readme.suffix.lower() not in README_SUFFIXES and \
                    not _has_markers(readme):
                problems.append(f'--insert would append the results block to {readme}, which '
                                'is not a Markdown file; name a README (.md) in outputs.readme')
    figures = named.get('outputs.figures')
    if figures is not None and figures.exists():
        if not figures.is_dir():
            problems.append(f'outputs.figures is {figures}, a file; name a folder for the '
                            'figures')
        else:
            for pattern in FIGURE_PATTERNS:
                for path in sorted(figures.glob(pattern)):
                    if not is_our_figure(path):
                        problems.append(f'{path} is not a figure this project wrote, and the '
                                        'reports would replace it; move it away, or set '
                                        'outputs.figures to a folder of its own')
    return problems


def _has_markers(path):
    from .readme import BEGIN_PREFIX
    return BEGIN_PREFIX in path.read_text(encoding='utf-8', errors='replace')


def check_outputs(**outputs):
    """Raise ReportError listing output_problems(**outputs), if any."""
    problems = output_problems(**outputs)
    if problems:
        raise ReportError('\n'.join(problems))
