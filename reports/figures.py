"""Training curves and the final-accuracy bar chart (matplotlib, PNG)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench.fileio import write_bytes_atomic  # noqa: E402
from bench.store import DONE  # noqa: E402
from models.names import model_sort_key  # noqa: E402
from models.registry import attention_label  # noqa: E402

from .outputs import (  # noqa: E402
    ACCURACY_FIGURE,
    COST_FIGURE,
    CURVES_PREFIX,
    FIGURE_STORE_KEY,
    GENERATOR,
    SPEED_FIGURE,
    figure_of_another_store,
    is_our_figure,
    store_reference,
)
from .table import default_order, device_label  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def _attention_order(frame: pd.DataFrame, attentions: Sequence[str] | None) -> list[str]:
    present = set(frame['attention'])
    return [a for a in (attentions or default_order(frame['attention'])) if a in present]


def _model_order(frame: pd.DataFrame, models: Sequence[str] | None) -> list[str]:
    present = set(frame['model'])
    return [m for m in (models or sorted(present, key=model_sort_key)) if m in present]


def curves_figure(
    histories: pd.DataFrame, model: str, attentions: Sequence[str] | None = None
) -> Figure:
    """Accuracy and loss against epoch for one model, validation (solid) beside training
    (dashed): a colour per attention, the mean over seeds with a band from the lowest to
    the highest seed."""
    frame = histories[histories['model'] == model]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for attention in _attention_order(frame, attentions):
        per_epoch = frame[frame['attention'] == attention].groupby('epoch')
        for axis, kind in zip(axes, ('acc', 'loss')):
            color = None
            for split, style in (('val', '-'), ('train', '--')):
                # Accuracy in percent, as the tables give it.
                scale = 100.0 if kind == 'acc' else 1.0
                stats = scale * per_epoch[f'{split}_{kind}'].agg(['mean', 'min', 'max'])
                (line,) = axis.plot(
                    stats.index,
                    stats['mean'],
                    linestyle=style,
                    color=color,
                    marker='o' if len(stats) < 15 and split == 'val' else None,
                    markersize=3,
                    # One legend entry per attention (its validation line).
                    label=attention_label(attention) if split == 'val' else '_train',
                )
                color = line.get_color()
                if (stats['max'] > stats['min']).any():
                    axis.fill_between(
                        stats.index,
                        stats['min'],
                        stats['max'],
                        color=color,
                        alpha=0.15 if split == 'val' else 0.07,
                        linewidth=0,
                    )
    for axis, label in zip(axes, ('accuracy (%)', 'loss (cross-entropy)')):
        axis.set_xlabel('epoch')
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(f'{label}: validation —, training --')
        axis.grid(alpha=0.3)
        axis.legend(title='attention', fontsize='small')
    axes[1].set_yscale('log')
    low = axes[0].get_ylim()[0]
    axes[0].set_title(f'accuracy axis from {low:.1f} %', fontsize='small')
    fig.suptitle(f'{model}: validation and training curves (mean over seeds, band: min-max)')
    return fig


def accuracy_bars_figure(
    trials: pd.DataFrame,
    models: Sequence[str] | None = None,
    attentions: Sequence[str] | None = None,
) -> Figure:
    """Final validation accuracy per model x attention: the mean over seeds, with the
    sample std as error bars where a cell has two or more seeds."""
    done = trials[trials['status'] == DONE]
    models = _model_order(done, models)
    attentions = _attention_order(done, attentions)
    fig, axis = plt.subplots(figsize=(max(6, 1.6 * len(models) + 2), 4.2), constrained_layout=True)
    width = 0.8 / max(1, len(attentions))
    seed_counts = set()
    for index, attention in enumerate(attentions):
        means, errors, positions = [], [], []
        for model_index, model in enumerate(models):
            values = 100 * done[(done['model'] == model) & (done['attention'] == attention)][
                'val_acc'
            ].astype(float)
            if len(values):
                means.append(values.mean())
                # One seed has no spread to show: no bar rather than one of height zero.
                errors.append(values.std(ddof=1) if len(values) > 1 else float('nan'))
                positions.append(model_index + (index - (len(attentions) - 1) / 2) * width)
                seed_counts.add(len(values))
        has_spread = any(e == e for e in errors)
        axis.bar(
            positions,
            means,
            width * 0.95,
            yerr=errors if has_spread else None,
            capsize=3,
            label=attention_label(attention),
        )
    axis.set_xticks(range(len(models)))
    axis.set_xticklabels(models, rotation=15, ha='right')
    axis.set_ylabel('final validation accuracy (%)')
    # Low enough for the lowest error bar, not only the lowest mean.
    lows = [patch.get_height() for patch in axis.patches]
    for container in axis.containers:
        if type(container).__name__ == 'ErrorbarContainer':
            lows += [
                segment[:, 1].min()
                for line in container.lines[2]
                for segment in line.get_segments()
            ]
    low = min(lows) if lows else 0.0
    axis.set_ylim(max(0.0, low - 5), 100.0)
    axis.grid(axis='y', alpha=0.3)
    # Below the axes, so it never hides a bar.
    axis.legend(
        title='attention',
        fontsize='small',
        ncol=max(1, min(6, len(attentions))),
        loc='upper center',
        bbox_to_anchor=(0.5, -0.22),
    )
    # The axis does not start at 0: say where it does, so no difference looks bigger
    # than it is.
    axis.set_title(
        f'Final validation accuracy (axis from {axis.get_ylim()[0]:.1f} %)\n'
        f'{_seed_note(seed_counts)}',
        fontsize='medium',
    )
    return fig


def accuracy_vs_cost_figure(
    trials: pd.DataFrame,
    models: Sequence[str] | None = None,
    attentions: Sequence[str] | None = None,
) -> Figure:
    """Per model (a row), final validation accuracy against the parameters and against
    the MACs each attention adds to vanilla (in % of vanilla's): a point per attention,
    the mean over seeds with the sample std as error bars where there are two or more."""
    done = trials[trials['status'] == DONE]
    models = _model_order(done, models)
    attentions = _attention_order(done, attentions)
    fig, axes = plt.subplots(
        len(models), 2, figsize=(10, 3.2 * len(models)), squeeze=False, constrained_layout=True
    )
    for row, model in zip(axes, models):
        cells = done[done['model'] == model]
        vanilla = cells[cells['attention'] == 'none']
        for axis, column, label in zip(row, ('params', 'macs'), ('parameters', 'MACs')):
            base = vanilla[column].dropna()
            for attention in attentions:
                cell = cells[cells['attention'] == attention]
                counts = cell[column].dropna()
                if not len(cell) or not len(counts) or not len(base):
                    continue
                added = 100 * (float(counts.iloc[0]) - float(base.iloc[0])) / float(base.iloc[0])
                values = 100 * cell['val_acc'].astype(float)
                axis.errorbar(
                    [added],
                    [values.mean()],
                    yerr=[values.std(ddof=1)] if len(values) > 1 else None,
                    fmt='o',
                    capsize=3,
                    label=attention_label(attention),
                )
            axis.set_xlabel(f'{label} added to vanilla (%)')
            axis.set_ylabel('final validation accuracy (%)')
            axis.grid(alpha=0.3)
            low = axis.get_ylim()[0]
            axis.set_title(f'{model} (accuracy axis from {low:.1f} %)', fontsize='small')
        if row[0].get_legend_handles_labels()[0]:
            row[0].legend(title='attention', fontsize='small')
    fig.suptitle('Accuracy against what each attention adds (mean over seeds, bars: std)')
    return fig


def speed_figure(
    trials: pd.DataFrame,
    histories: pd.DataFrame,
    models: Sequence[str] | None = None,
    attentions: Sequence[str] | None = None,
) -> Figure:
    """Per model (a panel), each attention's training speed: images/s, the median over
    its finished trials' epochs as the cost table gives it, with the range of the trials'
    own medians as a whisker and the ratio to vanilla's speed on the same kind of device.
    A bar per kind of device the cell trained on (a colour each): speeds of different
    devices share an axis but are never put in a ratio."""
    done = trials[trials['status'] == DONE]
    devices = {
        trial: device_label(kind) for trial, kind in zip(done['trial_id'], done['device_kind'])
    }
    epochs = histories[histories['trial_id'].isin(devices)].copy()
    epochs = (
        epochs[epochs['images_per_second'].notna()]
        if 'images_per_second' in epochs
        else epochs.iloc[:0]
    )
    epochs['device'] = epochs['trial_id'].map(devices)
    models = _model_order(epochs, models)
    attentions = _attention_order(epochs, attentions)
    kinds = sorted(set(epochs['device']))
    columns = min(2, max(1, len(models)))
    rows = max(1, -(-len(models) // columns))
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(
            max(7.0, 5.6 * columns),
            1.2 + 0.42 * max(1, len(attentions) * len(kinds)) * rows + 0.6,
        ),
        squeeze=False,
        constrained_layout=True,
    )
    height = 0.8 / max(1, len(kinds))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for axis, model in zip(axes.flat, models):
        cells = epochs[epochs['model'] == model]
        for kind_index, kind in enumerate(kinds):
            on_kind = cells[cells['device'] == kind]
            vanilla = on_kind[on_kind['attention'] == 'none']['images_per_second']
            base = float(vanilla.median()) if len(vanilla) else None
            for index, attention in enumerate(attentions):
                cell = on_kind[on_kind['attention'] == attention]
                if cell.empty:
                    continue
                speed = float(cell['images_per_second'].median())
                per_trial = cell.groupby('trial_id')['images_per_second'].median()
                position = index + (kind_index - (len(kinds) - 1) / 2) * height
                axis.barh(
                    [position],
                    [speed],
                    height * 0.9,
                    xerr=[[speed - per_trial.min()], [per_trial.max() - speed]]
                    if len(per_trial) > 1
                    else None,
                    capsize=3,
                    color=colors[kind_index % len(colors)],
                    label=_drawn_as_is(kind),
                    gid=f'{attention}|{kind}',
                )
                ratio = '' if base is None or attention == 'none' else f'  {speed / base:.2f}x'
                axis.annotate(
                    f'{speed:,.0f}{ratio}',
                    # Right of the whisker, so the two never overlap.
                    (max(speed, float(per_trial.max())), position),
                    xytext=(4, 0),
                    textcoords='offset points',
                    va='center',
                    fontsize='x-small',
                )
        axis.set_yticks(range(len(attentions)))
        axis.set_yticklabels([attention_label(a) for a in attentions])
        axis.invert_yaxis()
        # Bars from zero, with room on the right for the numbers.
        axis.set_xlim(0, axis.get_xlim()[1] * 1.25)
        axis.set_xlabel('training images/s (median over epochs and seeds)')
        axis.set_title(model, fontsize='small')
        axis.grid(axis='x', alpha=0.3)
    for axis in list(axes.flat)[len(models) :]:
        axis.set_visible(False)
    # One entry per device across the panels.
    unique = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    fig.legend(
        unique.values(), unique.keys(), title='device', fontsize='small', loc='outside lower center'
    )
    fig.suptitle(
        'Training speed per attention\n(whiskers: range over seeds; Nx: against vanilla '
        'on the same device)',
        fontsize='medium',
    )
    return fig


def _drawn_as_is(text: str) -> str:
    """Stored text (a device's name) for a figure: its dollar signs escaped, so that
    matplotlib never parses it as a formula (the axes' own labels still use formulas)."""
    return text.replace('$', r'\$')


def _seed_note(seed_counts: set[int]) -> str:
    if seed_counts == {1}:
        return 'n=1 seed per cell: no error bars'
    counts = '/'.join(str(n) for n in sorted(seed_counts))
    note = f'mean of n={counts} seeds; error bars: std over seeds'
    return note + (' (none where n=1)' if 1 in seed_counts else '')


def save_figure(fig: Figure, path: str | Path, store: str | None = None) -> Path:
    """Save as PNG, atomically, marked as ours (reports.outputs.is_our_figure) and as
    showing the store `store` refers to (reports.outputs.store_reference)."""
    buffer = io.BytesIO()
    metadata = {'Software': GENERATOR} | ({FIGURE_STORE_KEY: store} if store else {})
    fig.savefig(buffer, format='png', dpi=110, metadata=metadata)
    plt.close(fig)
    return write_bytes_atomic(Path(path), buffer.getvalue())


def write_figures(
    trials: pd.DataFrame,
    histories: pd.DataFrame,
    figures_dir: str | Path,
    models: Sequence[str] | None = None,
    attentions: Sequence[str] | None = None,
    store_dir: str | Path | None = None,
) -> list[tuple[str, Path]]:
    """Every figure under figures_dir, each naming `store_dir` as the store it shows;
    returns [(title, path)].

    Figures of ours that this call did not write (a model that left the sweep, bars
    before any trial finished) are removed, so none outlives the trials it showed;
    those naming another store are left to it."""
    figures_dir = Path(figures_dir)
    store = store_reference(store_dir, figures_dir / ACCURACY_FIGURE) if store_dir else None

    written = []
    for model in _model_order(histories, models):
        path = save_figure(
            curves_figure(histories, model, attentions),
            figures_dir / f'{CURVES_PREFIX}{model}.png',
            store,
        )
        written.append((f'{model}: validation and training accuracy and loss per epoch', path))
    if (trials['status'] == DONE).any():
        path = save_figure(
            accuracy_bars_figure(trials, models, attentions), figures_dir / ACCURACY_FIGURE, store
        )
        written.append(('Final validation accuracy per model and attention', path))
        path = save_figure(
            accuracy_vs_cost_figure(trials, models, attentions), figures_dir / COST_FIGURE, store
        )
        written.append(('Accuracy against the parameters and MACs each attention adds', path))
    if (
        'images_per_second' in histories
        and histories['images_per_second'].notna().any()
        and (trials['status'] == DONE).any()
    ):
        path = save_figure(
            speed_figure(trials, histories, models, attentions), figures_dir / SPEED_FIGURE, store
        )
        written.append(('Training speed per attention', path))
    kept = {path for _, path in written}
    stale = list(figures_dir.glob(f'{CURVES_PREFIX}*.png')) + [
        figures_dir / ACCURACY_FIGURE,
        figures_dir / COST_FIGURE,
        figures_dir / SPEED_FIGURE,
    ]
    for path in stale:
        if (
            path not in kept
            and path.is_file()
            and is_our_figure(path)
            and not figure_of_another_store(path, store_dir)
        ):
            path.unlink()
    return written
