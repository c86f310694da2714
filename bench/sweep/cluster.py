"""The machines a sweep runs on: this one for --dry-run, or the Ray cluster it joins.

Each check refuses, before any trial starts, what would otherwise fail late or wait
forever: GPUs a node cannot use, trials no node holds. The nodes need no disk in common
(checkpoints travel through Ray: bench.sweep.tune_trial).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from bench.progress import print_line
from bench.sweep.plan import SweepError

if TYPE_CHECKING:
    from bench.sweep.config import Resources


def local_devices(resources: Resources) -> str:
    """What --dry-run says about this machine's devices and what trials will get."""
    from bench.gpu import describe_gpus, physical_gpus
    from bench.trial.threads import available_cpus

    gpus = physical_gpus()
    cpus = available_cpus()
    text = f'{cpus} CPU cores; {describe_gpus(gpus)}'
    if resources.cpus_per_trial > cpus:
        text += (
            f' (cpus_per_trial {resources.cpus_per_trial:g} is more than this machine '
            'has: a run here is refused; on a cluster, each node must have that many)'
        )
    if resources.gpus_per_trial and not gpus:
        text += ' (gpus_per_trial ignored: trials run on CPUs)'
    return text


# Ray's warnings that say nothing a user of this project acts on: kept out of the
# terminal (Ray's own logs in its session folder still hold them); --verbose shows them.
QUIETED_RAY_LOGGERS = (
    # "Token authentication is enabled for this Ray cluster": on every local start.
    'ray._private.authentication.authentication_token_setup',
)


def quiet_ray_warnings() -> None:
    import logging

    for name in QUIETED_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def start_ray(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> ModuleType:
    """Join the cluster at `address` (or RAY_ADDRESS; 'auto': the one `ray start` began on
    this machine), else start a private Ray instance for this run alone: never a cluster
    that another job or user started here (Ray's own default would join it, and its end
    would take the sweep's trials with it). SweepError when the cluster cannot be reached."""
    import ray

    os.environ.setdefault('RAY_AIR_NEW_OUTPUT', '0')
    os.environ.setdefault('TUNE_DISABLE_AUTO_CALLBACK_LOGGERS', '1')
    if ray.is_initialized():
        return ray
    options = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
    )
    address = address or os.environ.get('RAY_ADDRESS')
    if not address:
        ray.init(address='local', num_cpus=num_cpus, num_gpus=num_gpus, **options)
        return ray
    if address.startswith('ray://'):
        raise SweepError(
            f'--address {address}: Ray Client addresses (ray://) are not '
            'supported; run run_sweep.py on a node of the cluster with --address '
            "auto, or give the head's GCS address (host:6379)"
        )
    unreachable = _unreachable(address)
    if unreachable:
        raise SweepError(
            f'cannot join the Ray cluster at {address}: {unreachable}; start one '
            'with `ray start --head`, check the address (host:port of its head, '
            'or auto), or leave --address and RAY_ADDRESS unset to train on this '
            'machine alone'
        )
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as error:
        raise SweepError(
            f'cannot join the Ray cluster at {address} '
            f'({str(error).splitlines()[0][:300]}); start one with `ray start '
            '--head`, check the address (host:port of its head, or auto), or '
            'leave --address and RAY_ADDRESS unset to train on this machine '
            'alone'
        ) from None
    return ray


def cluster_devices(ray: ModuleType) -> str:
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get('Alive'))
    return f'{nodes} node(s), {resources.get("CPU", 0):g} CPUs, {resources.get("GPU", 0):g} GPUs'


def _unreachable(address: str, seconds: float = 5.0) -> str | None:
    """Why nothing answers at a host:port address (None when something does, or when the
    address is not host:port, which Ray parses and judges itself): Ray would otherwise
    retry for minutes before it says so."""
    host, _, port = str(address).rpartition(':')
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            return None
    except OSError as error:
        return f'nothing answers there ({error.strerror or error})'


def check_cluster_gpus(
    ray: ModuleType, gpus_per_trial: float, backends: Sequence[str] = ('gluon',)
) -> list[str]:
    """On every node that offers GPUs: cards that the trials' backends can use, and a CUDA
    build of each backend's framework.

    Runs as a CPU-only task on each node, reading the cards through NVML, so no
    CUDA context is created before the trials start.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bench.gpu import GPUError

    @ray.remote(num_cpus=0)
    def node_check() -> tuple[bool, str]:
        from bench.gpu import GPUError as RemoteGPUError
        from bench.gpu import check_gpus, describe_gpus

        try:
            checked = [check_gpus(gpus_per_trial, backend=backend) for backend in backends]
            return True, describe_gpus(checked[0])
        except RemoteGPUError as error:
            return False, str(error)

    nodes = [n for n in ray.nodes() if n.get('Alive') and n.get('Resources', {}).get('GPU')]
    answers = ray.get(
        [
            node_check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n['NodeID'], soft=False)
            ).remote()
            for n in nodes
        ],
        timeout=120,
    )
    problems = [
        f'node {n.get("NodeManagerAddress", n["NodeID"])}: {text}'
        for n, (ok, text) in zip(nodes, answers)
        if not ok
    ]
    if problems:
        raise GPUError('\n'.join(problems))
    return [text for _, text in answers]


def check_trials_fit(ray: ModuleType, resources: Resources) -> None:
    """Refuse a trial that no node of the cluster can hold (Tune would wait forever)."""
    nodes = [n.get('Resources', {}) for n in ray.nodes() if n.get('Alive')]
    for kind, asked in (('CPU', resources.cpus_per_trial), ('GPU', resources.gpus_per_trial)):
        largest = max((node.get(kind, 0) for node in nodes), default=0)
        if asked and asked > largest:
            raise SweepError(
                f'each trial asks for {asked:g} {kind}s, but the largest node of the Ray '
                f'cluster has {largest:g}; lower resources.{kind.lower()}s_per_trial in the '
                'sweep file (a cluster that scales up must offer such a node first)'
            )


def cpu_fallback(
    resources: Resources, ray: ModuleType, progress: Callable[[str], object] = print_line
) -> Resources:
    """Resources to ask for: on a cluster without GPUs, GPU trials run on CPUs instead."""
    if resources.gpus_per_trial and not ray.cluster_resources().get('GPU', 0):
        progress(
            f'no GPU in the Ray cluster: gpus_per_trial {resources.gpus_per_trial:g} '
            'ignored, trials run on CPUs'
        )
        return resources.model_copy(update={'gpus_per_trial': 0})
    return resources
