"""FusedAdam and FusedAdamW: torch.optim.Adam and AdamW whose step runs fused kernels.

They subclass the torch optimizers, so constructor, validation errors, param groups,
state_dict layout, hooks, LR schedulers and GradScaler behave as torch's do; only
step() differs: one operator call per (device, dtype) group instead of torch's loops.
"""

import torch

from ._loader import step_param_group
from ._ops import ops

_STEP_DTYPE = torch.float32  # torch's fused and capturable layout for state["step"]


def _refuse_differentiable(name, differentiable):
    if differentiable:
        raise RuntimeError(
            f"{name} does not support differentiable=True: its step runs fused kernels "
            f"that autograd cannot differentiate through; use torch.optim.{name[5:]} "
            "with differentiable=True instead"
        )


class _TensorLists:
    """The argument lists of one operator call: tensors of one device and dtype."""

    __slots__ = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps")

    def __init__(self):
        self.params, self.grads, self.exp_avgs = [], [], []
        self.exp_avg_sqs, self.max_exp_avg_sqs, self.steps = [], [], []

    def as_args(self):
        return (self.params, self.grads, self.exp_avgs, self.exp_avg_sqs,
                self.max_exp_avg_sqs, self.steps)


def hyperparams(group):
    """The keyword arguments every Adam operator takes, from a param group."""
    beta1, beta2 = group["betas"]
    return dict(
        beta1=float(beta1),
        beta2=float(beta2),
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]),
        amsgrad=bool(group["amsgrad"]),
        maximize=bool(group["maximize"]),
        decoupled_weight_decay=bool(group["decoupled_weight_decay"]),
    )


def lr_for(group, device):
    """group["lr"] as the operators take it: a float, or a tensor on `device`."""
    lr = group["lr"]
    return _to(lr, device) if isinstance(lr, torch.Tensor) else float(lr)


class _FusedAdamStep:
    """State layout, grouping and the fused step shared by FusedAdam and FusedAdamW."""

    def _init_state(self, p, state, amsgrad):
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=_STEP_DTYPE, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            # Also when amsgrad is switched on for a param that already has moments.
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def group_tensors(self, group, grads=None):
        """Splits a param group into per-(device, dtype) lists, creating state lazily.

        `grads` is None (step each param with p.grad) or a list aligned with
        group["params"]; params whose gradient is None are skipped, their state
        untouched, exactly as torch skips them. This is the traceable twin of the
        C++ grouping in csrc/param_group_step.cpp, used under torch.compile.
        """
        amsgrad = group["amsgrad"]
        params = group["params"]
        if grads is None:
            grads = [p.grad for p in params]
        grouped = {}
        for p, grad in zip(params, grads):
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider SparseAdam instead"
                )
            state = self.state[p]
            if len(state) < (4 if amsgrad else 3):
                self._init_state(p, state, amsgrad)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            max_exp_avg_sq = state["max_exp_avg_sq"] if amsgrad else None
            if p.is_complex():
                # torch steps complex params as pairs of reals; so do the kernels.
                p, grad, exp_avg, exp_avg_sq = (torch.view_as_real(t)
                                                 for t in (p, grad, exp_avg, exp_avg_sq))
                if amsgrad:
                    max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
            key = (p.device, p.dtype)
            lists = grouped.get(key)
            if lists is None:
                lists = grouped[key] = _TensorLists()
            lists.params.append(p)
            lists.grads.append(grad)
            lists.exp_avgs.append(exp_avg)
            lists.exp_avg_sqs.append(exp_avg_sq)
            if amsgrad:
                lists.max_exp_avg_sqs.append(max_exp_avg_sq)
            lists.steps.append(state["step"])
        return grouped

    def _step_group(self, group, *, grads=None, window=False, grad_factor=None, found_inf=None):
        """Steps one param group with the fused operators.

        window=False: adam_step_, `grad_factor` is GradScaler's scale (or None).
        window=True: adam_window_step_, `grads` are accumulation buffers read as
        buffer * `grad_factor` and zeroed. Eagerly the grouping runs in C++; under
        torch.compile, which traces Python, it runs in group_tensors.
        """
        if torch.compiler.is_compiling():
            self._step_group_traced(group, grads, window, grad_factor, found_inf)
        else:
            self._step_group_eager(group, grads, window, grad_factor, found_inf)

    def _step_group_eager(self, group, grads, window, grad_factor, found_inf):
        step_param_group(group["params"], grads, self.state, self._init_state,
                         window=window, lr=group["lr"], **hyperparams(group),
                         grad_factor=grad_factor, found_inf=found_inf)

    def _step_group_traced(self, group, grads, window, grad_factor, found_inf):
        hyper = hyperparams(group)
        for (device, _), lists in self.group_tensors(group, grads).items():
            lr = lr_for(group, device)
            tensor_lr = isinstance(lr, torch.Tensor)
            factor, inf = _to(grad_factor, device), _to(found_inf, device)
            if window:
                op = ops.adam_window_step_.tensor_lr if tensor_lr else ops.adam_window_step_
                op(*lists.as_args(), grad_multiplier=factor, lr=lr, **hyper, found_inf=inf)
            else:
                op = ops.adam_step_.tensor_lr if tensor_lr else ops.adam_step_
                op(*lists.as_args(), lr=lr, **hyper, grad_scale=factor, found_inf=inf)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; `closure` re-evaluates the model, as in torch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by torch.amp.GradScaler.step, since _step_supports_amp_scaling is True.
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            self._step_group(group, grad_factor=grad_scale, found_inf=found_inf)
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # A checkpoint of a non-fused torch optimizer keeps "step" on the CPU, and in
        # float64 when that was torch's default dtype; the kernels read it as a float32
        # scalar next to the param.
        for p, state in self.state.items():
            step = state.get("step")
            if step is not None:
                state["step"] = torch.as_tensor(step, dtype=_STEP_DTYPE).reshape(()).to(p.device)


def _to(t, device):
    if t is None or t.device == device:
        return t
    return t.to(device)


class FusedAdam(_FusedAdamStep, torch.optim.Adam):
    """torch.optim.Adam with a fused step (CPU and CUDA).

    Same arguments as torch.optim.Adam. ``foreach``, ``fused`` and ``capturable`` are
    accepted and stored like torch stores them; the step is always the fused kernel.
    ``decoupled_weight_decay=True`` gives AdamW. ``differentiable=True`` is refused.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        _refuse_differentiable("FusedAdam", differentiable)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._step_supports_amp_scaling = True


class FusedAdamW(_FusedAdamStep, torch.optim.AdamW):
    """torch.optim.AdamW with a fused step (CPU and CUDA); same arguments as AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        _refuse_differentiable("FusedAdamW", differentiable)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused)
        self._step_supports_amp_scaling = True
