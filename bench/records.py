"""What the store knows of a trial, as one record, and the shape of every file it holds.

`TrialRecord` is the one form of a stored (or planned) trial: the planner, the driver,
results.csv and the reports all read trials as these. It is built from spec.json (or
the sweep's manifest entry) of any version this project ever wrote by one function,
`upgrade_trial_file`, which is the only place that knows what earlier versions left out.

The shape of every JSON file in a results store is checked whenever one is read.

The store's files are written by this project, but a crash, a disk, a hand edit or
another program can leave anything in them. Every reader goes through `check_record`,
so a file of the wrong shape (a history that is null, an epoch of 1e400, a trial list
that is a string) is one problem naming the file and what is wrong, never a KeyError
deep in a report. Keys a later version adds are allowed (`extra='allow'`); the keys
this version reads must have the types it reads them as.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Dict, List, Mapping, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError
from bench.trial.recipe import MAX_EPOCHS, MAX_SEED, Recipe, RecipeError, TrialSpec
from bench.validation import bounded_repr
from models.names import UnknownNameError, parse_model_name
from models.registry import (
    ENTRY_POINT_GROUP,
    NAME_PATTERN,
    parse_attention_name,
    plugin_problems,
)

Number = Union[int, float]
Count = int

# A trial's metrics are finite and far from float overflow: a crafted 1e308 would make the
# reports' sums and squares infinite. No loss, accuracy or time comes near this. (A final
# value beyond is damage; an epoch's row is read as it is, and the reports and the
# estimate pass over such values.)
METRIC_LIMIT = 1e100


def metric_problem(name: str, value: float) -> str | None:
    """Why `value` cannot be the metric `name` of an epoch or a finished trial (None when it
    can): not finite, beyond METRIC_LIMIT, or an accuracy outside [0, 1]."""
    if not math.isfinite(value) or abs(value) > METRIC_LIMIT:
        return f'{name} {value!r} is not a number a trial records'
    if name.endswith('_acc') and not 0 <= value <= 1:
        return f'{name} {value!r} is not an accuracy (a fraction from 0 to 1)'
    return None


def _metric(name: str) -> AfterValidator:
    def checked(value: float) -> float:
        problem = metric_problem(name, value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(checked)


def _metric_field(name: str) -> Any:
    return Annotated[Number, _metric(name)]


DONE, FAILED, PARTIAL, PENDING = 'done', 'failed', 'partial', 'pending'
# Files that contradict each other or cannot be read: not trained, not reported as
# results, until the user acts on the problem the state names.
DAMAGED = 'damaged'
STATUSES = (DONE, PARTIAL, PENDING, FAILED, DAMAGED)

# One flat row of a trial, as results.csv and the reports' tables hold it.
TRIAL_COLUMNS = (
    'trial_id',
    'name',
    'model',
    'attention',
    'seed',
    'backend',
    'status',
    'epochs_done',
    'epochs',
    'recipe',
    'attention_kwargs',
    'network_revision',
    'data_name',
    'data_official',
    'data_digest',
    'error',
    'train_loss',
    'train_acc',
    'val_loss',
    'val_acc',
    'total_seconds',
    'params',
    'macs',
    'problems',
)
FINAL_METRICS = ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'total_seconds')

# The layouts of spec.json (and of the manifest's trial entries) this project has
# written, by the commit that introduced each; `upgrade_trial_file` reads them all.
TRIAL_FILE_VERSIONS = {
    1: '92d0b5d: trial_id, name, spec (recipe without options added later), data',
    2: "f018924: and model_stats (the network's parameters and MACs)",
    3: '6ad0f4c: and network_revision (the network definition the trial trained)',
}


def _registered_model(name: str) -> str:
    parse_model_name(name)
    return name


def _registered_attention(name: str) -> str:
    if parse_attention_name(name) != name:
        raise ValueError(
            f'attention {name!r} is not spelled as registered ({parse_attention_name(name)!r})'
        )
    return name


def _stored_attention(name: str) -> str:
    """A stored trial's attention: registered, or a name an installed package could
    register (lower case, no markup) that none does here: the package that brought it is
    gone, and its trials stay listed, with that problem, until it is back."""
    try:
        return _registered_attention(name)
    except UnknownNameError:
        if NAME_PATTERN.fullmatch(name):
            return name
        raise


def unregistered_attention_problem(attention: str) -> str | None:
    """Why a stored trial's attention cannot be used here; None when it is registered."""
    try:
        parse_attention_name(attention)
    except UnknownNameError:
        left_out = [p for p in plugin_problems() if f'entry point {attention} ' in p]
        why = (
            f'{left_out[0]}; `python -m bench.doctor` says more'
            if left_out
            else f'no installed package registers it in entry point group {ENTRY_POINT_GROUP}'
        )
        return (
            f'attention {attention!r} cannot be used here ({why}): the trial is kept, and '
            'counts again where the package that trained it (its name and version are in '
            'the trial id) is installed and registers it'
        )
    return None


def _registered(check: Callable[[str], str]) -> AfterValidator:
    """A pydantic check that a name is registered, spelled as registered: names go into
    every table and caption, so a stored name is never taken as it stands."""

    def checked(name: str) -> str:
        try:
            return check(name)
        except KeyError as error:  # the registry's own message lists the valid names
            raise ValueError(str(error)) from None

    return AfterValidator(checked)


ModelName = Annotated[str, _registered(_registered_model)]
AttentionName = Annotated[str, _registered(_registered_attention)]
StoredAttentionName = Annotated[str, _registered(_stored_attention)]


class _Record(BaseModel):
    model_config = ConfigDict(extra='allow', strict=True)


class RecipeRecord(_Record):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    lr_decay_epochs: Optional[List[int]] = None


class SpecRecord(_Record):
    """A trial's cell and recipe, as spec.json, sweep.json and state.json hold it."""

    model: ModelName
    attention: StoredAttentionName
    seed: int = Field(ge=0, le=MAX_SEED)
    recipe: RecipeRecord
    attention_kwargs: Dict[str, Any] = Field(default_factory=dict)


class HistoryRow(_Record):
    epoch: int = Field(ge=1, le=MAX_EPOCHS)
    lr: Number
    train_loss: Number
    train_acc: Number
    val_loss: Number
    val_acc: Number
    epoch_seconds: Number
    train_seconds: Number
    images_per_second: Number


class CheckpointState(_Record):
    """checkpoint/state.json: the loop's state after `epoch` epochs."""

    epoch: int = Field(ge=0, le=MAX_EPOCHS)
    history: List[HistoryRow]
    spec: Optional[SpecRecord] = None
    rng: Optional[Dict[str, Any]] = None


class ModelStats(_Record):
    # Every network has weights and multiplies: a count of 0 is a damaged record (and a
    # divisor in the overhead columns and figures).
    params: Count = Field(gt=0)
    macs: Count = Field(gt=0)


class TrialSpecFile(_Record):
    """trials/<id>/spec.json."""

    trial_id: str
    name: str
    spec: SpecRecord
    network_revision: int = Field(1, ge=1)
    data: Optional[Dict[str, Any]] = None
    model_stats: Optional[ModelStats] = None


class FinalRecord(_Record):
    """trials/<id>/final.json: the last epoch's metrics and where the trial ran."""

    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    train_loss: Optional[_metric_field('train_loss')] = None
    train_acc: Optional[_metric_field('train_acc')] = None
    val_loss: Optional[_metric_field('val_loss')] = None
    val_acc: Optional[_metric_field('val_acc')] = None
    total_seconds: Optional[_metric_field('total_seconds')] = None


class ErrorRecord(_Record):
    """trials/<id>/error.json."""

    error: str
    epochs_done: Optional[int] = Field(None, ge=0, le=MAX_EPOCHS)


class ManifestTrial(_Record):
    trial_id: str = Field(pattern=r'^[0-9a-f]{12}$')
    name: str
    spec: SpecRecord
    network_revision: int = Field(1, ge=1)


def _report_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """A sweep record's report options, each it knows typed as the sweep file types it
    (a later version's own options are left to it)."""
    from bench.sweep.config import ReportOptions  # the sweep file's rules, loaded late

    known = {key: value for key, value in options.items() if key in ReportOptions.model_fields}
    try:
        ReportOptions.model_validate(known)
    except ValidationError as error:
        first = error.errors()[0]
        where = '.'.join(str(part) for part in first['loc'])
        message = first['msg'].removeprefix('Value error, ')
        raise ValueError(f'{where}: {message}') from None
    return options


class DataRecord(_Record):
    """The data identity a sweep record (and a trial's spec.json) holds."""

    name: str
    digest: str
    official: bool


def _entry_id_problem(trial: ManifestTrial, data: DataRecord) -> str | None:
    """Why a sweep record's trial entry cannot be the trial its id names: its spec, data
    and network revision make another id, or another name. None where they agree, and
    where this installation cannot tell (an attention from another package)."""
    spec = upgrade_trial_file(trial.model_dump())['spec']
    try:
        if spec.attention_origin != 'built-in':
            # Its id holds its package's version, which may have changed since.
            return None
        made = spec.trial_id(data.model_dump(), network_revision=trial.network_revision)
    except LookupError:  # an attention no installed package registers
        return None
    except (TypeError, ValueError):  # a recipe no run writes
        return f'the spec of trial {trial.trial_id} makes no trial id'
    if made != trial.trial_id:
        return (
            f'trial id {trial.trial_id} is not the id of the spec it lists ({made}); '
            'the record was changed since a run wrote it'
        )
    if trial.name != spec.name:
        return f'trial {trial.trial_id} is named {bounded_repr(trial.name, 60)}, not {spec.name}'
    return None


def _unique(what: str, values: List[Any]) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f'{what} {bounded_repr(value, 60)} is listed twice')
        seen.add(value)


class Manifest(_Record):
    """sweep.json: the trials the sweep consists of now."""

    name: str = Field(pattern=r'^[A-Za-z0-9][A-Za-z0-9_.-]*$', max_length=100)
    models: List[ModelName]
    attentions: List[AttentionName]
    seeds: List[int] = Field(default_factory=list)
    report: Annotated[Dict[str, Any], AfterValidator(_report_options)] = Field(default_factory=dict)
    data: DataRecord
    trials: List[ManifestTrial]
    # The sweep file and its command-line overrides, where a run was given some.
    sweep_file: Optional[str] = Field(None, max_length=1000)
    overrides: List[str] = Field(default_factory=list)

    @model_validator(mode='after')
    def _each_once(self) -> Manifest:
        # A copy would count twice in its cell (and in the seeds a mark needs).
        for what, values in (
            ('model', self.models),
            ('attention', self.attentions),
            ('seed', self.seeds),
            ('trial id', [trial.trial_id for trial in self.trials]),
            ('trial', [trial.name for trial in self.trials]),
        ):
            _unique(what, values)
        return self

    @model_validator(mode='after')
    def _ids_of_their_specs(self) -> Manifest:
        # The reports take a stored trial for the cell its id's entry names: an entry
        # whose spec is not what its id was made of would move a result between cells.
        for index, trial in enumerate(self.trials):
            problem = _entry_id_problem(trial, self.data)
            if problem:
                raise ValueError(f'trials.{index}: {problem}')
        return self


class LockRecord(_Record):
    """sweep.lock: who holds the store."""

    host: str
    pid: int = Field(ge=1, le=2**31 - 1)  # a process id the system can have
    since: str


class EnvironmentRecord(_Record):
    """environment.json: anything the last run recorded of its machine."""


# Each file of the store by its name, and what to do when it is damaged.
RECORDS = {
    'state.json': CheckpointState,
    'spec.json': TrialSpecFile,
    'final.json': FinalRecord,
    'error.json': ErrorRecord,
    'error-previous.json': ErrorRecord,
    'sweep.json': Manifest,
    'sweep.lock': LockRecord,
    'environment.json': EnvironmentRecord,
}


def trial_file_version(value: Mapping[str, Any]) -> int:
    """Which layout of TRIAL_FILE_VERSIONS a spec.json (or manifest entry) has."""
    if 'network_revision' in value:
        return 3
    return 2 if 'model_stats' in value else 1


def upgrade_trial_file(value: Mapping[str, Any]) -> dict[str, Any]:
    """A spec.json or manifest entry of any version, in the current layout with every
    value an earlier version left out at the value it meant: network revision 1 (the
    only one before revisions were recorded), no model statistics, no data identity
    (a manifest entry has the sweep's), and the recipe with every option, those at
    their defaults included (stored recipes leave out options added later while they
    are at their defaults, so that earlier trial ids stay valid)."""
    upgraded = dict(value)
    # Absent before version 2 (and in manifest entries, which hold no statistics).
    upgraded.setdefault('model_stats', None)
    # Absent before version 3, when revision 1 was the only one.
    upgraded.setdefault('network_revision', 1)
    # Absent in manifest entries: the sweep's data identity is theirs.
    upgraded.setdefault('data', None)
    upgraded['spec'], upgraded['problems'] = _stored_spec(value['spec'])
    return upgraded


def _stored_spec(values: Mapping[str, Any]) -> tuple[TrialSpec, list[str]]:
    """The spec of a stored trial, and why its recipe breaks this version's rules (a
    hand edit, another version): such a recipe is taken as stored, said as such, so
    that the trial is still listed, never silently dropped."""
    try:
        return TrialSpec.from_dict(values), []
    except RecipeError as error:
        stored = dict(values.get('recipe') or {})
        if isinstance(stored.get('lr_decay_epochs'), list):
            stored['lr_decay_epochs'] = tuple(stored['lr_decay_epochs'])
        recipe = Recipe.model_construct(**stored)
        problem = (
            f"its recipe breaks this version's rules ({'; '.join(str(error).splitlines())}); "
            'it is shown as stored'
        )
        return TrialSpec.from_parts(values, recipe), [problem]


@dataclass(frozen=True)
class TrialRecord:
    """Everything known of one trial: what it trains (its spec, network revision and
    data), where it stands in the store (status, epochs done, final metrics, error) and
    the problems found in its files, each with what to do."""

    trial_id: str
    name: str
    spec: TrialSpec
    status: str = PENDING
    epochs_done: int = 0
    error: Optional[str] = None
    problems: tuple = ()
    network_revision: int = 1
    data: Mapping[str, Any] = field(default_factory=dict)
    model_stats: Optional[Mapping[str, int]] = None
    final: Optional[Mapping[str, Any]] = None

    @classmethod
    def from_trial_file(
        cls,
        value: Mapping[str, Any],
        data: Mapping[str, Any] | None = None,
        source: str = 'the trial file',
        **state: Any,
    ) -> TrialRecord:
        """The record of a spec.json or manifest entry of any version (upgraded), with the
        store's `state`. `data` is the data identity of a manifest entry (the sweep's),
        which holds none of its own; `source` names the file in problems."""
        upgraded = upgrade_trial_file(value)
        missing = unregistered_attention_problem(upgraded['spec'].attention)
        problems = (
            tuple(state.pop('problems', ()))
            + tuple(f'{source}: {problem}' for problem in upgraded['problems'])
            + ((missing,) if missing else ())
        )
        return cls(
            trial_id=upgraded['trial_id'],
            name=upgraded['name'],
            spec=upgraded['spec'],
            network_revision=upgraded['network_revision'],
            data=(upgraded['data'] if upgraded['data'] is not None else data) or {},
            model_stats=upgraded['model_stats'],
            problems=problems,
            **state,
        )

    @property
    def will_train(self) -> bool:
        return self.status in (PENDING, PARTIAL)

    def row(self) -> dict[str, Any]:
        """The flat row of the trial (TRIAL_COLUMNS), as results.csv holds it."""
        spec, final, stats = self.spec, self.final or {}, self.model_stats or {}
        recipe = spec.recipe
        return {
            'trial_id': self.trial_id,
            'name': self.name,
            'model': spec.model,
            'attention': spec.attention,
            'seed': spec.seed,
            'backend': recipe.backend,
            'status': self.status,
            'epochs_done': self.epochs_done,
            'epochs': recipe.epochs,
            'recipe': json.dumps(recipe.to_dict(), sort_keys=True),
            'attention_kwargs': json.dumps(spec.attention_kwargs, sort_keys=True),
            'network_revision': self.network_revision,
            'data_name': self.data.get('name'),
            'data_official': bool(self.data.get('official')),
            'data_digest': self.data.get('digest'),
            'error': self.error,
            **{k: final.get(k) for k in FINAL_METRICS},
            **{k: stats.get(k) for k in ('params', 'macs')},
            'problems': list(self.problems),
        }


def identity_differences(stored: TrialRecord, listed: TrialRecord) -> list[str]:
    """What of `stored` (a trial's spec.json) differs from `listed` (the sweep's record of
    the same trial id) among what the id is made of: [] for the same trial."""
    stored_spec, listed_spec = stored.spec.to_dict(), listed.spec.to_dict()
    differs = ['its name'] if stored.name != listed.name else []
    differs += [
        f'its {part}'
        for part in ('model', 'attention', 'seed', 'recipe', 'attention_kwargs')
        if stored_spec[part] != listed_spec[part]
    ]
    if stored.network_revision != listed.network_revision:
        differs.append('its network revision')
    # A spec.json without a data identity (hand-made) cannot say: it keeps none.
    data_keys = ('digest', 'official')
    if stored.data and any(stored.data.get(k) != listed.data.get(k) for k in data_keys):
        differs.append('its data')
    return differs


def shape_problem(value: Any, record: type[BaseModel]) -> str | None:
    """Why `value` (parsed JSON) is not a `record`, in one line; None when it is."""
    try:
        record.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        more = f' (and {error.error_count() - 1} more)' if error.error_count() > 1 else ''
        # A check of ours says what is wrong in its own words.
        message = first['msg'].removeprefix('Value error, ')
        if not first['loc'] and isinstance(value, dict):
            # A check of the whole file (its message names the place); quoting the whole
            # file would say nothing more.
            return f'{message}{more}'
        where = '.'.join(str(part) for part in first['loc']) or 'the file'
        return f'{where}: {message} (found {bounded_repr(first.get("input"), 60)}){more}'
    except RecursionError:
        return 'nested too deeply'
    return None


class DamagedFile(BenchError, ValueError):
    """A file of the store or a checkpoint that is not what this project writes; the
    message names what is wrong."""


def check_record(value: Any, name: str) -> Any:
    """`value` if it has the shape of the store file called `name`, else DamagedFile naming
    what is wrong. Files this module does not know are taken as they are."""
    record = RECORDS.get(name)
    problem = record and shape_problem(value, record)
    if problem:
        raise DamagedFile(f'not the {name} this project writes: {problem}')
    return value
