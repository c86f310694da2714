"""What a run happened on: package versions, git commit, devices, data. Kept with the results."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.trial.data import DataIdentity

PACKAGES = (
    'mxnet',
    'mxnet-cu112',
    'gluoncv',
    'torch',
    'numpy',
    'ray',
    'pandas',
    'matplotlib',
    'jinja2',
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(folder: str | Path) -> str | None:
    try:
        out = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=folder, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ['git', 'status', '--porcelain'], cwd=folder, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ('-dirty' if dirty.stdout.strip() else '')


def describe_gpus_and_driver() -> dict[str, str | None]:
    """This machine's GPUs (through NVML: no CUDA context) and the driver's CUDA version."""
    from bench.gpu import describe_gpus, driver_cuda_version, physical_gpus

    driver = driver_cuda_version()
    return {
        'gpus': describe_gpus(physical_gpus()),
        'driver_cuda': '.'.join(map(str, driver)) if driver else None,
    }


# The checkout of this code: its commit is the one that trains, wherever the sweep file is.
CODE_ROOT = Path(__file__).resolve().parents[1]


def describe_environment(data_identity: DataIdentity, devices: str) -> dict[str, Any]:
    return {
        **describe_gpus_and_driver(),
        'recorded_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'python': sys.version.split()[0],
        'platform': platform.platform(),
        'packages': package_versions(),
        'git_commit': git_commit(CODE_ROOT),
        'devices': devices,
        'data': data_identity.to_dict(),
    }
