"""Model names and network-definition revisions: plain Python, no MXNet.

Checking a sweep file, planning trials, computing trial ids and labelling tables
need these facts but nothing of the networks themselves, so they live apart from
the builders. The attentions' names, labels and options are in models.registry.
"""

from __future__ import annotations

import re
from typing import NamedTuple

STANDARD_DEPTHS = (20, 56, 110)
# The deepest CIFAR ResNet of He et al. (2016) has 1202 layers (n = 200): deeper names
# are typos, and counting one of millions of layers would hang the sweep's checks.
MAX_DEPTH = 1202
# ASCII digits without leading zeros, nothing after the name (a `$` would allow a
# trailing newline): one spelling per network, so one trial id per cell.
MODEL_NAME_PATTERN = re.compile(r'cifar_resnet([1-9][0-9]{0,3})_v([12])', re.ASCII)
MODELS = tuple(f'cifar_resnet{depth}_v{version}' for depth in STANDARD_DEPTHS for version in (1, 2))

# The revision of each ResNet version's network definition. A revision is bumped
# whenever the function a version computes changes, and it is part of every trial's
# identity, so results trained by an older definition turn pending instead of
# showing as current. Revision 1 stays out of the identity (trial ids of v1 are the
# ones computed before revisions existed).
#   v2 revision 2: the downsampling block takes its projection shortcut from the raw
#   block input, as the original repository does (revision 1 took it after BN-ReLU).
NETWORK_REVISIONS = {1: 1, 2: 2}

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
    """A CIFAR ResNet's version (1 or 2) and depth (6n + 2)."""

    version: int
    depth: int


def parse_model_name(name: str) -> ModelNameParts:
    """(version, depth) of a `cifar_resnet{depth}_v{version}` name with depth = 6n + 2."""
    match = MODEL_NAME_PATTERN.fullmatch(str(name))
    depth = int(match.group(1)) if match else 0
    if not match or depth < 8 or depth > MAX_DEPTH or (depth - 2) % 6:
        raise UnknownNameError(
            f'unknown model {name!r}; valid models: {", ".join(MODELS)} '
            f'(or any cifar_resnet<depth>_v1/_v2 with depth = 6n+2, 8 <= depth <= '
            f'{MAX_DEPTH})'
        )
    return ModelNameParts(int(match.group(2)), depth)


def network_revision(name: str) -> int:
    """The revision of the network definition that `name` is built with."""
    version, _ = parse_model_name(name)
    return NETWORK_REVISIONS[version]


def model_sort_key(name: str) -> tuple[int, int, str]:
    """cifar_resnet20_v2 < cifar_resnet56_v1 < cifar_resnet110_v1: by depth, then version;
    other names after them, alphabetically."""
    match = MODEL_NAME_PATTERN.fullmatch(str(name))
    return (int(match.group(1)), int(match.group(2)), '') if match else (10**9, 0, str(name))
