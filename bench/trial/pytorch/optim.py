"""The recipe's optimizers with MXNet 1.9's update rules, which PyTorch's differ from.

All three couple the weight decay into the gradient (grad + wd * weight, as MXNet
does; AdamW decouples it). Adam puts epsilon outside the bias correction
(lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)), where PyTorch's
Adam corrects v before adding epsilon. MXNet's SGD momentum carries the learning
rate inside (mom = momentum * mom - lr * grad; weight += mom), so a learning-rate
step changes the update differently from PyTorch's SGD; NAG likewise (see MXNetNAG). A
parameter's weight decay is wd times its `wd_mult` (GCT's beta: 0), like Gluon's
Parameter.wd_mult.

Fast as PyTorch's own: Adam is one fused kernel per parameter group (PyTorch's
`_fused_adam_`, given the epsilon that makes its arithmetic MXNet's), SGD and NAG a few
foreach kernels over all parameters at once; each group's state lists are gathered once,
not per parameter and step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from bench.trial.recipe import Recipe

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
# Where PyTorch has a fused Adam kernel for the parameters' device.
FUSED_ADAM_DEVICES = ('cpu', 'cuda')


def parameter_groups(net: torch.nn.Module, wd: float) -> list[dict[str, Any]]:
    """Two groups: parameters with weight decay wd, and those a module exempts from it
    (a module's `no_weight_decay` names its own, e.g. GCT's beta)."""
    exempt = set()
    for module in net.modules():
        for name in getattr(module, 'no_weight_decay', ()):
            exempt.add(id(getattr(module, name)))
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {'params': [p for p in params if id(p) not in exempt], 'weight_decay': wd},
        {'params': [p for p in params if id(p) in exempt], 'weight_decay': 0.0},
    ]
    return [group for group in groups if group['params']]


class _GroupState:
    """One group's parameters and their state tensors as lists, for the foreach and fused
    kernels; `count` is the group's update count (MXNet's per-index count, the same for
    every parameter: each is updated at every step)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], names: Sequence[str]
    ) -> None:
        states = [optimizer.state[p] for p in params]
        for state, p in zip(states, params):
            for name in names:
                if name not in state:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # A tensor on the parameter's device, as the fused kernels take it (older
            # checkpoints hold a plain number).
            step = state.get('step', 0)
            if not torch.is_tensor(step) or step.device != p.device:
                state['step'] = torch.tensor(float(step), dtype=torch.float32, device=p.device)
        self.params = list(params)
        self.lists = {name: [s[name] for s in states] for name in names}
        self.steps = [s['step'] for s in states]
        self.count = int(self.steps[0].item()) if self.steps else 0

    def advance(self) -> int:
        torch._foreach_add_(self.steps, 1)
        self.count += 1
        return self.count


class MXNetOptimizer(torch.optim.Optimizer):
    """Shared by the three: the groups' state lists, and the step over every group."""

    STATE = ()  # the per-parameter state tensors of the update rule

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        super().__init__(params, {'lr': lr, 'weight_decay': weight_decay, 'momentum': momentum})
        self._groups = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._groups = {}  # gathered again from the loaded state

    def _group_state(self, index: int, group: dict[str, Any]) -> _GroupState:
        cached = self._groups.get(index)
        if cached is None or cached.params != group['params']:
            cached = self._groups[index] = _GroupState(self, group['params'], self.STATE)
        return cached

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        for index, group in enumerate(self.param_groups):
            params = group['params']
            grads = [p.grad for p in params]
            if any(g is None for g in grads):  # not every parameter took part
                params = [p for p in params if p.grad is not None]
                if not params:
                    continue
                grads = [p.grad for p in params]
                state = _GroupState(self, params, self.STATE)
            else:
                state = self._group_state(index, group)
            self._update(group, state, grads)

    def _decayed_gradients(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        if group['weight_decay']:
            grads = torch._foreach_add(grads, params, alpha=group['weight_decay'])
        return grads

    def _decayed_momenta(
        self, group: dict[str, Any], state: _GroupState, grads: list[torch.Tensor]
    ) -> list[torch.Tensor] | None:
        """Without momentum, SGD and NAG are MXNet's plain sgd_update: that step is taken
        here and None returned. Otherwise the momenta, already times the momentum."""
        if not group['momentum']:
            torch._foreach_add_(state.params, grads, alpha=-group['lr'])
            return None
        moms = state.lists['mom']
        torch._foreach_mul_(moms, group['momentum'])
        return moms


class MXNetAdam(MXNetOptimizer):
    """MXNet's Adam. PyTorch's Adam divides by sqrt(v / (1 - beta2^t)) + eps; with eps
    replaced by eps / sqrt(1 - beta2^t) that is MXNet's sqrt(v) + eps, scaled as MXNet
    scales its step: so PyTorch's fused kernel computes MXNet's update."""

    STATE = ('mean', 'var')

    def _update(self, group: dict[str, Any], state: _GroupState, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = ADAM_BETAS
        t = state.advance()
        if all(p.device.type in FUSED_ADAM_DEVICES for p in state.params[:1]):
            torch._fused_adam_(
                state.params,
                grads,
                state.lists['mean'],
                state.lists['var'],
                [],
                state.steps,
                lr=group['lr'],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group['weight_decay'],
                eps=ADAM_EPSILON / math.sqrt(1 - beta2**t),
                amsgrad=False,
                maximize=False,
            )
            return
        grads = self._decayed_gradients(group, state.params, grads)
        means, variances = state.lists['mean'], state.lists['var']
        torch._foreach_mul_(means, beta1)
        torch._foreach_add_(means, grads, alpha=1 - beta1)
        torch._foreach_mul_(variances, beta2)
        torch._foreach_addcmul_(variances, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(variances)
        torch._foreach_add_(denominators, ADAM_EPSILON)
        step_size = group['lr'] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        torch._foreach_addcdiv_(state.params, means, denominators, value=-step_size)


class MXNetSGD(MXNetOptimizer):
    STATE = ('mom',)

    def _update(self, group: dict[str, Any], state: _GroupState, grads: list[torch.Tensor]) -> None:
        state.advance()
        grads = self._decayed_gradients(group, state.params, grads)
        moms = self._decayed_momenta(group, state, grads)
        if moms is not None:
            torch._foreach_add_(moms, grads, alpha=-group['lr'])
            torch._foreach_add_(state.params, moms)


class MXNetNAG(MXNetOptimizer):
    """MXNet 1.9's nag_mom_update as gluon.Trainer applies it: with M = momentum * mom and
    G = grad + wd * weight, weight += momentum * M - (1 + momentum) * lr * G, and
    mom = M - lr * G (the same G, from the weight before the update)."""

    STATE = ('mom',)

    def _update(self, group: dict[str, Any], state: _GroupState, grads: list[torch.Tensor]) -> None:
        state.advance()
        lr, momentum = group['lr'], group['momentum']
        grads = self._decayed_gradients(group, state.params, grads)
        moms = self._decayed_momenta(group, state, grads)
        if moms is None:
            return
        torch._foreach_add_(state.params, moms, alpha=momentum)
        torch._foreach_add_(state.params, grads, alpha=-(1 + momentum) * lr)
        torch._foreach_add_(moms, grads, alpha=-lr)


OPTIMIZER_CLASSES = {'adam': MXNetAdam, 'sgd': MXNetSGD, 'nag': MXNetNAG}


def make_optimizer(net: torch.nn.Module, recipe: Recipe) -> MXNetOptimizer:
    momentum = recipe.momentum if recipe.optimizer in ('sgd', 'nag') else 0.0
    return OPTIMIZER_CLASSES[recipe.optimizer](
        parameter_groups(net, recipe.wd), lr=recipe.lr, weight_decay=recipe.wd, momentum=momentum
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group['lr'] = lr
