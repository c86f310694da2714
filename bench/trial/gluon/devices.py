"""Which MXNet devices a trial trains on.

Ray hands a trial its GPUs through CUDA_VISIBLE_DEVICES, so a trial uses
mx.gpu(0..k-1) of what it sees; with no GPU it uses the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import mxnet as mx

from bench.trial.loop import DeviceError


def visible_gpu_count() -> int:
    """GPUs this process may use (0 on a CPU build of MXNet or without a driver)."""
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError:
        return 0


def trial_contexts(num_gpus: int | None = None) -> list[mx.Context]:
    """mx.gpu(0..k-1) for the first `num_gpus` visible GPUs (all if None), else [mx.cpu()]."""
    available = visible_gpu_count()
    wanted = available if num_gpus is None else int(num_gpus)
    if wanted > available:
        raise DeviceError(
            f'{wanted} GPU(s) asked for but {available} visible to this process '
            '(a CPU build of MXNet sees none)'
        )
    if wanted <= 0:
        return [mx.cpu()]
    return [mx.gpu(i) for i in range(wanted)]


def describe(contexts: Iterable[mx.Context]) -> str:
    return ', '.join(str(ctx) for ctx in contexts)


def trial_device_plan(
    gpus_per_trial: float,
    gpu_ids: Sequence[int | str],
    make_context: Callable[[str, int], mx.Context] | None = None,
) -> list[mx.Context]:
    """The contexts of a Ray trial: mx.gpu(0..k-1) for the k GPUs Ray assigned, else CPU.

    Ray exports the assigned cards as CUDA_VISIBLE_DEVICES, so inside the trial
    they are numbered from 0 whatever their physical ids; a fractional share still
    shows one whole card. `make_context(kind, index)` builds a context (tests fake it).
    """
    make_context = make_context or (
        lambda kind, index: mx.gpu(index) if kind == 'gpu' else mx.cpu()
    )
    if not gpus_per_trial or not gpu_ids:
        return [make_context('cpu', 0)]
    return [make_context('gpu', index) for index in range(len(gpu_ids))]
