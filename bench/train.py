"""`python -m bench.train`: train one cell of the table by hand, with a progress bar.

The options are the original `train_cifar10.py`'s, and its README's command line
runs as written:
    python -m bench.train --mode hybrid --num-gpus 1 -j 8 --batch-size 128 \
        --num-epochs 186 --lr 0.003 --lr-decay 0.1 --lr-decay-epoch 81,122 --wd 0.0001 \
        --optimizer adam --random-crop --model cifar_resnet20_v1 --eca
(on a machine without a GPU, with --num-gpus 0). The attention is `--attention NAME`
or one of `--se`, `--eca`, `--gct`.
"""
import argparse
import json
import sys

from bench.trial.data import DEMO_FOLDER, DataError, load_cifar10, load_demo_digits
from bench.fileio import write_json_atomic
from bench.gpu import GPUError, apply_tf32, check_local_gpus
from bench.trial.recipe import BACKENDS, OPTIMIZERS, PRECISIONS, Recipe, TrialSpec
from bench.trial.loop import TrainingDiverged, missing_framework
from bench.trial.threads import use_cpus
from models.names import parse_attention_name, parse_model_name

# The original README wrote the attention as a flag of its own (`--eca`).
ATTENTION_FLAGS = ('se', 'eca', 'gct')

def parse_args(argv=None):
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog='python -m bench.train', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='cifar_resnet20_v1')
    attention = parser.add_mutually_exclusive_group()
    attention.add_argument('--attention', default='none', help='none, se, eca, gct, ...')
    for name in ATTENTION_FLAGS:
        attention.add_argument(f'--{name}', dest='attention', action='store_const', const=name,
                               help=f'same as --attention {name}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-epochs', type=int, default=defaults.epochs)
    parser.add_argument('--batch-size', type=int, default=defaults.batch_size)
    parser.add_argument('--optimizer', choices=OPTIMIZERS, default=defaults.optimizer)
    parser.add_argument('--lr', type=float, default=defaults.lr)
    parser.add_argument('--lr-decay', type=float, default=defaults.lr_decay)
    parser.add_argument('--lr-decay-epoch', default=','.join(map(str, defaults.lr_decay_epochs)),
                        help='comma-separated epochs at which lr is multiplied by --lr-decay')
    parser.add_argument('--momentum', type=float, default=defaults.momentum)
    parser.add_argument('--wd', type=float, default=defaults.wd)
    crop = parser.add_mutually_exclusive_group()
    crop.add_argument('--random-crop', dest='random_crop', action='store_true',
                      default=defaults.random_crop,
                      help='4-pixel padding and a random 32x32 window (the recipe default)')
    crop.add_argument('--no-random-crop', dest='random_crop', action='store_false')
    parser.add_argument('--no-random-flip', action='store_true')
    parser.add_argument('--backend', choices=BACKENDS, default=defaults.backend,
                        help='gluon: MXNet Gluon, the reference; torch: PyTorch, the same '
                             'networks and semantics (GPUs MXNet cannot use)')
    parser.add_argument('--mode', choices=('hybrid', 'imperative'), default='hybrid',
                        help='gluon: hybridize the network or not')
    parser.add_argument('--compile', action='store_true',
                        help='torch: torch.compile the network')
    parser.add_argument('--no-tf32', dest='tf32', action='store_false',
                        help='strict float32 on GPUs that have TF32 (Ampere and newer); '
                             "TF32 on is MXNet's default")
    parser.add_argument('--precision', choices=PRECISIONS, default=defaults.precision,
                        help='amp_float16 (both backends) or amp_bfloat16 (torch): mixed '
                             'precision, GPUs only')
    parser.add_argument('--num-gpus', type=int, default=None,
                        help='GPUs to split each batch over (default: all visible; 0: CPU). '
                             '--batch-size counts the images of all of them together; the '
                             "original's counted per GPU (the same with one GPU)")
    parser.add_argument('-j', '--num-data-workers', type=int, default=None, metavar='N',
                        help="accepted for the original's command line and ignored: "
                             'augmentation runs on the device, with no loader workers')
    data = parser.add_mutually_exclusive_group()
    data.add_argument('--data-root', default=None,
                      help='folder with CIFAR-10 (default: MXNet data folder)')
    data.add_argument('--demo-data', action='store_true',
                      help="scikit-learn's digits as CIFAR-format files (no download)")
    parser.add_argument('--no-download', action='store_true')
    parser.add_argument('--checkpoint-dir', default=None,
                        help='checkpoint every epoch here and resume from it')
    parser.add_argument('--output', default=None, help='write the metrics history as JSON here')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser, parser.parse_args(argv)


def spec_from_args(args):
    decay_epochs = tuple(int(e) for e in str(args.lr_decay_epoch).split(',') if e.strip())
    recipe = Recipe(epochs=args.num_epochs, batch_size=args.batch_size,
                    optimizer=args.optimizer, lr=args.lr, lr_decay=args.lr_decay,
                    lr_decay_epochs=decay_epochs, momentum=args.momentum, wd=args.wd,
                    random_crop=args.random_crop, random_flip=not args.no_random_flip,
                    hybridize=args.mode == 'hybrid', precision=args.precision,
                    backend=args.backend, compile=args.compile, tf32=args.tf32)
    return TrialSpec(model=args.model, attention=args.attention, seed=args.seed, recipe=recipe)


def load_data(args):
    if args.demo_data:
        return load_demo_digits(DEMO_FOLDER)
    return load_cifar10(args.data_root, download=not args.no_download)


def _backend_trainer(spec, num_gpus):
    """(train function, devices, their description) of the spec's backend; RuntimeError or
    ValueError says why the devices asked for cannot be used."""
    # The cards first, before the framework touches one (a Hopper card would otherwise
    # end in MXNet's raw "no kernel image is available").
    fusion = check_local_gpus(num_gpus, spec.recipe.backend)
    if fusion and fusion != 'on':
        print(f"MXNet's operator fusion {fusion}")
    if spec.recipe.backend == 'gluon':
        apply_tf32(spec.recipe)     # read when CUDA starts: before MXNet is imported
    if spec.recipe.backend == 'torch':
        from bench.trial.pytorch import trainer
        device = trainer.device_for(num_gpus)
        trainer.check_precision(spec.recipe, device)

        def train_torch(spec, data, checkpoint_dir, device, **callbacks):
            return trainer.train(spec, data, checkpoint_dir=checkpoint_dir, device=device,
                                 **callbacks)
        return train_torch, device, trainer.describe(device)
    from bench.trial.gluon.devices import describe, trial_contexts
    from bench.trial.gluon.trainer import check_precision, train
    try:
        contexts = trial_contexts(num_gpus)
    except RuntimeError as error:
        raise RuntimeError(f'{error}; ask for fewer, or --num-gpus 0 to train on the CPU') \
            from None
    check_precision(spec.recipe, contexts)

    def train_gluon(spec, data, checkpoint_dir, contexts, **callbacks):
        return train(spec, data, checkpoint_dir=checkpoint_dir, contexts=contexts, **callbacks)
    return train_gluon, contexts, describe(contexts)


def main(argv=None):
    use_cpus()   # before anything imports MXNet
    parser, args = parse_args(argv)
    try:
        spec = spec_from_args(args)
        parse_model_name(spec.model)
        parse_attention_name(spec.attention)
        data = load_data(args)
    except (ValueError, KeyError, DataError) as error:
        parser.exit(2, f'error: {error}\n')
    missing = missing_framework(spec.recipe.backend)
    if missing:
        parser.exit(2, f'error: {missing}\n')
    try:
        train, devices, where = _backend_trainer(spec, args.num_gpus)
    except (GPUError, RuntimeError, ValueError) as error:
        parser.exit(2, f'error: {error}\n')

    from tqdm import tqdm
    print(f'{spec.name} on {where} ({spec.recipe.backend}), data: {data.identity.label} '
          f'({data.identity.train_images} train / {data.identity.test_images} test images)')
    bar = None if args.quiet else tqdm(unit='batch', leave=False, dynamic_ncols=True)

    def on_batch(done, total):
        if bar is not None:
            bar.total = total
            bar.update(1)

    def on_epoch(metrics, _checkpoint):
        if bar is not None:
            bar.reset()
        print(f"[epoch {metrics['epoch']:>3}/{spec.recipe.epochs}] lr {metrics['lr']:.2e}  "
              f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}  "
              f"val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.4f}  "
              f"{metrics['images_per_second']:.0f} img/s  {metrics['epoch_seconds']:.1f}s",
              flush=True)

    try:
        history = train(spec, data, args.checkpoint_dir, devices, on_epoch=on_epoch,
                        on_batch=on_batch)
    except TrainingDiverged as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    except ValueError as error:    # e.g. a batch larger than the training set
        print(f'error: {error}', file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if args.output:
        write_json_atomic(args.output, {'spec': spec.to_dict(), 'data': data.identity.to_dict(),
                                        'history': history})
    if history:
        print(json.dumps({k: history[-1][k] for k in ('train_loss', 'val_loss', 'val_acc')}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
