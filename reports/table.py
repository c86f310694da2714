"""The results table as plain data (a context for the Jinja templates)."""
import math

from bench.store import DONE, LOWER_IS_BETTER, METRIC_LABELS
from models.names import ATTENTION_NAMES, attention_label, model_sort_key
# Size columns shown with `overhead`: store field -> column label.
OVERHEAD_COLUMNS = {'params': 'params', 'macs': 'MACs'}


def default_order(names, known=ATTENTION_NAMES):
    """Known names in their usual order (vanilla first), then the rest sorted."""
    names = list(dict.fromkeys(names))
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def summarise(values):
    """(mean, std, n) of the finished values; std is the sample std (0 for one seed)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def format_cell(summary, digits=4):
    if summary is None:
        return 'TBA'
    mean, std, n = summary
    if n == 1:
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {std:.{digits}f} (n={n})'


def format_count(value):
    value = float(value)
    for unit, size in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(value) >= size:
            return f'{value / size:.2f}{unit}'
    return f'{value:.0f}'


def table_context(trials, models=None, attentions=None, metrics=('val_loss', 'val_acc'),
                  overhead=False):
    """Header groups and rows of the README table from the trials DataFrame.

    Rows are models and column groups attentions, in the given order (default:
    the order they appear in the store). A cell is mean ± std over finished
    seeds, or TBA; the best value of each metric in a row is marked bold.
    """
    done = trials[trials['status'] == DONE]
    models = list(models) if models else sorted(set(trials['model']), key=model_sort_key)
    attentions = list(attentions) if attentions else default_order(trials['attention'])
    groups = [{'name': a, 'label': attention_label(a),
               'columns': [METRIC_LABELS[m] for m in metrics]
               + (list(OVERHEAD_COLUMNS.values()) if overhead else [])}
              for a in attentions]
    rows = []
    for model in models:
        summaries = {(a, m): summarise(done[(done['model'] == model) &
                                            (done['attention'] == a)][m].tolist())
                     for a in attentions for m in metrics}
        best = {}
        for metric in metrics:
            present = [(summaries[(a, metric)][0], a) for a in attentions
                       if summaries[(a, metric)] is not None]
            if len(present) > 1:
                pick = min if metric in LOWER_IS_BETTER else max
                best[metric] = pick(present)[1]
        cells = []
        for attention in attentions:
            for metric in metrics:
                summary = summaries[(attention, metric)]
                cells.append({'text': format_cell(summary),
                              'bold': best.get(metric) == attention and summary is not None,
                              'n': summary[2] if summary else 0})
            if overhead:
                cells += [{'text': _overhead_text(trials, model, attention, column),
                           'bold': False, 'n': 0} for column in OVERHEAD_COLUMNS]
        rows.append({'model': model, 'cells': cells})
    data_names = sorted({str(n) for n in trials['data_name'].dropna()})
    official = bool(len(trials)) and bool(trials['data_official'].all())
    seeds = sorted({int(s) for s in done['seed']}) if len(done) else []
    return {'groups': groups, 'rows': rows, 'metrics': list(metrics), 'overhead': overhead,
            'official': official, 'data_names': data_names, 'seeds': seeds,
            'finished': int(len(done)), 'total': int(len(trials))}


def _overhead_text(trials, model, attention, column):
    """Vanilla: its count of `column` (params or macs); an attention: what it adds, and %."""
    def count_of(name):
        found = trials[(trials['model'] == model) & (trials['attention'] == name)][column]
        found = found.dropna()
        return float(found.iloc[0]) if len(found) else None
    own, vanilla = count_of(attention), count_of('none')
    if own is None:
        return '-'
    if attention == 'none' or vanilla is None:
        return format_count(own)
    extra = own - vanilla
    return f'+{format_count(extra)} ({100 * extra / vanilla:.2f}%)'
