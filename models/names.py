"""Model names and network-definition revisions: plain Python, no MXNet.

Checking a sweep file, planning trials, computing trial ids and labelling tables
need these facts but nothing of the networks themselves, so they live apart from
the builders. The attentions' names, labels and options are in models.registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

STANDARD_DEPTHS = (20, 56, 110)
# The deepest CIFAR ResNet of He et al. (2016) has 1202 layers (n = 200): deeper names
# are typos, and counting one of millions of layers would hang the sweep's checks.
MAX_DEPTH = 1202
MODELS = tuple(f'cifar_resnet{depth}_v{version}' for depth in STANDARD_DEPTHS for version in (1, 2))


@dataclass(frozen=True)
class NetworkVariant:
    """A network that is not the original repository's but another paper's, declared by
    where it differs from the original's version it builds on, so that the paper's
    cells can be trained without changing ours."""

    version: int  # the original's blocks it is built of
    stem_relu: bool  # a ReLU after the stem's BN
    # Attentions that sit between the block's last convolution and its BN (every
    # other one after that BN, as in the original).
    attentions_before_last_bn: tuple[str, ...]
    # Conv and dense weights drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
    # default) instead of MXNet's Xavier(); biases start at zero either way.
    fan_in_uniform_init: bool
    source: str


# By the name's suffix after the depth (cifar_resnet20_simam).
VARIANTS = {
    'simam': NetworkVariant(
        version=1,
        stem_relu=True,
        attentions_before_last_bn=('simam',),
        fan_in_uniform_init=True,
        source=(
            "the SimAM paper's CIFAR ResNet as its code builds it (Yang et al., ICML 2021, "
            "ZjjConan/SimAM networks/cifar): v1 blocks with a ReLU after the stem's BN, "
            "SimAM between a block's second convolution and its BN, conv and dense weights "
            "from PyTorch's default uniform"
        ),
    ),
}
# ASCII digits without leading zeros, nothing after the name (a `$` would allow a
# trailing newline): one spelling per network, so one trial id per cell.
MODEL_NAME_PATTERN = re.compile(
    rf'cifar_resnet([1-9][0-9]{{0,3}})_(v[12]|{"|".join(map(re.escape, VARIANTS))})', re.ASCII
)

# The revision of each ResNet version's network definition. A revision is bumped
# whenever the function a version computes changes, and it is part of every trial's
# identity, so results trained by an older definition turn pending instead of
# showing as current. Revision 1 stays out of the identity (trial ids of v1 are the
# ones computed before revisions existed).
#   v2 revision 2: the downsampling block takes its projection shortcut from the raw
#   block input, as the original repository does (revision 1 took it after BN-ReLU).
NETWORK_REVISIONS = {1: 1, 2: 2}
# The same for each variant, by its suffix. A variant is built of a version's blocks:
# a change to those that bumps the version's revision bumps the variant's too.
VARIANT_REVISIONS = {'simam': 1}

# Parameters that weight files of earlier versions hold and the networks no longer
# have, by their last name component; loading skips them. They never changed what a
# network computes (else the revision above would have been bumped).
#   shifts: ECA's constant shift matrices (k x C x C), from which the channel
#   convolution used to be built as a banded matrix product.
RETIRED_PARAMETERS = ('shifts',)


class UnknownNameError(KeyError):
    """A model or attention name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class ModelNameParts(NamedTuple):
    """A CIFAR ResNet's version (1 or 2: whose blocks it is built of), depth (6n + 2)
    and variant ('' for the original's networks, else a key of VARIANTS)."""

    version: int
    depth: int
    variant: str = ''

    @property
    def family(self) -> str:
        """'v1', 'v2' or the variant's key: what the name's suffix says."""
        return self.variant or f'v{self.version}'


def parse_model_name(name: str) -> ModelNameParts:
    """(version, depth, variant) of a `cifar_resnet{depth}_v{version}` or
    `cifar_resnet{depth}_{variant}` name with depth = 6n + 2."""
    match = MODEL_NAME_PATTERN.fullmatch(str(name))
    depth = int(match.group(1)) if match else 0
    if not match or depth < 8 or depth > MAX_DEPTH or (depth - 2) % 6:
        variants = ', '.join(f'_{v}' for v in VARIANTS)
        raise UnknownNameError(
            f'unknown model {name!r}; valid models: {", ".join(MODELS)} '
            f'(or any cifar_resnet<depth>_v1/_v2 with depth = 6n+2, 8 <= depth <= '
            f"{MAX_DEPTH}; other papers' networks: cifar_resnet<depth>{variants})"
        )
    suffix = match.group(2)
    if suffix in VARIANTS:
        return ModelNameParts(VARIANTS[suffix].version, depth, suffix)
    return ModelNameParts(int(suffix[1:]), depth)


def network_variant(name: str) -> NetworkVariant | None:
    """The declared variant `name` is built as, or None for the original's networks."""
    variant = parse_model_name(name).variant
    return VARIANTS[variant] if variant else None


def attention_before_last_bn(name: str, attention: str) -> bool:
    """Whether `attention` (its registry key) sits between the last convolution of
    network `name`'s blocks and their BN (a variant's placement), not after that BN."""
    variant = network_variant(name)
    return variant is not None and attention in variant.attentions_before_last_bn


def fan_in_uniform_init(name: str) -> bool:
    """Whether network `name` starts its conv and dense weights from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) instead of MXNet's Xavier()."""
    variant = network_variant(name)
    return variant is not None and variant.fan_in_uniform_init


def network_revision(name: str) -> int:
    """The revision of the network definition that `name` is built with."""
    parts = parse_model_name(name)
    return VARIANT_REVISIONS[parts.variant] if parts.variant else NETWORK_REVISIONS[parts.version]


def model_sort_key(name: str) -> tuple[int, int, str]:
    """cifar_resnet20_v1 < cifar_resnet20_simam (built of v1) < cifar_resnet20_v2 <
    cifar_resnet56_v1: by depth, then version, then variant; other names after them,
    alphabetically."""
    try:
        parts = parse_model_name(name)
    except UnknownNameError:
        return (10**9, 0, str(name))
    return (parts.depth, parts.version, parts.variant)
