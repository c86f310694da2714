"""sweep.yaml: the table to train, validated before anything runs, and its expansion to trials.

    name: original-table
    models: [cifar_resnet20_v1, cifar_resnet56_v1]
    attentions: [none, se, eca, gct]
    seeds: [0]
    recipe: {epochs: 186}                  # any Recipe field (backend: torch too); the rest
                                           # keep the original's
    overrides:                             # recipe or attention options for some cells
      - match: {attention: se}
        attention_kwargs: {reduction: 8}
    data: {root: null, download: true}     # or {dataset: demo}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.5, max_failures: 1}
    outputs: {results: results, readme: README.md, figures: figures, report: report.html}
    report: {metrics: [val_loss, val_acc, train_loss], overhead: true, reference: original}
    tracking: {tensorboard: true, mlflow: true}   # live views; mlflow: true or a tracking URI

Relative output paths are relative to the YAML file's folder.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Callable,
    Dict,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Union,
)

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bench.errors import BenchError
from bench.store import REPORT_METRICS
from bench.trial.recipe import Recipe, Seed, TrialSpec, recipe_problems
from bench.validation import bounded_repr, describe_error, without_secrets
from models.names import parse_model_name
from models.registry import attention_key, attention_spec, parse_attention_name


class _SweepLoader(yaml.SafeLoader):
    """YAML as the sweep file is written: PyYAML follows YAML 1.1, where a number in
    exponent form without a dot (lr: 1e-2, the way a learning rate is written) is text;
    here, as in YAML 1.2 and in Python, it is a number."""


_SweepLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$'),
    list('-+0123456789'),
)


def load_yaml(text: str) -> Any:
    """The values of YAML text (a sweep file, an override's value)."""
    return yaml.load(text, Loader=_SweepLoader)


if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

# A sweep file is a few hundred bytes; these bounds only stop a file that is not one
# (or a YAML alias bomb, a few hundred bytes that expand to billions of values) before
# anything walks it.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000


class ConfigError(BenchError, ValueError):
    """sweep.yaml is wrong; the message names the file, the key, what was expected and found."""


class _Strict(BaseModel):
    # strict: no string is taken for a number and no truth value for a count, at every
    # level (the recipe's own model is strict too).
    model_config = ConfigDict(extra='forbid', strict=True)


class Match(_Strict):
    model: Optional[str] = None
    attention: Optional[str] = None
    seed: Optional[Seed] = None

    @field_validator('attention')
    @classmethod
    def _one_spelling(cls, name: str | None) -> str | None:
        # As the sweep's attentions are read: names ignore case and surrounding spaces.
        return None if name is None else attention_key(name)


class Override(_Strict):
    match: Match
    recipe: Dict[str, Any] = Field(default_factory=dict)
    attention_kwargs: Dict[str, Any] = Field(default_factory=dict)


def _a_path(text: str) -> str:
    if '\0' in text:
        raise ValueError('a path cannot hold a NUL character')
    return text


# A file or folder name as the sweep file gives it.
PathText = Annotated[str, AfterValidator(_a_path)]


class DataConfig(_Strict):
    dataset: Literal['cifar10', 'demo'] = 'cifar10'
    # default: MXNet's data folder (cifar10), data/demo-digits-cifar-stats (demo)
    root: Optional[PathText] = None
    download: bool = True


class Resources(_Strict):
    cpus_per_trial: float = Field(1, gt=0, le=4096, allow_inf_nan=False)
    gpus_per_trial: float = Field(0, ge=0, le=64, allow_inf_nan=False)
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    max_failures: int = Field(1, ge=0, le=100)

    @field_validator('gpus_per_trial')
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError('above 1, gpus_per_trial must be a whole number')
        return value


class Outputs(_Strict):
    results: PathText = 'results'
    readme: Optional[PathText] = 'README.md'
    figures: PathText = 'figures'
    report: Optional[PathText] = 'report.html'


class ReportOptions(_Strict):
    metrics: List[Literal[REPORT_METRICS]] = Field(
        default_factory=lambda: ['val_loss', 'val_acc'], min_length=1
    )
    overhead: bool = True
    # A published table shipped in reports/published/ to show beside ours (original: the
    # original repository's README).
    reference: Optional[Literal['original']] = None

    @field_validator('metrics')
    @classmethod
    def _each_metric_once(cls, metrics: List[str]) -> List[str]:
        twice = sorted({m for m in metrics if metrics.count(m) > 1})
        if twice:
            raise ValueError(f'{", ".join(twice)} listed twice; name each metric once')
        return metrics


# A tracking URI as MLflow takes one (http://host:5000, sqlite:///path, databricks): a
# scheme is required, so that a typo (`mlflow: ture`) is an error rather than a folder
# MLflow would create under that name.
MLFLOW_URI_PATTERN = r'^(databricks(-uc)?(://.*)?|[A-Za-z][A-Za-z0-9+.-]*:.+)$'


class Tracking(_Strict):
    """Live views of the sweep, off by default; the store stays the record."""

    # Event files under the store (results/<sweep>/tensorboard/<trial name>).
    tensorboard: bool = False
    # true: an embedded SQLite store under the results folder (results/mlflow); or the
    # tracking URI of an MLflow server or store.
    mlflow: Union[bool, str] = False

    @field_validator('mlflow', mode='before')
    @classmethod
    def _tracking_uri(cls, value: object) -> object:
        if isinstance(value, bool) or (
            isinstance(value, str)
            and len(value) <= 2000
            and '\0' not in value
            and re.match(MLFLOW_URI_PATTERN, value)
            and _parses_as_url(value)
        ):
            return value
        raise ValueError(
            'expected true (an embedded MLflow store under the results folder), false, or '
            'a tracking URI with its scheme, such as http://127.0.0.1:5000 or '
            'sqlite:///path/mlflow.db'
        )


def _parses_as_url(text: str) -> bool:
    from urllib.parse import urlsplit

    try:
        urlsplit(text).port  # noqa: B018 (a bad IPv6 host or port raises here)
    except ValueError:
        return False
    return True


SWEEP_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


class SweepConfig(_Strict):
    name: str = Field(max_length=100)
    models: List[str] = Field(min_length=1)
    attentions: List[str] = Field(min_length=1)
    seeds: List[Seed] = Field(default_factory=lambda: [0], min_length=1)
    recipe: Recipe = Field(default_factory=Recipe)
    overrides: List[Override] = Field(default_factory=list)
    data: DataConfig = Field(default_factory=DataConfig)
    resources: Resources = Field(default_factory=Resources)
    outputs: Outputs = Field(default_factory=Outputs)
    report: ReportOptions = Field(default_factory=ReportOptions)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator('name')
    @classmethod
    def _a_folder_name(cls, name: str) -> str:
        # It names the store's folder (and the MLflow experiment): no path, no markup.
        if not SWEEP_NAME.fullmatch(name):
            raise ValueError(
                'a sweep name is one folder name: ASCII letters and digits (A-Z, a-z, '
                "0-9), '_', '.' and '-', starting with a letter or digit"
            )
        return name

    @field_validator('models')
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        return _registered(names, parse_model_name, 'model')

    @field_validator('attentions')
    @classmethod
    def _known_attentions(cls, names: list[str]) -> list[str]:
        # The registry's one spelling of each name (case and surrounding spaces ignored):
        # trial ids and the duplicate check see that spelling.
        return _registered(
            [attention_key(name) for name in names], parse_attention_name, 'attention'
        )

    @field_validator('seeds')
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        return _unique(seeds, 'seed')

    @model_validator(mode='after')
    def _mixed_precision_needs_gpus(self) -> SweepConfig:
        precisions = [self.recipe.precision] + [o.recipe.get('precision') for o in self.overrides]
        mixed = sorted({p for p in precisions if p and p != 'float32'})
        if mixed and not self.resources.gpus_per_trial:
            raise ValueError(
                f'recipe precision {", ".join(mixed)} runs on GPUs only (mixed precision '
                'is refused on CPUs): set resources.gpus_per_trial, or use precision float32'
            )
        return self


def _registered(names: list[str], lookup: Callable[[str], object], what: str) -> list[str]:
    """`names` if `lookup` knows each (its KeyError lists the valid names) and none repeats."""
    for name in names:
        try:
            lookup(name)
        except KeyError as error:
            raise ValueError(str(error)) from None
    return _unique(names, what)


def _unique(values: list[Any], what: str) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f'{what} listed more than once: {", ".join(repeated)}')
    return values


@dataclasses.dataclass(frozen=True)
class LoadedSweep:
    config: SweepConfig
    path: Path
    # The command line's key=value overrides, as given; the name of the sweep file's own
    # sweep where they make a variant of it (None: no override changes what trains); and
    # those that change what trains (recorded with the sweep, said in its caption).
    overrides: tuple[str, ...] = ()
    variant_of: str | None = None
    changes: tuple[str, ...] = ()

    @property
    def described(self) -> str:
        """The sweep file and its overrides, as a caption says it."""
        overrides = f' with {", ".join(self.overrides)}' if self.overrides else ''
        return self.path.name + without_secrets(overrides)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str | None) -> Path | None:
        """`relative` (to the sweep file's folder) as an absolute path, its links left as
        links: an output that is a link is refused, not written through."""
        return (
            None
            if relative is None
            else Path(os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(relative))))
        )

    @property
    def store_dir(self) -> Path:
        return self.resolve(self.config.outputs.results) / self.config.name


def _valid_keys(parent: list[str]) -> list[str] | None:
    """The keys valid where an unknown key was found (`parent`: its location)."""
    model = SweepConfig
    for part in parent:
        if part.isdigit():  # an item of a list: its model is the list's
            continue
        field = getattr(model, 'model_fields', {}).get(part)
        annotation = field.annotation if field else None
        if annotation is not None and getattr(annotation, '__origin__', None) is list:
            annotation = annotation.__args__[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return list(model.model_fields)


def _describe_error(error: ErrorDetails, source: str, prefix: Sequence[str | int] = ()) -> str:
    return describe_error(error, source, prefix, valid_keys=_valid_keys)


def check_size(values: object, source: str) -> None:
    """Refuse a document of more than MAX_VALUES values once its aliases are expanded,
    counted without expanding them (each shared node is counted once per use)."""
    sizes = {}

    def size(value: object, depth: int = 0) -> int:
        if depth > 50:
            raise ConfigError(
                f'{source}: nested more than 50 levels deep; a sweep file '
                'is a few levels of keys and lists'
            )
        key = id(value)
        if key not in sizes:
            children = (
                list(value.keys()) + list(value.values())
                if isinstance(value, dict)
                else value
                if isinstance(value, list)
                else ()
            )
            sizes[key] = 1 + sum(size(child, depth + 1) for child in children)
            if sizes[key] > MAX_VALUES:
                raise ConfigError(
                    f'{source}: holds more than {MAX_VALUES:,} values once its YAML aliases '
                    'are expanded; a sweep file is a few dozen (is this a sweep file?)'
                )
        return sizes[key]

    size(values)


def parse_config(values: object, source: str = 'sweep.yaml') -> SweepConfig:
    """A validated SweepConfig from a dict; ConfigError lists every problem."""
    if not isinstance(values, dict):
        raise ConfigError(
            f'{source}: expected a mapping of keys (name, models, ...), '
            f'found {type(values).__name__}'
        )
    check_size(values, source)
    try:
        config = SweepConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError('\n'.join(_describe_error(e, source) for e in error.errors())) from None
    problems = []
    for index, override in enumerate(config.overrides):
        where = ('overrides', index)
        for key, listed in (
            ('model', config.models),
            ('attention', config.attentions),
            ('seed', config.seeds),
        ):
            value = getattr(override.match, key)
            if value is not None and value not in listed:
                problems.append(
                    f'{source}: overrides.{index}.match.{key}: {value!r} is not in '
                    f'{key}s ({", ".join(map(str, listed))})'
                )
        # The same rules as the sweep's own recipe, on the recipe this override makes.
        try:
            Recipe.model_validate({**config.recipe.model_dump(), **override.recipe})
        except ValidationError as error:
            problems += recipe_problems(error, source, (*where, 'recipe'))
        attentions = [override.match.attention] if override.match.attention else config.attentions
        for attention in attentions:
            for problem in attention_spec(attention).option_problems(override.attention_kwargs):
                problems.append(
                    f'{source}: overrides.{index}.attention_kwargs: {problem}'
                    + (
                        ''
                        if override.match.attention
                        else ' (narrow the override with match.attention)'
                    )
                )
    if not problems:
        problems += [f'{source}: {problem}' for problem in _cells_with_two_backends(config)]
        problems += [f'{source}: {problem}' for problem in _cells_without_their_backend(config)]
    if problems:
        raise ConfigError('\n'.join(dict.fromkeys(problems)))
    return config


def _cells_with_two_backends(config: SweepConfig) -> list[str]:
    """A table cell averages its seeds, so all of them must come from one framework."""
    backends = {}
    for spec in expand(config):
        backends.setdefault((spec.model, spec.attention), {})[spec.seed] = spec.recipe.backend
    return [
        f'overrides give the cell {model} {attention} two backends ('
        + ', '.join(f'seed {s}: {b}' for s, b in sorted(seeds.items()))
        + '); a cell averages its seeds, so set the backend for the whole cell '
        '(match on model and attention, not seed)'
        for (model, attention), seeds in backends.items()
        if len(set(seeds.values())) > 1
    ]


def _cells_without_their_backend(config: SweepConfig) -> list[str]:
    """A cell whose backend has no module for its attention cannot train: said before
    any trial starts, with the backends the attention has."""
    wanted = {}
    for spec in expand(config):
        wanted.setdefault((spec.attention, spec.recipe.backend), []).append(spec.model)
    problems = []
    for (attention, backend), models in wanted.items():
        spec = attention_spec(attention)
        problem = spec.backend_problem(backend)
        if problem:
            problems.append(
                f'{problem}, yet cells of {", ".join(dict.fromkeys(models))} ask for backend '
                f'{backend}; set recipe.backend (or an override matching attention '
                f'{attention}) to ' + ' or '.join(spec.backends)
            )
    return problems


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> LoadedSweep:
    """Read and validate a sweep YAML file, with the command line's key=value `overrides`
    applied first (see apply_overrides)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir() and not path.is_file():
            raise ConfigError(
                f'{path}: not a regular file (a device or a pipe); pass --config '
                'with a sweep YAML file'
            )
        with open(path, 'rb') as handle:
            blob = handle.read(MAX_FILE_BYTES + 1)
        if len(blob) > MAX_FILE_BYTES:
            raise ConfigError(
                f'{path}: more than {MAX_FILE_BYTES:,} bytes; a sweep file is a '
                'few hundred: is this a sweep file?'
            )
        text = blob.decode('utf-8')
    except FileNotFoundError:
        raise ConfigError(f'{path}: no such file; pass --config with a sweep YAML file') from None
    except IsADirectoryError:
        raise ConfigError(f'{path}: is a folder; pass --config with a sweep YAML file') from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f'{path}: cannot be read ({error})') from None
    try:
        values = load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f'{path}: not valid YAML: {str(error)[:500]}') from None
    except RecursionError:
        raise ConfigError(f'{path}: nested too deeply to be a sweep file') from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f'{path}: a value cannot be read ({str(error)[:200]})') from None
    if not overrides:
        return LoadedSweep(parse_config(values, str(path)), path.resolve())
    parsed = parse_overrides(overrides)
    values, variant_of, changes = apply_overrides(values, parsed, str(path))
    source = without_secrets(f'{path} with {", ".join(o.text for o in parsed)}')
    return LoadedSweep(
        parse_config(values, source),
        path.resolve(),
        overrides=tuple(o.text for o in parsed),
        variant_of=variant_of,
        changes=changes,
    )


# ---------------------------------------------------------------- command-line overrides

# `recipe.epochs=1`, `models=[cifar_resnet20_v1]`, `overrides.0.recipe.lr=0.01`: a dotted
# key into the sweep file's structure (list items by index), a value in YAML.
OVERRIDE_PATTERN = re.compile(
    r'(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*)=(?P<value>.*)', re.S
)
MAX_OVERRIDE_BYTES = 10_000
# Keys that say how and where to run a sweep, not what it trains: overriding them keeps
# the sweep itself (its name, store and outputs). Any other override makes a variant.
RUN_OPTIONS = ('resources', 'outputs', 'report', 'tracking', 'data.download')


@dataclasses.dataclass(frozen=True)
class KeyOverride:
    """One key=value of the command line."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def key(self) -> str:
        return '.'.join(self.path)

    @property
    def changes_the_sweep(self) -> bool:
        return not any(self.key == o or self.key.startswith(o + '.') for o in RUN_OPTIONS)


def parse_overrides(texts: Sequence[str]) -> list[KeyOverride]:
    """The command line's key=value overrides; ConfigError for one that is not of that
    form or whose value is not YAML."""
    parsed, problems = [], []
    for text in texts:
        match = OVERRIDE_PATTERN.fullmatch(text)
        if not match or len(text) > MAX_OVERRIDE_BYTES:
            problems.append(
                f'{without_secrets(text[:200])!r}: an override is key=value, the key dotted '
                "into the sweep file's structure and the value in YAML, e.g. recipe.epochs=1 or "
                "'models=[cifar_resnet20_v1]'"
            )
            continue
        try:
            value = load_yaml(match['value']) if match['value'].strip() else None
        except (yaml.YAMLError, RecursionError, ValueError) as error:
            why = ' '.join(str(error).split())[:200]
            problems.append(f'{without_secrets(text[:200])!r}: the value is not valid YAML ({why})')
            continue
        check_size(value, f'override {match["key"]}')
        parsed.append(KeyOverride(text, tuple(match['key'].split('.')), value))
    if problems:
        raise ConfigError('\n'.join(problems))
    return parsed


def apply_overrides(
    values: object, overrides: Sequence[KeyOverride], source: str
) -> tuple[dict[str, Any], str | None, tuple[str, ...]]:
    """The sweep file's values with `overrides` set; the file's sweep name where they make
    a variant of it (None otherwise); and the overrides that change what trains.

    A variant (an override of anything but RUN_OPTIONS that changes its value) is another
    sweep: unless `name` is set too, it is named after the file's sweep and a digest of
    those overrides, in any order (the same overrides name the same store, so a variant
    resumes), and unless they are set too its README block, figures and report go into
    its own store folder, never over the file's. A name of its own must differ from the
    file's sweep name: a variant never shares the file's store.
    """
    if not isinstance(values, dict):
        raise ConfigError(f'{source}: expected a mapping of keys (name, models, ...)')
    values = copy.deepcopy(values)
    file_name = values.get('name')
    changes = []
    for override in overrides:
        if override.changes_the_sweep and _value_at(values, override.path) != override.value:
            changes.append(override)
        _set(values, override)
    if not changes:
        return values, None, ()
    given = {o.key for o in overrides}
    if 'name' not in given:
        canonical = sorted(f'{o.key}={o.text.partition("=")[2].strip()}' for o in changes)
        digest = hashlib.sha1('\n'.join(canonical).encode()).hexdigest()[:6]
        values['name'] = f'{str(file_name)[:90]}-{digest}'
    elif values.get('name') == file_name and 'outputs.results' not in given:
        raise ConfigError(
            f"name={file_name} is the sweep file's own name, but the other overrides change "
            'what trains: such a variant needs a store of its own (another name=, or none '
            "for one made from the overrides), or the file's store would hold, report and "
            '(with --fresh) delete both'
        )
    outputs = values.get('outputs')
    if outputs is None:
        outputs = values['outputs'] = {}
    if isinstance(outputs, dict):  # else the validation names what is wrong with it
        folder = f'{outputs.get("results", "results")}/{values["name"]}'
        for key, where in (
            ('readme', 'README.md'),
            ('figures', 'figures'),
            ('report', 'report.html'),
        ):
            if f'outputs.{key}' not in given:
                outputs[key] = f'{folder}/{where}'
    return values, str(file_name), tuple(o.text for o in changes)


_MISSING = object()


def _value_at(values: object, path: Sequence[str]) -> Any:
    """The value at `path` in the sweep file's values, _MISSING where there is none."""
    node = values
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _set(values: dict[str, Any], override: KeyOverride) -> None:
    """Set one override's value in `values`, making the mappings on its way."""
    node: Any = values
    for depth, part in enumerate(override.path):
        where = '.'.join(override.path[: depth + 1])
        last = depth == len(override.path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f'{override.text!r}: {where} is not an item of the list above it '
                    f'({len(node)} item(s), counted from 0)'
                )
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:  # absent or null: a mapping to fill
                node[part] = {}
        else:
            raise ConfigError(
                f'{override.text!r}: {".".join(override.path[:depth])} holds a value '
                f'({bounded_repr(node, 60)}), not keys'
            )
        if last:
            node[index] = override.value
        else:
            node = node[index]


# ---------------------------------------------------------------- expansion


def trial_spec(config: SweepConfig, model: str, attention: str, seed: int) -> TrialSpec:
    recipe = config.recipe.model_dump()
    attention_kwargs = {}
    for override in config.overrides:
        match = override.match
        if all(
            getattr(match, k) in (None, v)
            for k, v in (('model', model), ('attention', attention), ('seed', seed))
        ):
            recipe.update(override.recipe)
            attention_kwargs.update(override.attention_kwargs)
    return TrialSpec(
        model=model,
        attention=attention,
        seed=seed,
        recipe=Recipe.from_dict(recipe),
        attention_kwargs=attention_kwargs,
    )


def expand(config: SweepConfig) -> list[TrialSpec]:
    """Every TrialSpec of the matrix, in table order (models x attentions x seeds)."""
    return [
        trial_spec(config, m, a, s)
        for m in config.models
        for a in config.attentions
        for s in config.seeds
    ]


def trial_id(spec: TrialSpec, data_identity: Mapping[str, Any]) -> str:
    """The trial id of `spec` on the data of `data_identity` (TrialSpec.trial_id)."""
    return spec.trial_id(data_identity)


def parse_only(text: str) -> dict[str, list[str]]:
    """'model=a,attention=b' -> {'model': ['a'], 'attention': ['b']} for --only."""
    selected = {}
    for part in filter(None, (p.strip() for p in str(text).split(','))):
        key, sep, value = (p.strip() for p in part.partition('='))
        if not sep or key not in ('model', 'attention', 'seed') or not value:
            raise ConfigError(
                f'--only takes key=value pairs with keys model, attention, seed; got {part!r}'
            )
        selected.setdefault(key, []).append(value.lower() if key == 'attention' else value)
    if not selected:
        raise ConfigError(
            f'--only {text!r} selects nothing; give key=value pairs, e.g. '
            '--only model=cifar_resnet20_v1,attention=eca'
        )
    return selected


def matches_only(spec: TrialSpec, selected: Mapping[str, Sequence[str]]) -> bool:
    return all(str(getattr(spec, key)) in values for key, values in selected.items())
