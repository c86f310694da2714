"""Hand-made results stores: trials with chosen numbers, and the sweep record that names
them, written through bench.store as run_sweep.py writes them."""

from bench.sweep.config import parse_config, trial_id
from bench.sweep.plan import sweep_manifest
from bench.trial.recipe import Recipe, TrialSpec
from models.names import network_revision

IDENTITY = {
    'name': 'cifar10',
    'official': True,
    'digest': 'd' * 40,
    'layout': 'bin',
    'source': 'x',
    'train_images': 50000,
    'test_images': 10000,
}
PARAMS = {'none': 272474, 'se': 274490, 'eca': 272501, 'gct': 273482}
MACS = {'none': 40_813_184, 'se': 40_987_232, 'eca': 40_986_224, 'gct': 40_985_216}


def add_trial(
    store,
    model,
    attention,
    seed,
    train_loss=None,
    val_acc=None,
    epochs=3,
    finished=True,
    error=None,
    backend='gluon',
):
    spec = TrialSpec(model, attention, seed, Recipe(epochs=epochs, backend=backend))
    tid = trial_id(spec, IDENTITY)
    store.write_spec(
        tid,
        spec.name,
        spec.to_dict(),
        IDENTITY,
        network_revision(model),
        model_stats={'params': PARAMS[attention], 'macs': MACS[attention]},
    )
    if train_loss is None:
        return tid
    for epoch in range(1, epochs + 1):
        last = epoch == epochs
        store.record_epoch(
            tid,
            {
                'epoch': epoch,
                'lr': 0.003,
                'train_loss': train_loss * (1 if last else 2 + epoch),
                'train_acc': 0.9,
                'val_loss': 0.3 + 0.1 * (epochs - epoch) + seed * 0.01,
                'val_acc': val_acc - (0 if last else 0.1 * (epochs - epoch)),
                'epoch_seconds': 10.0,
                'train_seconds': 9.0,
                'images_per_second': 5000.0,
            },
        )
    if error:
        store.write_error(tid, error, epochs)
    elif finished:
        rows = store.read_history(tid)
        store.write_final(tid, dict(rows[-1], epochs=epochs, total_seconds=30.0))
    return tid


def record_sweep(store, models, attentions, seeds=(0,), epochs=3, backend='gluon', **report):
    """The manifest run_sweep.py writes for a sweep of these cells (the fixtures' recipe)."""
    config = parse_config(
        {
            'name': store.root.name,
            'models': list(models),
            'attentions': list(attentions),
            'seeds': list(seeds),
            'recipe': {'epochs': epochs, 'backend': backend},
            'report': report,
        }
    )
    store.write_manifest(sweep_manifest(config, IDENTITY))
