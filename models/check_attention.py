"""The contract every attention passes, built-in or brought by another package:

    python -m models.check_attention NAME [NAME ...]

For each backend the attention has (and that is installed), on a few channel counts:
the output keeps the input's shape and is finite; the trainable parameters are as many
as its spec counts; gradients agree with finite differences (float64); its MACs
(weighted layers measured, plus what the module declares in `macs_per_image`; on the
Gluon module where there is one) equal the spec's; with both backends, the same weights
give the same outputs and gradients; a fused CPU kernel gives what MXNet's operators
give; the Gluon module hybridizes and the PyTorch one compiles to the same function.
Exit status 1 where a check fails, 2 for an unknown name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import AttentionSpec, attention_spec

if TYPE_CHECKING:
    import numpy as np

CHANNELS = (16, 64)
SIZE = 6
BATCH = 4
# float32 agreement between the two frameworks (and fused kernel vs operators): MXNet
# and PyTorch reduce in different orders.
RTOL = 2e-4
# Central differences in float64: their own error is ~step^2, far below this.
GRADIENT_RTOL = 1e-5


@dataclass(frozen=True)
class Result:
    check: str
    passed: bool | None  # None: not applicable here (skipped), with why in detail
    detail: str

    def line(self) -> str:
        status = 'skip' if self.passed is None else 'ok' if self.passed else 'FAIL'
        return f'{status:<4}  {self.check:<34}  {self.detail}'


def installed(backend: str) -> bool:
    from importlib.util import find_spec

    return find_spec('mxnet' if backend == 'gluon' else 'torch') is not None


def _inputs(channels: int, seed: int = 0) -> np.ndarray:
    import numpy as np

    return np.random.default_rng(seed).normal(size=(BATCH, channels, SIZE, SIZE))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


# --- building and running one module in each backend ---------------------------------


def gluon_module(spec: AttentionSpec, channels: int, options: dict[str, Any], dtype: str) -> Any:  # noqa: ANN401 (a HybridBlock; MXNet is imported only when used)
    """The spec's Gluon module, initialised, its parameters drawn at random (so no
    parameter sits at a zero start that would hide a wrong formula)."""
    import mxnet as mx
    import numpy as np

    module = spec.module_class('gluon')(channels, **options)
    module.initialize(mx.init.Xavier())
    module(mx.nd.zeros((1, channels, SIZE, SIZE)))  # settles deferred shapes
    if dtype != 'float32':
        module.cast(dtype)
    rng = np.random.default_rng(7)
    for name, parameter in module._collect_params_with_prefix().items():
        value = rng.normal(scale=0.5, size=parameter.shape)
        if name.endswith('running_var'):
            value = np.abs(value) + 0.5
        parameter.set_data(mx.nd.array(value, dtype=dtype))
    return module


def gluon_pass(module: Any, x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(output, d loss / d input, {parameter: gradient}) of one training-mode pass,
    loss = sum(output * fixed random weights)."""
    import mxnet as mx
    import numpy as np

    data = mx.nd.array(x, dtype=dtype)
    data.attach_grad()
    weights = mx.nd.array(np.random.default_rng(3).normal(size=x.shape), dtype=dtype)
    with mx.autograd.record(train_mode=True):
        out = module(data)
        loss = (out * weights).sum()
    loss.backward()
    grads = {
        name: p.grad().asnumpy()
        for name, p in module._collect_params_with_prefix().items()
        if p.grad_req != 'null'
    }
    return out.asnumpy(), data.grad.asnumpy(), grads


def torch_module(spec: AttentionSpec, channels: int, options: dict[str, Any]) -> Any:  # noqa: ANN401 (an nn.Module; PyTorch is imported only when used)
    import torch

    module = spec.module_class('torch')(channels, **options)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return module.train()


def torch_pass(module: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    import numpy as np
    import torch

    data = torch.tensor(x, requires_grad=True)
    weights = torch.tensor(np.random.default_rng(3).normal(size=x.shape), dtype=data.dtype)
    module.zero_grad()
    out = module(data)
    (out * weights).sum().backward()
    grads = {n: p.grad.numpy() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach().numpy(), data.grad.numpy(), grads


def torch_macs(module: Any, input_shape: tuple[int, ...]) -> int:
    """MACs of one image as models.stats counts them: Linear/Conv layers' output elements
    x filter size, plus what a module declares in `macs_per_image`."""
    import torch

    counts = []

    def weighted(layer: Any, _inputs: Any, output: Any) -> None:
        counts.append(int(output[0].numel()) * int(layer.weight[0].numel()))

    def declared(layer: Any, inputs: Any, _output: Any) -> None:
        counts.append(int(layer.macs_per_image(tuple(inputs[0].shape))))

    handles = []
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            handles.append(layer.register_forward_hook(weighted))
        if hasattr(layer, 'macs_per_image'):
            handles.append(layer.register_forward_hook(declared))
    try:
        with torch.no_grad():
            module(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return sum(counts)


# --- the checks ----------------------------------------------------------------------


def check_shapes(
    spec: AttentionSpec, backend: str, channels: int, options: dict[str, Any]
) -> Result:
    x = _inputs(channels)
    if backend == 'gluon':
        out, grad, _ = gluon_pass(gluon_module(spec, channels, options, 'float32'), x, 'float32')
    else:
        out, grad, _ = torch_pass(torch_module(spec, channels, options).float(), x.astype('f4'))
    import numpy as np

    passed = out.shape == x.shape and np.isfinite(out).all() and np.isfinite(grad).all()
    return Result(
        f'{backend} shape C={channels}',
        bool(passed),
        f'output {out.shape} for input {x.shape}, forward and backward finite'
        if passed
        else f'output {out.shape} (finite: {np.isfinite(out).all()}) for input {x.shape}',
    )


def check_parameters(
    spec: AttentionSpec, backend: str, channels: int, options: dict[str, Any]
) -> Result:
    if backend == 'gluon':
        module = gluon_module(spec, channels, options, 'float32')
        found = sum(
            int(p.data().size) for p in module.collect_params().values() if p.grad_req != 'null'
        )
    else:
        module = torch_module(spec, channels, options)
        found = sum(p.numel() for p in module.parameters() if p.requires_grad)
    expected = spec.module_counts(channels, SIZE, options)[0]
    return Result(
        f'{backend} parameters C={channels}',
        found == expected,
        f'{found} trainable, spec counts {expected}',
    )


def check_macs(spec: AttentionSpec, backend: str, channels: int, options: dict[str, Any]) -> Result:
    shape = (1, channels, SIZE, SIZE)
    if backend == 'gluon':
        from .stats import count_macs

        found = count_macs(gluon_module(spec, channels, options, 'float32'), shape)
    else:
        found = torch_macs(torch_module(spec, channels, options).float(), shape)
    expected = spec.module_counts(channels, SIZE, options)[1]
    return Result(
        f'{backend} MACs C={channels}',
        found == expected,
        f'{found} counted on the module, spec counts {expected}',
    )


def _finite_differences(
    loss: Callable[[np.ndarray], float], x: np.ndarray, grad: np.ndarray, count: int = 12
) -> float:
    """Worst relative error of `grad` against central differences of `loss` at `count`
    random coordinates of x."""
    import numpy as np

    rng = np.random.default_rng(11)
    worst, scale = 0.0, max(float(np.abs(grad).max()), 1e-12)
    for index in zip(*(rng.integers(0, n, size=count) for n in x.shape)):
        step = 1e-6
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        numeric = (loss(plus) - loss(minus)) / (2 * step)
        worst = max(worst, abs(numeric - grad[index]) / scale)
    return worst


def check_gradients(
    spec: AttentionSpec, backend: str, channels: int, options: dict[str, Any]
) -> Result:
    """d loss / d input against central differences, in float64."""
    import numpy as np

    x = _inputs(channels)
    weights = np.random.default_rng(3).normal(size=x.shape)
    if backend == 'gluon':
        from .kernels import mxnet_operators_only

        with mxnet_operators_only():  # the fused kernels are float32 only
            module = gluon_module(spec, channels, options, 'float64')
            _, grad, _ = gluon_pass(module, x, 'float64')

            def loss(value: np.ndarray) -> float:
                import mxnet as mx

                with mx.autograd.train_mode():
                    out = module(mx.nd.array(value, dtype='float64')).asnumpy()
                return float((out * weights).sum())

            worst = _finite_differences(loss, x, grad)
    else:
        import torch

        module = torch_module(spec, channels, options).double()
        _, grad, _ = torch_pass(module, x)

        def loss(value: np.ndarray) -> float:
            # BN's running statistics move with each call, not what it computes.
            with torch.no_grad():
                return float((module(torch.tensor(value)).numpy() * weights).sum())

        worst = _finite_differences(loss, x, grad)
    return Result(
        f'{backend} gradients C={channels}',
        worst <= GRADIENT_RTOL,
        f'input gradient within {worst:.1e} of finite differences (float64)',
    )


def check_backends_agree(spec: AttentionSpec, channels: int, options: dict[str, Any]) -> Result:
    """The Gluon module's weights loaded into the PyTorch one (by structural name, as
    models.pytorch.convert loads a network's) give the same output and gradients."""
    from .pytorch.convert import torch_state_from_gluon

    x = _inputs(channels).astype('float32')
    gluon = gluon_module(spec, channels, options, 'float32')
    gluon_params = {n: p.data().asnumpy() for n, p in gluon._collect_params_with_prefix().items()}
    twin = spec.module_class('torch')(channels, **options)
    try:
        twin.load_state_dict(torch_state_from_gluon(twin, gluon_params))
    except ValueError as error:
        return Result(f'gluon = torch C={channels}', False, str(error))
    from .kernels import mxnet_operators_only

    with mxnet_operators_only():
        out, grad, grads = gluon_pass(gluon, x, 'float32')
    twin_out, twin_grad, twin_grads = torch_pass(twin.train(), x)
    from .pytorch.convert import gluon_names

    names = gluon_names(twin)
    worst = max(_relative(twin_out, out), _relative(twin_grad, grad))
    for key, value in twin_grads.items():
        worst = max(worst, _relative(value, grads[names[key]]))
    return Result(
        f'gluon = torch C={channels}',
        worst <= RTOL,
        f'output, input and parameter gradients within {worst:.1e}',
    )


def check_fused_kernel(spec: AttentionSpec, channels: int, options: dict[str, Any]) -> Result:
    from .kernels import fused_kernels_available, mxnet_operators_only

    if not fused_kernels_available():
        return Result(f'fused kernel C={channels}', None, 'the CPU kernels are not built here')
    x = _inputs(channels).astype('float32')
    module = gluon_module(spec, channels, options, 'float32')
    fused = gluon_pass(module, x, 'float32')
    with mxnet_operators_only():
        plain = gluon_pass(module, x, 'float32')
    return _agreement(
        f'fused kernel C={channels}', fused, plain, 'fused operator', 'of MXNet operators'
    )


def check_hybridize(spec: AttentionSpec, channels: int, options: dict[str, Any]) -> Result:
    x = _inputs(channels).astype('float32')
    module = gluon_module(spec, channels, options, 'float32')
    imperative = gluon_pass(module, x, 'float32')
    module.hybridize()
    hybrid = gluon_pass(module, x, 'float32')
    return _agreement(
        f'gluon hybridize C={channels}', hybrid, imperative, 'hybridized', 'of imperative'
    )


def _agreement(label: str, result: tuple, reference: tuple, what: str, against: str) -> Result:
    """A Result of whether the output and input gradient of two passes agree to RTOL."""
    worst = max(_relative(a, b) for a, b in zip(result[:2], reference[:2]))
    return Result(
        label, worst <= RTOL, f'{what} within {worst:.1e} {against} (output, input gradient)'
    )


def check_compile(spec: AttentionSpec, channels: int, options: dict[str, Any]) -> Result:
    """torch.compile's graph capture with AOT autograd (forward and backward), without
    inductor's code generation: what breaks in compilation is nearly always the capture."""
    import torch

    x = _inputs(channels).astype('float32')
    module = torch_module(spec, channels, options)
    eager = torch_pass(module, x)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend='aot_eager', fullgraph=True)
    try:
        result = torch_pass(compiled, x)
    except Exception as error:  # noqa: BLE001 (any failure to compile is the finding)
        return Result(f'torch compile C={channels}', False, f'{type(error).__name__}: {error}')
    return _agreement(
        f'torch compile C={channels}', result, eager, 'compiled (fullgraph, aot_eager)', 'of eager'
    )


def contract(
    name: str, options: dict[str, Any] | None = None, channels: Sequence[int] = CHANNELS
) -> Iterator[Result]:
    """Every check of attention `name` (any case) with `options`, as it runs."""
    spec = attention_spec(name)
    options = spec.checked_options(options)
    backends = [b for b in spec.backends if installed(b)]
    for missing in sorted(set(spec.backends) - set(backends)):
        yield Result(f'{missing} backend', None, f'{missing} is not installed here')
    if spec.name == 'none' or not backends:
        yield Result('modules', None, 'vanilla has none' if spec.name == 'none' else 'none here')
        return
    checks = []
    for count in channels:
        for backend in backends:
            for check, what in (
                (check_shapes, 'shape'),
                (check_parameters, 'parameters'),
                (check_gradients, 'gradients'),
            ):
                checks.append((check, f'{backend} {what} C={count}', (backend,)))
        # MACs are counted on the Gluon module where there is one (models.stats, which
        # the sweep's records follow); a PyTorch-only module declares its own.
        checks.append((check_macs, f'{backends[0]} MACs C={count}', (backends[0],)))
        if 'gluon' in backends:
            checks.append((check_hybridize, f'gluon hybridize C={count}', ()))
            if spec.fused_cpu_kernel:
                checks.append((check_fused_kernel, f'fused kernel C={count}', ()))
        if 'torch' in backends:
            checks.append((check_compile, f'torch compile C={count}', ()))
        if {'gluon', 'torch'} <= set(backends):
            checks.append((check_backends_agree, f'gluon = torch C={count}', ()))
        for check, label, backend in checks:
            yield _guarded(check, label, spec, *backend, count, options)
        checks.clear()


def _guarded(check: Callable[..., Result], label: str, *args: Any) -> Result:
    """The check's result; an exception in the module under test (a wrong shape, a graph
    that does not hybridize, a class that does not import) is that check's failure."""
    try:
        return check(*args)
    except Exception as error:  # noqa: BLE001 (the module's own failure is the finding)
        text = ' '.join(str(error).split())
        return Result(label, False, f'{type(error).__name__}: {text[:300]}')


def main(argv: Sequence[str] | None = None) -> int:
    from .registry import attention_names

    parser = argparse.ArgumentParser(
        prog='python -m models.check_attention',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        'names', nargs='*', metavar='NAME', help='attentions to check (default: every one)'
    )
    args = parser.parse_args(argv)
    from .names import UnknownNameError

    try:
        specs = [attention_spec(name) for name in args.names or attention_names()]
    except UnknownNameError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    failed = 0
    for spec in specs:
        print(f'{spec.label} ({spec.name}, {spec.origin}): {spec.paper}')
        for result in contract(spec.name):
            print('  ' + result.line(), flush=True)
            failed += result.passed is False
    print(f'{failed} checks failed' if failed else 'every check passed')
    return 1 if failed else 0


if __name__ == '__main__':
    raise SystemExit(main())
