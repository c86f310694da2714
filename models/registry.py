"""Every channel attention's facts in one place: one AttentionSpec each. Plain Python, no
framework: checking a sweep file, counting parameters and MACs, labelling tables and
the doctor read the specs without importing MXNet or PyTorch; the builders import an
attention's module classes from the spec's import paths only when they build one.

An attention from another package registers its spec under the entry point group
ENTRY_POINT_GROUP (docs/attentions.md):

    [options.entry_points]
    channel_attention.attentions =
        coord = my_package.coord:SPEC

Names ignore case everywhere, by `attention_key`.
"""

from __future__ import annotations

import functools
import importlib
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import UnknownNameError

ENTRY_POINT_GROUP = 'channel_attention.attentions'
VANILLA = 'none'
BACKENDS = ('gluon', 'torch')
# Lower-case ASCII, as trial ids, file names and tables use a name: nothing to escape.
NAME_PATTERN = re.compile(r'[a-z][a-z0-9_]{0,31}', re.ASCII)

# What an option's check returns: None where the value fits, else what it expected.
Check = Callable[[object], 'str | None']
# (channels, spatial size, options with their defaults filled in) -> (params, MACs per
# image) of one module on a channels x size x size activation.
Counts = Callable[[int, int, Mapping[str, Any]], 'tuple[int, int]']


def whole(low: int, high: int, odd: bool = False) -> Check:
    """A whole number from low to high (odd: and odd)."""

    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return 'expected a whole number'
        if not low <= value <= high:
            return f'expected {low} to {high}'
        if odd and value % 2 == 0:
            return 'expected an odd number'
        return None

    return check


def real(low: float | None = None, high: float | None = None, above: float | None = None) -> Check:
    """A finite number: at least `low` or above `above`, at most `high`."""

    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return 'expected a number'
        if value != value or value in (float('inf'), float('-inf')):
            return 'expected a finite number'
        if above is not None and not value > above:
            return f'expected a number above {above:g}'
        if low is not None and value < low:
            return (
                f'expected {low:g} to {high:g}'
                if high is not None
                else f'expected at least {low:g}'
            )
        if high is not None and value > high:
            if low is not None:
                return f'expected {low:g} to {high:g}'
            return (
                f'expected a number above {above:g} and at most {high:g}'
                if above is not None
                else f'expected at most {high:g}'
            )
        return None

    return check


@dataclass(frozen=True)
class Option:
    """An option of an attention's constructor (after the channel count). `default` is
    what the module uses when the option is not given (None: the module derives it)."""

    name: str
    default: Any
    check: Check
    help: str = ''


@dataclass(frozen=True)
class AttentionSpec:
    """An attention as the benchmark knows it.

    gluon / torch: 'package.module:Class' of its module in each backend that has one
    (a HybridBlock / an nn.Module taking the channel count, then the options), imported
    only when a network is built. fused_cpu_kernel: the Gluon module computes itself in
    one operator of models/kernels on the CPU (the contract checks it against the
    operators)."""

    name: str
    label: str
    paper: str
    counts: Counts
    options: tuple[Option, ...] = ()
    gluon: str | None = None
    torch: str | None = None
    fused_cpu_kernel: bool = False
    origin: str = 'built-in'
    option_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'option_names', tuple(o.name for o in self.options))

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that can build a network with this attention."""
        if self.name == VANILLA:
            return BACKENDS
        return tuple(b for b in BACKENDS if getattr(self, b))

    def option_problems(self, options: object) -> list[str]:
        """What is wrong with `options`: each problem names the option, what it takes and
        what was found; [] when they fit. None always means the default."""
        if not isinstance(options, dict):
            return [f'options of {self.name} must be a mapping, found {type(options).__name__}']
        unknown = sorted(set(map(str, options)) - set(self.option_names))
        if unknown and not self.options:
            return [f'attention {self.name!r} takes no options, got {", ".join(unknown)}']
        if unknown:
            return [
                f'{self.name} takes no option {", ".join(unknown)}; its options: '
                + ', '.join(self.option_names)
            ]
        checks = {o.name: o.check for o in self.options}
        problems = []
        for name, value in options.items():
            problem = None if value is None else checks[name](value)
            if problem:
                problems.append(
                    f'{self.name} option {name}: {problem}, found {reprlib.repr(value)}'
                )
        return problems

    def checked_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The given options without None values (unset options keep the module's
        defaults); ValueError names each one that does not fit its check."""
        given = {k: v for k, v in (options or {}).items() if v is not None}
        problems = self.option_problems(given)
        if problems:
            raise ValueError('; '.join(problems))
        return given

    def module_counts(
        self, channels: int, size: int, options: Mapping[str, Any] | None = None
    ) -> tuple[int, int]:
        """(trainable parameters, MACs per image) of one module on a channels x size x
        size activation, options checked and completed by their defaults."""
        given = self.checked_options(options)
        return self.counts(channels, size, {**{o.name: o.default for o in self.options}, **given})

    def backend_problem(self, backend: str) -> str | None:
        """Why a network of `backend` cannot carry this attention (None: it can)."""
        if backend in self.backends:
            return None
        return (
            f'attention {self.name} ({self.origin}) has no {backend} module (it has: '
            f'{", ".join(self.backends) or "none"})'
        )

    def module_class(self, backend: str) -> type | None:
        """The attention's module class in `backend` (None for vanilla), imported now;
        UnsupportedBackendError where the attention has none there."""
        if self.name == VANILLA:
            return None
        problem = self.backend_problem(backend)
        if problem:
            raise UnsupportedBackendError(
                f'{problem}; train it with backend ' + ' or '.join(self.backends)
            )
        path = getattr(self, backend)
        module_name, _, class_name = path.partition(':')
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise UnsupportedBackendError(
                f'attention {self.name!r} ({self.origin}): cannot import its {backend} '
                f'module {path}: {error}'
            ) from None


class UnsupportedBackendError(ValueError):
    """An attention asked of a backend it has no module for (or whose module is gone)."""


def passes(channels: int, size: int, count: int) -> int:
    """MACs of `count` passes over one image's C x H x W activation, one per element:
    the convention for pooling, sums of squares and the channel scaling."""
    return count * channels * size * size


def reduced_units(channels: int, reduction: int = 16) -> int:
    """Width of an MLP bottleneck (SE, CBAM): channels // reduction, never zero (16-channel
    stages with r=16 would otherwise have no hidden unit at all)."""
    return max(1, channels // reduction)


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size: the odd number nearest above |log2(C)/gamma + b/gamma|."""
    import math

    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def eca_checked_kernel_size(
    channels: int, kernel_size: int | None = None, gamma: float = 2, b: float = 1
) -> int:
    """The kernel size an ECA module on `channels` channels uses (None: the paper's)."""
    if kernel_size is None:
        kernel_size = eca_kernel_size(channels, gamma, b)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'ECA kernel_size must be a positive odd integer, got {kernel_size}')
    return kernel_size


def _se_counts(channels: int, size: int, options: Mapping[str, Any]) -> tuple[int, int]:
    # Two dense layers without biases; pooling and scaling.
    hidden = reduced_units(channels, options['reduction'])
    return 2 * channels * hidden, 2 * channels * hidden + passes(channels, size, 2)


def _eca_counts(channels: int, size: int, options: Mapping[str, Any]) -> tuple[int, int]:
    # k weights; the paper's k multiply-adds per channel, pooling and scaling.
    k = eca_checked_kernel_size(channels, options['kernel_size'], options['gamma'], options['b'])
    return k, channels * k + passes(channels, size, 2)


def _gct_counts(channels: int, size: int, options: Mapping[str, Any]) -> tuple[int, int]:
    # alpha, gamma, beta per channel; the sum of squares and the gating.
    return 3 * channels, passes(channels, size, 2)


def _cbam_counts(channels: int, size: int, options: Mapping[str, Any]) -> tuple[int, int]:
    # The shared MLP with biases (CBAM's code), run on both pooled vectors; average and
    # max pooling and the scaling.
    hidden = reduced_units(channels, options['reduction'])
    weights = 2 * channels * hidden
    return weights + hidden + channels, 2 * weights + passes(channels, size, 3)


def _srm_counts(channels: int, size: int, options: Mapping[str, Any]) -> tuple[int, int]:
    # The channel-wise fully connected layer (2 per channel) and its BN's scale and
    # shift; style pooling (the mean and the squared deviations) and the scaling.
    return 4 * channels, 2 * channels + passes(channels, size, 3)


def _simam_counts(channels: int, size: int, options: Mapping[str, Any]) -> tuple[int, int]:
    # No parameters; the mean, the squared deviations and their sum, each element's
    # energy, and the scaling.
    return 0, passes(channels, size, 4)


BUILTIN_SPECS = (
    AttentionSpec(
        name=VANILLA,
        label='Vanilla',
        paper='He, Zhang, Ren, Sun: "Deep Residual Learning for Image Recognition", CVPR 2016',
        counts=lambda channels, size, options: (0, 0),
    ),
    AttentionSpec(
        name='se',
        label='SE',
        paper='Hu, Shen, Sun: "Squeeze-and-Excitation Networks", CVPR 2018. '
        'https://arxiv.org/abs/1709.01507',
        counts=_se_counts,
        options=(Option('reduction', 16, whole(1, 4096), 'hidden units: channels // reduction'),),
        gluon='models.attention.se:SE',
        torch='models.pytorch.attention:SE',
        fused_cpu_kernel=True,
    ),
    AttentionSpec(
        name='eca',
        label='ECA',
        paper='Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention for Deep '
        'Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151',
        counts=_eca_counts,
        options=(
            Option('kernel_size', None, whole(1, 255, odd=True), 'odd; None: from C'),
            Option('gamma', 2, real(above=0, high=1e6), 'of the adaptive kernel size'),
            Option('b', 1, real(low=-1e6, high=1e6), 'of the adaptive kernel size'),
        ),
        gluon='models.attention.eca:ECA',
        torch='models.pytorch.attention:ECA',
        fused_cpu_kernel=True,
    ),
    AttentionSpec(
        name='gct',
        label='GCT',
        paper='Yang, Zhu, Wu, Yang: "Gated Channel Transformation for Visual Recognition", '
        'CVPR 2020. https://arxiv.org/abs/1909.11519',
        counts=_gct_counts,
        options=(Option('epsilon', 1e-5, real(above=0, high=1.0), 'of the L2 norms'),),
        gluon='models.attention.gct:GCT',
        torch='models.pytorch.attention:GCT',
        fused_cpu_kernel=True,
    ),
    AttentionSpec(
        name='cbam',
        label='CBAM',
        paper='Woo, Park, Lee, Kweon: "CBAM: Convolutional Block Attention Module", ECCV '
        '2018 (its channel attention). https://arxiv.org/abs/1807.06521',
        counts=_cbam_counts,
        options=(Option('reduction', 16, whole(1, 4096), 'hidden units: channels // reduction'),),
        gluon='models.attention.cbam:CBAM',
        torch='models.pytorch.cbam:CBAM',
    ),
    AttentionSpec(
        name='srm',
        label='SRM',
        paper='Lee, Kim, Nam: "SRM: A Style-based Recalibration Module for Convolutional '
        'Neural Networks", ICCV 2019. https://arxiv.org/abs/1903.10829',
        counts=_srm_counts,
        # A constant channel has variance 0: an epsilon that float32 rounds to 0 makes
        # sqrt's gradient there infinite (NaN); 1e-12 keeps it finite.
        options=(Option('epsilon', 1e-5, real(low=1e-12, high=1.0), 'added to the variance'),),
        gluon='models.attention.srm:SRM',
        torch='models.pytorch.srm:SRM',
    ),
    AttentionSpec(
        name='simam',
        label='SimAM',
        paper='Yang, Zhang, Li, Xie: "SimAM: A Simple, Parameter-Free Attention Module for '
        'Convolutional Neural Networks", ICML 2021. '
        'https://proceedings.mlr.press/v139/yang21o.html',
        counts=_simam_counts,
        # Below 1e-12 a constant channel's energy is 0/0 in float32.
        options=(Option('e_lambda', 1e-4, real(low=1e-12, high=1e3), "the energy's lambda"),),
        gluon='models.attention.simam:SimAM',
        torch='models.pytorch.simam:SimAM',
    ),
)


def attention_key(name: object) -> str:
    """The one normalisation of an attention name: names ignore case."""
    return str(name).strip().lower()


class PluginProblem(Exception):
    """An entry point of ENTRY_POINT_GROUP that does not give a usable spec."""


def _spec_from_entry_point(entry_point: Any) -> AttentionSpec:
    where = f'entry point {entry_point.name} = {entry_point.value}'
    dist = getattr(entry_point, 'dist', None)
    origin = f'{dist.name} {dist.version}' if dist is not None else entry_point.value
    try:
        spec = entry_point.load()
    except Exception as error:  # noqa: BLE001 (any failure of a plugin's import is reported)
        raise PluginProblem(f'{where} ({origin}) does not load: {error}') from None
    if not isinstance(spec, AttentionSpec):
        raise PluginProblem(
            f'{where} ({origin}) gives a {type(spec).__name__}, not a models.registry.AttentionSpec'
        )
    if not NAME_PATTERN.fullmatch(spec.name) or spec.name != attention_key(entry_point.name):
        raise PluginProblem(
            f'{where} ({origin}): its spec is named {spec.name!r}; the entry point and the spec '
            'must share one lower-case name of letters, digits and _ (at most 32)'
        )
    if not spec.gluon and not spec.torch:
        raise PluginProblem(f'{where} ({origin}): its spec names no gluon or torch module')
    for backend in BACKENDS:
        problem = _path_problem(getattr(spec, backend))
        if problem:
            raise PluginProblem(f'{where} ({origin}): its {backend} module {problem}')
    problem = _counts_problem(spec)
    if problem:
        raise PluginProblem(f'{where} ({origin}): {problem}')
    from dataclasses import replace

    return replace(spec, origin=origin)


def _path_problem(path: str | None) -> str | None:
    """What is wrong with a 'package.module:Class' path (None: nothing, or no path).
    The module is looked up, not imported: it may import a framework."""
    if path is None:
        return None
    module_name, colon, class_name = str(path).partition(':')
    if not colon or not module_name or not class_name.isidentifier():
        return f'{path!r} is not of the form package.module:Class'
    from importlib.util import find_spec

    try:
        found = find_spec(module_name)
    except (ImportError, ValueError) as error:
        return f'{path!r} cannot be found: {error}'
    return None if found else f'{path!r} cannot be found: no module {module_name}'


def _counts_problem(spec: AttentionSpec) -> str | None:
    """Its counts on the blocks of a CIFAR ResNet (16-64 channels, 32-8 pixels) with its
    options' defaults must be two whole numbers, at least 0: they are called for every
    trial of a sweep, long after registration."""
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        try:
            counts = spec.module_counts(channels, size)
        except Exception as error:  # noqa: BLE001 (any failure of a plugin's code is reported)
            return f'its counts fail on {channels} channels of {size}x{size}: {error!r}'
        if (
            not isinstance(counts, tuple)
            or len(counts) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
        ):
            return (
                f'its counts on {channels} channels of {size}x{size} are {counts!r}, not '
                '(parameters, MACs): two whole numbers, at least 0'
            )
    return None


@functools.cache
def _registry() -> tuple[dict[str, AttentionSpec], tuple[str, ...]]:
    """(name -> spec, problems): the built-ins, then the installed packages' attentions
    in name order; a plugin that fails or shadows another is left out with a problem."""
    from importlib.metadata import entry_points

    specs = {spec.name: spec for spec in BUILTIN_SPECS}
    problems = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            spec = _spec_from_entry_point(entry_point)
        except PluginProblem as problem:
            problems.append(str(problem))
            continue
        if spec.name in specs:
            problems.append(
                f'entry point {entry_point.name} ({spec.origin}) is left out: the name '
                f'{spec.name!r} is taken by {specs[spec.name].origin}'
            )
            continue
        specs[spec.name] = spec
    return specs, tuple(problems)


def refresh() -> None:
    """Read the installed attentions again (after installing or removing a package)."""
    _registry.cache_clear()


def registered() -> dict[str, AttentionSpec]:
    """Every attention this installation knows, in table order (built-ins first)."""
    return dict(_registry()[0])


def plugin_problems() -> tuple[str, ...]:
    """Why installed attention packages were left out (the doctor shows these)."""
    return _registry()[1]


def attention_names() -> tuple[str, ...]:
    return tuple(_registry()[0])


def attention_spec(name: object) -> AttentionSpec:
    """The spec of attention `name` (any case); UnknownNameError lists the known ones and
    says how an attention of another package gets registered."""
    specs, problems = _registry()
    key = attention_key(name)
    if key in specs:
        return specs[key]
    hint = (
        '; an attention of another package is found once the package is installed '
        f'(entry point group {ENTRY_POINT_GROUP}; `python -m bench.doctor` lists them)'
    )
    failed = [p for p in problems if f'entry point {key} ' in p]
    raise UnknownNameError(
        f'unknown attention {name!r}; valid attentions: {", ".join(specs)}'
        + (f'. {failed[0]}' if failed else hint)
    )


def parse_attention_name(name: object) -> str:
    """The registered spelling of attention `name` (UnknownNameError where none)."""
    return attention_spec(name).name


def attention_label(name: object) -> str:
    """The tables' label of attention `name` (an unknown one: its name in capitals)."""
    spec = _registry()[0].get(attention_key(name))
    return spec.label if spec else str(name).upper()
