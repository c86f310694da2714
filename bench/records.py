"""The shape of every JSON file in a results store, checked whenever one is read.

The store's files are written by this project, but a crash, a disk, a hand edit or
another program can leave anything in them. Every reader goes through `check_record`,
so a file of the wrong shape (a history that is null, an epoch of 1e400, a trial list
that is a string) is one problem naming the file and what is wrong, never a KeyError
deep in a report. Keys a later version adds are allowed (`extra='allow'`); the keys
this version reads must have the types it reads them as.
"""
from typing import Annotated, Any, Dict, List, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bench.trial.recipe import MAX_EPOCHS, MAX_SEED
from bench.validation import bounded_repr
from models.names import parse_attention_name, parse_model_name

Number = Union[int, float]
Count = int


def _registered_model(name):
    parse_model_name(name)
    return name


def _registered_attention(name):
    if parse_attention_name(name) != name:
        raise ValueError(f'attention {name!r} is not spelled as registered '
                         f'({parse_attention_name(name)!r})')
    return name


def _registered(check):
    """A pydantic check that a name is registered, spelled as registered: names go into
    every table and caption, so a stored name is never taken as it stands."""
    def checked(name):
        try:
            return check(name)
        except KeyError as error:       # the registry's own message lists the valid names
            raise ValueError(str(error)) from None
    return AfterValidator(checked)


ModelName = Annotated[str, _registered(_registered_model)]
AttentionName = Annotated[str, _registered(_registered_attention)]


class _Record(BaseModel):
    model_config = ConfigDict(extra='allow', strict=True)


class RecipeRecord(_Record):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)


class SpecRecord(_Record):
    """A trial's cell and recipe, as spec.json, sweep.json and state.json hold it."""
    model: ModelName
    attention: AttentionName
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
    params: Count = Field(ge=0)
    macs: Count = Field(ge=0)


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
    train_loss: Optional[Number] = None
    train_acc: Optional[Number] = None
    val_loss: Optional[Number] = None
    val_acc: Optional[Number] = None
    total_seconds: Optional[Number] = None


class ErrorRecord(_Record):
    """trials/<id>/error.json."""
    error: str
    epochs_done: Optional[int] = Field(None, ge=0, le=MAX_EPOCHS)


class ManifestTrial(_Record):
    trial_id: str = Field(pattern=r'^[0-9a-f]{12}$')
    name: str
    spec: SpecRecord
    network_revision: int = Field(1, ge=1)


class Manifest(_Record):
    """sweep.json: the trials the sweep consists of now."""
    name: str = Field(pattern=r'^[A-Za-z0-9][A-Za-z0-9_.-]*$', max_length=100)
    models: List[ModelName]
    attentions: List[AttentionName]
    seeds: List[int] = Field(default_factory=list)
    report: Dict[str, Any] = Field(default_factory=dict)
    data: Dict[str, Any] = Field(default_factory=dict)
    trials: List[ManifestTrial]


class LockRecord(_Record):
    """sweep.lock: who holds the store."""
    host: str
    pid: int = Field(ge=1)
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


def shape_problem(value, record):
    """Why `value` (parsed JSON) is not a `record`, in one line; None when it is."""
    try:
        record.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = '.'.join(str(part) for part in first['loc']) or 'the file'
        more = f' (and {error.error_count() - 1} more)' if error.error_count() > 1 else ''
        return (f"{where}: {first['msg']} (found {bounded_repr(first.get('input'), 60)})"
                f'{more}')
    except RecursionError:
        return 'nested too deeply'
    return None


def check_record(value, name):
    """`value` if it has the shape of the store file called `name`, else ValueError naming
    what is wrong. Files this module does not know are taken as they are."""
    record = RECORDS.get(name)
    problem = record and shape_problem(value, record)
    if problem:
        raise ValueError(f'not the {name} this project writes: {problem}')
    return value
