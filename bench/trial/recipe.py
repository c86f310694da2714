"""What one trial trains: the cell (model, attention, seed) and the recipe.

The recipe's defaults are the original table's: batch 128, 186 epochs, Adam at
0.003 divided by 10 at epochs 81 and 122, weight decay 1e-4, random crop with
4-pixel padding and horizontal flip, Xavier initialisation, hybridized.

`Recipe` is validated field by field by one set of rules (pydantic, strict: no
string is taken for a number, no truth value for a count), wherever a recipe comes
from: the sweep file's `recipe`, an override, a stored spec or a command line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError
from bench.validation import describe_error

OPTIMIZERS = ('adam', 'sgd', 'nag')
# The framework that trains a trial: MXNet Gluon (the reference, what the original
# trained with) or PyTorch (the same networks and semantics, on GPUs MXNet cannot use).
BACKENDS = ('gluon', 'torch')
# float32, or automatic mixed precision on GPUs: float16 where safe with float32 master
# weights and dynamic loss scaling (both backends), or bfloat16 (PyTorch only).
PRECISIONS = ('float32', 'amp_float16', 'amp_bfloat16')
BACKEND_PRECISIONS = {'gluon': ('float32', 'amp_float16'), 'torch': PRECISIONS}


def precision_problem(precision: str, backend: str, flags: bool = False) -> str | None:
    """Why `precision` cannot train with `backend` (None: it can), naming the options as
    the sweep file spells them or, with `flags`, as the tools' flags do."""
    if precision in BACKEND_PRECISIONS[backend]:
        return None
    others = [b for b, precisions in BACKEND_PRECISIONS.items() if precision in precisions]
    if flags:
        return (
            f'--precision {precision} runs with --backend {" or ".join(others)}, not '
            f'{backend} (whose precisions: {", ".join(BACKEND_PRECISIONS[backend])})'
        )
    return (
        f'precision must be one of {", ".join(BACKEND_PRECISIONS[backend])} with backend '
        f'{backend}, got {precision!r}'
        + (f'; {precision} needs backend {" or ".join(others)}' if others else '')
    )


# Options added after results were first stored: at their default they stay out of
# to_dict, so the trial ids and checkpoints of earlier sweeps remain valid.
LATER_OPTIONS = {'precision': 'float32', 'backend': 'gluon', 'compile': False, 'tf32': True}
# Bounds that keep a typo from training for centuries: the original table trains 186.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
# Seeds seed numpy, MXNet and PyTorch; MXNet's takes a C int.
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
_FINITE = {'allow_inf_nan': False}


class RecipeError(BenchError, ValueError):
    """A recipe that fails its rules; one line per problem, each naming the option."""


class Recipe(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra='forbid')

    epochs: int = Field(186, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH_SIZE)  # images per step, all devices
    optimizer: Literal[OPTIMIZERS] = 'adam'
    lr: float = Field(0.003, gt=0, **_FINITE)
    # The factor applied at each of lr_decay_epochs (1: no decay).
    lr_decay: float = Field(0.1, gt=0, le=1, **_FINITE)
    # Epochs (counted from 1) after which the decay applies. Beyond `epochs` is legal, so
    # that a short smoke test of a long recipe runs; such points are simply not reached.
    # A list in the sweep file, a tuple here (strict=False only for the container).
    lr_decay_epochs: Annotated[
        Tuple[Annotated[int, Field(ge=1, le=MAX_EPOCHS)], ...], Field(strict=False)
    ] = (81, 122)
    momentum: float = Field(0.9, ge=0, lt=1, **_FINITE)  # sgd and nag only
    wd: float = Field(1e-4, ge=0, **_FINITE)
    random_crop: bool = True  # 4-pixel zero padding, random 32x32 window
    random_flip: bool = True
    hybridize: bool = True  # gluon: static_alloc + static_shape
    precision: Literal[PRECISIONS] = 'float32'  # amp_*: GPUs only
    backend: Literal[BACKENDS] = 'gluon'
    compile: bool = False  # torch: torch.compile the network
    # TF32 for float32 convolutions and matrix products on GPUs that have it (Ampere and
    # newer): on is MXNet's default (cuDNN uses it unless NVIDIA_TF32_OVERRIDE=0), so
    # cells from such cards differ from older cards' in the last digits; off makes them
    # strictly float32. No effect on CPUs.
    tf32: bool = True

    @model_validator(mode='after')
    def _options_fit_the_backend(self) -> Recipe:
        problems = []
        precision = precision_problem(self.precision, self.backend)
        if precision:
            problems.append(precision)
        if self.compile and self.backend != 'torch':
            problems.append(
                'compile is an option of backend torch (torch.compile); '
                'the gluon backend compiles its graph through hybridize'
            )
        if not self.hybridize and self.backend != 'gluon':
            # A second id for the same training: the torch backend has no such switch.
            problems.append(
                'hybridize is an option of backend gluon (false: its network runs '
                'imperatively); the torch backend runs eagerly, or compiled with compile: '
                'leave hybridize out of a torch recipe'
            )
        if problems:
            raise ValueError('; '.join(problems))
        return self

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) `epoch`: lr times lr_decay for every decay epoch passed."""
        return self.lr * self.lr_decay ** sum(1 for e in self.lr_decay_epochs if epoch >= e)

    def decays_reached(self) -> list[int]:
        """The decay epochs this recipe's run reaches, in order (the rest never apply)."""
        return sorted(e for e in self.lr_decay_epochs if e < self.epochs)

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(warnings=False)  # a stored recipe may break the rules
        out['lr_decay_epochs'] = list(self.lr_decay_epochs)
        for name, default in LATER_OPTIONS.items():
            if out[name] == default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, values: object, where: str = 'recipe') -> Recipe:
        """A Recipe from plain values; RecipeError names each problem as
        `where.option: what (found ...)`."""
        if not isinstance(values, dict):
            raise RecipeError(
                f'{where}: expected a mapping of recipe options, found {type(values).__name__}'
            )
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise RecipeError('\n'.join(recipe_problems(error, '', (where,)))) from None


def recipe_problems(
    error: ValidationError, source: str, prefix: Sequence[str | int] = ()
) -> list[str]:
    """The lines of a Recipe ValidationError, each naming its option."""
    return [
        describe_error(e, source, prefix, valid_keys=lambda _: RECIPE_OPTIONS)
        for e in error.errors()
    ]


RECIPE_OPTIONS = tuple(Recipe.model_fields)


def describe_recipe(recipe: Recipe | Mapping[str, Any]) -> str:
    """The recipe in a few words, as a caption or a plan states it: only the decay points
    its run reaches ('x0.1 at epochs 81, 122'; 'no decay within 1 epoch')."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(dict(recipe))
    reached = recipe.decays_reached()
    if reached and recipe.lr_decay != 1:
        schedule = (
            f'x{recipe.lr_decay:g} at epoch{"s" if len(reached) > 1 else ""} '
            f'{", ".join(map(str, reached))}'
        )
    else:
        schedule = f'no decay within {recipe.epochs} epoch{"s" if recipe.epochs > 1 else ""}'
    return (
        f'{recipe.epochs} epoch{"s" if recipe.epochs > 1 else ""}, batch '
        f'{recipe.batch_size}, {recipe.optimizer} lr {recipe.lr:g} {schedule}, '
        f'wd {recipe.wd:g}'
    )


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the table with one seed: everything that changes its result but the data."""

    model: str = 'cifar_resnet20_v1'
    attention: str = 'none'
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    attention_kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f'{self.model}-{self.attention}-s{self.seed}'

    @property
    def network_revision(self) -> int:
        """The revision of the model's network definition this code builds."""
        from models.names import network_revision

        return network_revision(self.model)

    @property
    def attention_origin(self) -> str:
        """'built-in', or the installed package (name and version) the attention is from."""
        from models.registry import attention_spec

        return attention_spec(self.attention).origin

    def trial_id(
        self, data_identity: Mapping[str, Any], network_revision: int | None = None
    ) -> str:
        """A stable id: hash of everything that changes the result, independent of YAML
        order: this spec, the data (`data_identity`'s digest and whether it is the
        official set) and the revision of the network definition, so a trial trained by
        an older definition is never taken for a current one; revision 1 is left out,
        which keeps the ids computed before revisions existed (`network_revision`: the
        revision a stored trial records; default, the one this code builds). An attention
        brought by another package adds that package's name and version."""
        payload = {
            'spec': self.to_dict(),
            'data': {'digest': data_identity['digest'], 'official': data_identity['official']},
        }
        revision = self.network_revision if network_revision is None else network_revision
        if revision != 1:
            payload['network_revision'] = revision
        origin = self.attention_origin
        if origin != 'built-in':
            # An attention of another package: its version is part of what trained the
            # cell (this code's revisions cover only the built-in ones).
            payload['attention_origin'] = origin
        blob = json.dumps(payload, sort_keys=True, separators=(',', ':')).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            'model': self.model,
            'attention': self.attention,
            'seed': self.seed,
            'attention_kwargs': dict(sorted(self.attention_kwargs.items())),
            'recipe': self.recipe.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialSpec:
        """The spec of its plain values (as to_dict gives them); keys that are not a
        spec's own (a later version's) are left out."""
        return cls.from_parts(values, Recipe.from_dict(values.get('recipe', {})))

    @classmethod
    def from_parts(cls, values: Mapping[str, Any], recipe: Recipe) -> TrialSpec:
        cell = {key: values[key] for key in ('model', 'attention', 'seed') if key in values}
        return cls(
            **cell, recipe=recipe, attention_kwargs=dict(values.get('attention_kwargs') or {})
        )


@dataclass(frozen=True)
class TrialRun:
    """What one scheduled trial is handed: which trial, what it trains, its share of a
    node, and the store's scratch folder for its temporary files where its node can write
    there (cleaned by the next run, so a killed trial leaves nothing behind for good)."""

    trial_id: str
    name: str
    spec: TrialSpec
    cpus: float
    gpus: float
    scratch: str = None

    # Tune's configs hold plain values (it takes dataclasses apart), so a TrialRun
    # crosses into Tune as a dict and is rebuilt on the other side.
    def to_config(self) -> dict[str, Any]:
        return {
            'trial_id': self.trial_id,
            'name': self.name,
            'spec': self.spec.to_dict(),
            'cpus': self.cpus,
            'gpus': self.gpus,
            'scratch': self.scratch,
        }

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> TrialRun:
        return cls(**{**values, 'spec': TrialSpec.from_dict(values['spec'])})
