"""What one trial trains: the cell (model, attention, seed) and the recipe.

The recipe's defaults are the original table's: batch 128, 186 epochs, Adam at
0.003 divided by 10 at epochs 81 and 122, weight decay 1e-4, random crop with
4-pixel padding and horizontal flip, Xavier initialisation, hybridized.
"""
from dataclasses import asdict, dataclass, field, fields

OPTIMIZERS = ('adam', 'sgd', 'nag')
# The framework that trains a trial: MXNet Gluon (the reference, what the original
# trained with) or PyTorch (the same networks and semantics, on GPUs MXNet cannot use).
BACKENDS = ('gluon', 'torch')
# float32, or automatic mixed precision on GPUs: float16 where safe with float32 master
# weights and dynamic loss scaling (both backends), or bfloat16 (PyTorch only).
PRECISIONS = ('float32', 'amp_float16', 'amp_bfloat16')
BACKEND_PRECISIONS = {'gluon': ('float32', 'amp_float16'), 'torch': PRECISIONS}
# Options added after results were first stored: at their default they stay out of
# to_dict, so the trial ids and checkpoints of earlier sweeps remain valid.
LATER_OPTIONS = {'precision': 'float32', 'backend': 'gluon', 'compile': False, 'tf32': True}


@dataclass(frozen=True)
class Recipe:
    epochs: int = 186
    batch_size: int = 128             # images per step, over all devices of the trial
    optimizer: str = 'adam'           # adam | sgd | nag
    lr: float = 0.003
    lr_decay: float = 0.1             # factor applied at each of lr_decay_epochs
    lr_decay_epochs: tuple = (81, 122)
    momentum: float = 0.9             # sgd and nag only
    wd: float = 1e-4
    random_crop: bool = True          # 4-pixel zero padding, random 32x32 window
    random_flip: bool = True
    hybridize: bool = True            # gluon: static_alloc + static_shape
    precision: str = 'float32'        # float32 | amp_float16 | amp_bfloat16 (GPUs only)
    backend: str = 'gluon'            # gluon | torch
    compile: bool = False             # torch: torch.compile the network
    # TF32 for float32 convolutions and matrix products on GPUs that have it (Ampere and
    # newer): on is MXNet's default (cuDNN uses it unless NVIDIA_TF32_OVERRIDE=0), so
    # cells from such cards differ from older cards' in the last digits; off makes them
    # strictly float32. No effect on CPUs.
    tf32: bool = True

    def __post_init__(self):
        object.__setattr__(self, 'lr_decay_epochs', tuple(int(e) for e in self.lr_decay_epochs))
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                            f"got {self.optimizer!r}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {', '.join(BACKENDS)}, "
                            f"got {self.backend!r}")
        elif self.precision not in BACKEND_PRECISIONS[self.backend]:
            problems.append(f"precision must be one of "
                            f"{', '.join(BACKEND_PRECISIONS[self.backend])} with backend "
                            f"{self.backend}, got {self.precision!r}"
                            + ('; amp_bfloat16 needs backend torch'
                               if self.precision == 'amp_bfloat16' else ''))
        if self.compile and self.backend != 'torch':
            problems.append('compile is an option of backend torch (torch.compile); '
                            'the gluon backend compiles its graph through hybridize')
        for name in ('epochs', 'batch_size'):
            value = getattr(self, name)
            # bool is an int to Python: `epochs: true` would train one epoch.
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f'{name} must be a whole number, got {value!r}')
            elif value < 1:
                problems.append(f'{name} must be at least 1, got {value}')
        if not self.lr > 0:
            problems.append(f'lr must be positive, got {self.lr}')
        if self.wd < 0:
            problems.append(f'wd must be >= 0, got {self.wd}')
        if problems:
            raise ValueError('; '.join(problems))

    def lr_at(self, epoch):
        """Learning rate of (0-based) `epoch`: lr times lr_decay for every decay epoch passed."""
        return self.lr * self.lr_decay ** sum(1 for e in self.lr_decay_epochs if epoch >= e)

    def to_dict(self):
        out = asdict(self)
        out['lr_decay_epochs'] = list(self.lr_decay_epochs)
        for name, default in LATER_OPTIONS.items():
            if out[name] == default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the table with one seed: everything that changes its result but the data."""
    model: str = 'cifar_resnet20_v1'
    attention: str = 'none'
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    attention_kwargs: dict = field(default_factory=dict)

    @property
    def name(self):
        return f'{self.model}-{self.attention}-s{self.seed}'

    def to_dict(self):
        return {'model': self.model, 'attention': self.attention, 'seed': self.seed,
                'attention_kwargs': dict(sorted(self.attention_kwargs.items())),
                'recipe': self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, values):
        values = dict(values)
        values['recipe'] = Recipe.from_dict(values.get('recipe', {}))
        values['attention_kwargs'] = dict(values.get('attention_kwargs') or {})
        return cls(**values)


@dataclass(frozen=True)
class TrialRun:
    """What one scheduled trial is handed: which trial, what it trains, where the store
    keeps its checkpoint (on storage every node reaches), and its share of a node."""
    trial_id: str
    name: str
    spec: TrialSpec
    store_checkpoint: str
    cpus: float
    gpus: float

    # Tune's configs hold plain values (it takes dataclasses apart), so a TrialRun
    # crosses into Tune as a dict and is rebuilt on the other side.
    def to_config(self):
        return {'trial_id': self.trial_id, 'name': self.name, 'spec': self.spec.to_dict(),
                'store_checkpoint': self.store_checkpoint, 'cpus': self.cpus,
                'gpus': self.gpus}

    @classmethod
    def from_config(cls, values):
        return cls(**{**values, 'spec': TrialSpec.from_dict(values['spec'])})
