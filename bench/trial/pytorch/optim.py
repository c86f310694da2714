"""The recipe's optimizers with MXNet 1.9's update rules, which PyTorch's differ from.

All three couple the weight decay into the gradient (grad + wd * weight, as MXNet
does; AdamW decouples it). Adam puts epsilon outside the bias correction
(lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)), where PyTorch's
Adam corrects v before adding epsilon. MXNet's SGD momentum carries the learning
rate inside (mom = momentum * mom - lr * grad; weight += mom), so a learning-rate
step changes the update differently from PyTorch's SGD; NAG likewise (see MXNetNAG). A parameter's weight
decay is wd times its `wd_mult` (GCT's beta: 0), like Gluon's Parameter.wd_mult.
"""
import math

import torch

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


def parameter_groups(net, wd):
    """Two groups: parameters with weight decay wd, and those a module exempts from it
    (a module's `no_weight_decay` names its own, e.g. GCT's beta)."""
    exempt = set()
    for module in net.modules():
        for name in getattr(module, 'no_weight_decay', ()):
            exempt.add(id(getattr(module, name)))
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if id(p) not in exempt], 'weight_decay': wd},
              {'params': [p for p in params if id(p) in exempt], 'weight_decay': 0.0}]
    return [group for group in groups if group['params']]


class MXNetOptimizer(torch.optim.Optimizer):
    """Shared by the three: one update count per parameter (MXNet's per-index count)."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.0):
        super().__init__(params, {'lr': lr, 'weight_decay': weight_decay,
                                  'momentum': momentum})

    def _decayed_gradients(self, group, params):
        grads = [p.grad for p in params]
        if group['weight_decay']:
            grads = torch._foreach_add(grads, params, alpha=group['weight_decay'])
        return grads

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if params:
                self._update(group, params, self._decayed_gradients(group, params))

    def _decayed_momenta(self, group, params, grads):
        """Without momentum, SGD and NAG are MXNet's plain sgd_update: that step is taken
        here and None returned. Otherwise the momenta, already times the momentum."""
        if not group['momentum']:
            torch._foreach_add_(params, grads, alpha=-group['lr'])
            return None
        moms = [s['mom'] for s in self._states(params, 'mom')]
        torch._foreach_mul_(moms, group['momentum'])
        return moms

    def _states(self, params, *names):
        states = [self.state[p] for p in params]
        for state, p in zip(states, params):
            if not state:
                state['step'] = 0
                for name in names:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state['step'] += 1
        return states


class MXNetAdam(MXNetOptimizer):
    def _update(self, group, params, grads):
        beta1, beta2 = ADAM_BETAS
        states = self._states(params, 'mean', 'var')
        means = [s['mean'] for s in states]
        variances = [s['var'] for s in states]
        torch._foreach_mul_(means, beta1)
        torch._foreach_add_(means, grads, alpha=1 - beta1)
        torch._foreach_mul_(variances, beta2)
        torch._foreach_addcmul_(variances, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(variances)
        torch._foreach_add_(denominators, ADAM_EPSILON)
        # Every parameter is updated at every step, so their counts agree.
        t = states[0]['step']
        step_size = group['lr'] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        torch._foreach_addcdiv_(params, means, denominators, value=-step_size)


class MXNetSGD(MXNetOptimizer):
    def _update(self, group, params, grads):
        moms = self._decayed_momenta(group, params, grads)
        if moms is not None:
            torch._foreach_add_(moms, grads, alpha=-group['lr'])
            torch._foreach_add_(params, moms)


class MXNetNAG(MXNetOptimizer):
    """MXNet 1.9's nag_mom_update as gluon.Trainer applies it: with M = momentum * mom and
    G = grad + wd * weight, weight += momentum * M - (1 + momentum) * lr * G, and
    mom = M - lr * G (the same G, from the weight before the update)."""

    def _update(self, group, params, grads):
        lr, momentum = group['lr'], group['momentum']
        moms = self._decayed_momenta(group, params, grads)
        if moms is None:
            return
        torch._foreach_add_(params, moms, alpha=momentum)
        torch._foreach_add_(params, grads, alpha=-(1 + momentum) * lr)
        torch._foreach_add_(moms, grads, alpha=-lr)


OPTIMIZER_CLASSES = {'adam': MXNetAdam, 'sgd': MXNetSGD, 'nag': MXNetNAG}


def make_optimizer(net, recipe):
    momentum = recipe.momentum if recipe.optimizer in ('sgd', 'nag') else 0.0
    return OPTIMIZER_CLASSES[recipe.optimizer](parameter_groups(net, recipe.wd), lr=recipe.lr,
                                               weight_decay=recipe.wd, momentum=momentum)


def set_learning_rate(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr
