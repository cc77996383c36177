"""FusedAdam and FusedAdamW: torch.optim.Adam and AdamW whose step runs fused kernels.

They subclass the torch optimizers, so constructor, validation errors, param groups,
state_dict layout, hooks, LR schedulers and GradScaler behave as torch's do; only
step() differs: one operator call per (device, dtype) group instead of torch's loops.
"""

from collections import defaultdict

import torch
from torch.optim.adam import adam as torch_adam

from ._loader import ParamGroupPlan
from ._ops import ops

if torch.distributed.is_available():
    from torch.distributed.tensor import DTensor
else:  # pragma: no cover - a torch built without distributed support
    DTensor = ()  # isinstance(x, ()) is always False

_STEP_DTYPE = torch.float32  # torch's fused and capturable layout for state["step"]
_SUPPORTED_DEVICES = ("cuda", "cpu")
_NARROW = (torch.bfloat16, torch.float16)
_STATE_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16)

# How low-precision params are written back: the group option that asks for it, the
# state key of the tensor it keeps, and the ParamWrite value of the kernels
# (csrc/adam_element_op.h). Exclusive: at most one option is on in a group.
_PARAM_WRITES = (
    ("master_weights", "master_param", 1),
    ("kahan_summation", "kahan_compensation", 2),
    ("stochastic_rounding", "stochastic_rounding_seed", 3),
)
_LOW_PRECISION_OFF = dict(master_weights=False, kahan_summation=False,
                          stochastic_rounding=False, state_dtype=None)
_LOW_PRECISION_OPTIONS = tuple(_LOW_PRECISION_OFF)


class _StateMap(defaultdict):
    """optimizer.state, a defaultdict(dict) that counts its changes.

    The eager step keeps each param's state dict from one step to the next
    (ParamGroupPlan); a change to this map (a param's state replaced or removed)
    moves the count, and the plans are rebuilt.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.changes = 0

    def __setitem__(self, key, value):
        self.changes += 1
        super().__setitem__(key, value)

    def __missing__(self, key):
        # defaultdict's own, in Python: torch.compile traces this one.
        value = self[key] = self.default_factory()
        return value

    def __delitem__(self, key):
        self.changes += 1
        super().__delitem__(key)

    def __ior__(self, other):
        self.changes += 1
        return super().__ior__(other)

    def _counted(name):
        method = getattr(defaultdict, name)

        def counted(self, *args, **kwargs):
            self.changes += 1
            return method(self, *args, **kwargs)

        counted.__name__ = name
        return counted

    pop = _counted("pop")
    popitem = _counted("popitem")
    clear = _counted("clear")
    update = _counted("update")
    setdefault = _counted("setdefault")
    del _counted


class _TensorLists:
    """The argument lists of one operator call: tensors of one device and dtype."""

    __slots__ = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps",
                 "write_states")

    def __init__(self):
        self.params, self.grads, self.exp_avgs = [], [], []
        self.exp_avg_sqs, self.max_exp_avg_sqs, self.steps = [], [], []
        self.write_states = []  # what the group's write option keeps, 16-bit params only

    def as_args(self, write):
        """The operator's list arguments; `write` is the group's ParamWrite value, which
        says whether write_states are master_params, compensations or rounding_seeds."""
        write_lists = [self.write_states if write == w else [] for _, _, w in _PARAM_WRITES]
        return (self.params, self.grads, self.exp_avgs, self.exp_avg_sqs,
                self.max_exp_avg_sqs, self.steps, *write_lists)


def _check_low_precision_options(group):
    """Validates a param group's low-precision options, as torch validates its own."""
    for option, _, _ in _PARAM_WRITES:
        if not isinstance(group[option], bool):
            raise ValueError(f"{option} must be True or False, got {group[option]!r}")
    on = [option for option, _, _ in _PARAM_WRITES if group[option]]
    if len(on) > 1:
        raise ValueError(
            f"{on[0]} and {on[1]} are exclusive ways to write low-precision params; "
            "choose one"
        )
    if group["state_dtype"] not in _STATE_DTYPES:
        raise ValueError(
            "state_dtype must be None, torch.float32, torch.bfloat16 or torch.float16, "
            f"got {group['state_dtype']!r}"
        )


def param_write(group):
    """The group's write-back option as (state key, ParamWrite value), or (None, 0)."""
    for option, key, write in _PARAM_WRITES:
        if group[option]:
            return key, write
    return None, 0


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


def _check_steppable(p):
    """Refuses a param the fused kernels cannot step, with torch's fused message, at
    the point torch's fused optimizer refuses it: when its state is created. Complex
    params, which torch's fused optimizer refuses, are stepped as pairs of reals."""
    steppable_dtype = torch.is_floating_point(p) or torch.is_complex(p)
    if not (p.device.type in _SUPPORTED_DEVICES and steppable_dtype):
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of "
            f"supported devices: {list(_SUPPORTED_DEVICES)} but {p.dtype} and {p.device.type}"
        )


class _PlanEntry:
    """A param group's ParamGroupPlan and what it was built from: the group, its
    params, the state map and that map's change count (None for a map that counts
    none). `plan` is None for a group holding DTensor params, which is stepped
    through group_tensors (their local shards are reached in Python only)."""

    __slots__ = ("group", "params", "state_map", "changes", "plan")

    def __init__(self, group, state_map, changes, plan):
        self.group, self.state_map, self.changes, self.plan = group, state_map, changes, plan
        self.params = list(group["params"]) if plan is None else None

    def is_current(self, group, state_map, changes):
        if not (changes is not None and self.group is group and self.state_map is state_map
                and self.changes == changes):
            return False
        if self.plan is not None:
            return self.plan.matches(group["params"])
        params = group["params"]
        return len(params) == len(self.params) and all(
            p is q for p, q in zip(params, self.params))


class _Window:
    """An accumulation window that GradAccumulator hands to optimizer.step():
    per param group, the buffers holding each param's window sum (None: not stepped),
    and the multiplier that normalises and clips them."""

    __slots__ = ("grads_per_group", "multiplier")

    def __init__(self, grads_per_group, multiplier):
        self.grads_per_group = grads_per_group
        self.multiplier = multiplier


class _FusedAdamStep:
    """State layout, grouping and the fused step shared by FusedAdam and FusedAdamW."""

    def _init_fused(self):
        self.defaults.update(self._low_precision_defaults)
        self._accumulator = None  # the GradAccumulator driving this optimizer, if any
        self._window = None       # the window it hands to step()
        self._adopt_state()

    def __setstate__(self, state):
        # Also how load_state_dict installs a checkpoint's state.
        super().__setstate__(state)
        self.__dict__.setdefault("_accumulator", None)
        self.__dict__.setdefault("_window", None)
        self._adopt_state()

    def _adopt_state(self):
        self.state = _StateMap(dict, self.state)
        self._plans = {}  # id(group) -> _PlanEntry
        # torch's fused optimizers take GradScaler's unscale and inf check into the
        # step; torch's differentiable implementation, which ours runs then, does not.
        self._step_supports_amp_scaling = not self._differentiable()

    def _differentiable(self):
        return any(group["differentiable"] for group in self.param_groups)

    def _init_state(self, p, group):
        """Creates or completes p's state, as torch's fused optimizer lays it out plus
        what the group's low-precision options keep, and returns it."""
        state = self.state[p]
        moments = _moment_dtype(p, group)
        if len(state) == 0:
            _check_steppable(p)
            state["step"] = torch.zeros((), dtype=_STEP_DTYPE, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=moments,
                                                memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=moments,
                                                   memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            # Also when amsgrad is switched on for a param that already has moments.
            state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=moments,
                                                       memory_format=torch.preserve_format)
        key, _ = param_write(group)
        if key is not None and p.dtype in _NARROW and key not in state:
            # Also for a state loaded from a checkpoint of torch's optimizer.
            state[key] = _new_write_state(p, key)
        return state

    def group_tensors(self, group, grads=None):
        """Splits a param group into per-(device, dtype) lists, creating state lazily.

        `grads` is None (step each param with p.grad) or a list aligned with
        group["params"]; params whose gradient is None are skipped, their state
        untouched, exactly as torch skips them. This is the traceable twin of
        ParamGroupPlan (csrc/param_group_step.cpp), used under torch.compile.

        A DTensor param (FSDP2, tensor parallel) is stepped on its local shard,
        with the local shards of its grad and state: the update is elementwise, so
        aligned shards step exactly as the whole tensor would, with no gather. Its
        state tensors stay DTensors, laid out as torch.optim.Adam lays them out.
        """
        amsgrad = group["amsgrad"]
        write_key, _ = param_write(group)
        params = group["params"]
        if grads is None:
            grads = [p.grad for p in params]
        grouped = {}
        for i, (p, grad) in enumerate(zip(params, grads)):
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider SparseAdam instead"
                )
            state = self.state[p]
            writes = write_key is not None and p.dtype in _NARROW
            if (len(state) < (4 if amsgrad else 3) or (writes and write_key not in state)):
                self._init_state(p, group)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            max_exp_avg_sq = state["max_exp_avg_sq"] if amsgrad else None
            write_state = state[write_key] if writes else None
            if isinstance(p, DTensor):
                sharded = p
                p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, write_state = [
                    _local_shard(sharded, i, t, what) for t, what in (
                        (sharded, "param"), (grad, "grad"), (exp_avg, "exp_avg"),
                        (exp_avg_sq, "exp_avg_sq"), (max_exp_avg_sq, "max_exp_avg_sq"),
                        (write_state, write_key))]
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
            if writes:
                lists.write_states.append(write_state)
        return grouped

    def _step_group(self, group, *, grads=None, window=False, grad_factor=None, found_inf=None):
        """Steps one param group with the fused operators.

        window=False: adam_step_, `grad_factor` is GradScaler's scale (or None).
        window=True: adam_window_step_, `grads` are accumulation buffers read as
        buffer * `grad_factor` and zeroed. Eagerly the grouping runs in C++; under
        torch.compile, which traces Python, it runs in group_tensors.
        """
        if not torch.compiler.is_compiling():
            self._step_group_eager(group, grads, window, grad_factor, found_inf)
        elif any(isinstance(p, DTensor) for p in group["params"]):
            # torch 2.14 fails to compile an in-place step through the local shards
            # of DTensor inputs (a guard error in AOTAutograd's subclass handling), so
            # a group of DTensor params leaves the graph and steps eagerly.
            self._step_group_untraced(group, grads, window, grad_factor, found_inf)
        else:
            self._step_group_traced(group, grads, window, grad_factor, found_inf)

    def _plan_entry(self, group):
        """The group's _PlanEntry, rebuilt when the group's params or the optimizer's
        state map changed since it was made."""
        state = self.state
        # A state map set by the user (not a _StateMap) counts no changes: the plan
        # is then made afresh for every step.
        changes = state.changes if isinstance(state, _StateMap) else None
        entry = self._plans.get(id(group))
        if entry is not None and entry.is_current(group, state, changes):
            return entry
        params = group["params"]
        plan = None
        if not any(isinstance(p, DTensor) for p in params):
            states = [state[p] if p in state else None for p in params]
            plan = ParamGroupPlan(params, states, state,
                                  lambda p, group=group: self._init_state(p, group))
        entry = self._plans[id(group)] = _PlanEntry(group, state, changes, plan)
        return entry

    def _step_group_eager(self, group, grads, window, grad_factor, found_inf):
        entry = self._plan_entry(group)
        if entry.plan is None:
            self._step_group_traced(group, grads, window, grad_factor, found_inf)
            return
        write_key, write = param_write(group)
        entry.plan.step(grads, window=window, lr=group["lr"], **hyperparams(group),
                        write_key=write_key, param_write=write, grad_factor=grad_factor,
                        found_inf=found_inf)
        # The states the plan created, for params stepped the first time, are
        # already in the plan.
        if entry.changes is not None:
            entry.changes = self.state.changes

    _step_group_untraced = torch.compiler.disable(_step_group_eager)

    def _step_differentiable(self):
        """torch's differentiable Adam, through its functional form, on this
        optimizer's state (the layout of torch's fused optimizer)."""
        for group in self.param_groups:
            params, grads = [], []
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("Adam does not support sparse gradients, "
                                           "please consider SparseAdam instead")
                    params.append(p)
                    grads.append(p.grad)
            amsgrad = group["amsgrad"]
            states = [self._init_state(p, group) for p in params]
            beta1, beta2 = group["betas"]
            torch_adam(
                params, grads, [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                [s["step"] for s in states],
                foreach=False, capturable=group["capturable"],
                differentiable=group["differentiable"], fused=False,
                has_complex=any(torch.is_complex(p) for p in params),
                decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=amsgrad,
                beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=group["maximize"])

    def _step_group_traced(self, group, grads, window, grad_factor, found_inf):
        """The step through group_tensors: under torch.compile, and eagerly for a
        group of DTensor params (FSDP2, tensor parallel)."""
        hyper = hyperparams(group)
        _, write = param_write(group)
        for (device, _), lists in self.group_tensors(group, grads).items():
            lr = lr_for(group, device)
            tensor_lr = isinstance(lr, torch.Tensor)
            factor, inf = _to(grad_factor, device), _to(found_inf, device)
            if window:
                op = ops.adam_window_step_.tensor_lr if tensor_lr else ops.adam_window_step_
                op(*lists.as_args(write), grad_multiplier=factor, lr=lr, **hyper, found_inf=inf)
            else:
                op = ops.adam_step_.tensor_lr if tensor_lr else ops.adam_step_
                op(*lists.as_args(write), lr=lr, **hyper, grad_scale=factor, found_inf=inf)

    def _check_window_handoff(self, grad_scale):
        """Refuses a step that would step part of a GradAccumulator's window, or
        one driven by torch.amp.GradScaler: the accumulator takes the scaler itself."""
        accumulator = self._accumulator
        if accumulator is None:
            return
        if grad_scale is not None:
            # GradScaler.step deletes these only after a step that returns.
            del self.grad_scale, self.found_inf
            raise RuntimeError(
                "scaler.step() on an optimizer driven by a GradAccumulator: pass the "
                "GradScaler to the accumulator (GradAccumulator(..., scaler=scaler)), which "
                "unscales, checks for infs, steps and updates the scaler at each window end"
            )
        if self._window is None and accumulator.micro_step > 0:
            raise RuntimeError(
                f"optimizer.step() called in the middle of a GradAccumulator window "
                f"({accumulator.micro_step} of {accumulator.steps} micro-batches): the "
                "accumulator steps the optimizer when the window is complete; call "
                "acc.step() (or acc.flush() for a partial window)"
            )

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; `closure` re-evaluates the model, as in torch.

        With differentiable=True this is torch's own differentiable step (the fused
        kernels are not differentiable)."""
        # Set by torch.amp.GradScaler.step, since _step_supports_amp_scaling is True.
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        self._check_window_handoff(grad_scale)
        if found_inf is not None and not isinstance(found_inf, torch.Tensor):
            # GradScaler's sum over no gradients at all is the int 0.
            found_inf = torch.tensor(float(found_inf))
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._differentiable():
            with torch.enable_grad():
                self._step_differentiable()
            return loss
        window = self._window
        if window is not None:
            for group, grads in zip(self.param_groups, window.grads_per_group):
                self._step_group(group, grads=grads, window=True,
                                 grad_factor=window.multiplier)
            return loss
        for group in self.param_groups:
            self._step_group(group, grad_factor=grad_scale, found_inf=found_inf)
        return loss

    def add_param_group(self, param_group):
        for option in _LOW_PRECISION_OPTIONS:
            param_group.setdefault(option, self._low_precision_defaults[option])
        _check_low_precision_options(param_group)
        if param_group.get("differentiable", self.defaults["differentiable"]) and (
                param_write(param_group)[0] is not None or param_group["state_dtype"] is not None):
            raise ValueError(
                "differentiable=True steps with torch's own Adam, which keeps no master "
                "weights, compensation or other state dtype; turn those options off"
            )
        super().add_param_group(param_group)

    def state_dict(self):
        # Options that are off are left out: a checkpoint of an optimizer that uses
        # none is then exactly torch's.
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            for option, off in _LOW_PRECISION_OFF.items():
                if option in group and group[option] is off:
                    del group[option]
        return state_dict

    def load_state_dict(self, state_dict):
        # A checkpoint of torch's optimizer, or of ours with an option off, does not
        # name every low-precision option: the groups keep this optimizer's. torch casts
        # every saved state tensor to its param's dtype, which would round float32
        # masters and moments of bfloat16 params: those are taken from the checkpoint
        # again, in the dtypes the options ask for.
        options = [{option: group[option] for option in _LOW_PRECISION_OPTIONS}
                   for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, group_options in zip(self.param_groups, options):
            for option, value in group_options.items():
                group.setdefault(option, value)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None or p not in self.state:
                continue
            state = self.state[p]
            for key, value in saved.items():
                dtype = _saved_state_dtype(p, group, key)
                if dtype is not None and isinstance(value, torch.Tensor):
                    state[key] = value.to(device=p.device, dtype=dtype)
            self._init_state(p, group)
        # A checkpoint of a non-fused torch optimizer keeps "step" on the CPU, and in
        # float64 when that was torch's default dtype; the kernels read it as a float32
        # scalar next to the param. Keys that are not params (a load_state_dict hook
        # may write them, as torch allows) are left as they are.
        for p, state in self.state.items():
            if not isinstance(p, torch.Tensor) or not isinstance(state, dict):
                continue
            step = state.get("step")
            if step is not None:
                state["step"] = torch.as_tensor(step, dtype=_STEP_DTYPE).reshape(()).to(p.device)


def _moment_dtype(p, group):
    """The dtype of p's exp_avg, exp_avg_sq and max_exp_avg_sq in this group."""
    state_dtype = group["state_dtype"]
    if state_dtype is None:
        return torch.float32 if group["master_weights"] and p.dtype in _NARROW else p.dtype
    if not (p.dtype == torch.float32 or p.dtype in _NARROW):
        raise ValueError(
            f"state_dtype={state_dtype} is for float32, bfloat16 and float16 params; a "
            f"{p.dtype} param keeps its moments in its own dtype (use a separate param "
            "group with state_dtype=None)"
        )
    return state_dtype


def _new_write_state(p, key):
    """The state tensor a low-precision option keeps for p, made from p."""
    if key == "master_param":
        return torch.empty_like(p, dtype=torch.float32,
                                memory_format=torch.preserve_format).copy_(p)
    if key == "kahan_compensation":
        return torch.zeros_like(p, memory_format=torch.preserve_format)
    if p.dtype != torch.bfloat16:
        raise ValueError(
            f"stochastic_rounding is for bfloat16 params, got a {p.dtype} param; use "
            "master_weights or kahan_summation for it"
        )
    # Drawn from torch's default generator: torch.manual_seed makes runs repeat, and
    # the seed is state, so a resumed run continues the same stream.
    seed = torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)
    return seed.to(p.device)


def _saved_state_dtype(p, group, key):
    """The dtype a checkpoint's state[key] of p is loaded in (None: as torch loads it)."""
    if key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        return _moment_dtype(p, group) if p.is_floating_point() else None
    return {"master_param": torch.float32, "kahan_compensation": p.dtype,
            "stochastic_rounding_seed": torch.int64}.get(key)


def _local_shard(param, index, t, what):
    """The local shard of `t`, which the step of DTensor params[index] reads with
    the param's own shard. A DTensor must be laid out as the param is (same mesh,
    same placements), or its shard would not be the param's elements; a plain
    tensor (a GradAccumulator buffer, a 0-d seed) is already local."""
    if not isinstance(t, DTensor):
        return t
    if t is not param and (t.device_mesh != param.device_mesh
                           or t.placements != param.placements):
        raise ValueError(
            f"{what} of params[{index}] is a DTensor placed as {t.placements} on "
            f"{t.device_mesh}, expected the param's placements {param.placements} on "
            f"{param.device_mesh}"
        )
    return t.to_local()


def _to(t, device):
    if t is None or t.device == device:
        return t
    return t.to(device)


class FusedAdam(_FusedAdamStep, torch.optim.Adam):
    """torch.optim.Adam with a fused step (CPU and CUDA).

    Same arguments as torch.optim.Adam. ``foreach``, ``fused`` and ``capturable`` are
    accepted and stored like torch stores them; the step is the fused kernel.
    ``decoupled_weight_decay=True`` gives AdamW. With ``differentiable=True`` the
    step is torch.optim.Adam's own differentiable implementation.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 master_weights=False, kahan_summation=False, stochastic_rounding=False,
                 state_dtype=None):
        self._low_precision_defaults = dict(
            master_weights=master_weights, kahan_summation=kahan_summation,
            stochastic_rounding=stochastic_rounding, state_dtype=state_dtype)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._init_fused()


class FusedAdamW(_FusedAdamStep, torch.optim.AdamW):
    """torch.optim.AdamW with a fused step (CPU and CUDA); same arguments as AdamW.
    With ``differentiable=True`` the step is torch.optim.AdamW's own."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, master_weights=False,
                 kahan_summation=False, stochastic_rounding=False, state_dtype=None):
        self._low_precision_defaults = dict(
            master_weights=master_weights, kahan_summation=kahan_summation,
            stochastic_rounding=stochastic_rounding, state_dtype=state_dtype)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused)
        self._init_fused()
