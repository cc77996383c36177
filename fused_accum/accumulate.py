"""GradAccumulator: gradient accumulation over micro-batches ending in one fused step.

Memory: fp32/fp64 params accumulate in place in ``p.grad`` (autograd's own sum, no
extra memory). bf16/fp16 params accumulate into one contiguous fp32 buffer per device
(per-param views): a post-accumulate-grad hook folds each micro-batch's grad in and
frees it, so a low-precision gradient never holds more than one micro-batch.

Arithmetic: losses are never divided. The window normalisation (1/N for mean losses,
1/total weight for weighted ones) and the clipping coefficient form one 0-d
``grad_multiplier`` that the step kernel applies while it reads the buffers, and the
same kernel zeroes the buffers. A window end is therefore one norm pass
(``sum_of_squares``) plus one step pass, with no separate unscale, clip or zero_grad.

A window whose gradient norm is not finite is discarded: the multiplier becomes
non-finite, the kernel leaves params and optimizer state untouched, zeroes the
buffers, and ``step()`` returns False.

DDP: with only fp32/fp64 params, DDP stays out of all but the last micro-batch
(``no_sync``) and reduces the window sum left in ``p.grad``. With any bf16/fp16 param
the per-micro-batch grads leave ``p.grad``, so DDP would reduce only the last one:
DDP is kept out of every micro-batch and the accumulator all-reduces its buffers
itself, once per window (one call per flat buffer). Every rank must feed the same
number of micro-batches per window and call flush() together, as DDP itself requires.

FSDP2 (``fully_shard``): params and grads are DTensors and each rank holds shards.
FSDP2's gradient sync is off for all but the window's last micro-batch, so it
reduce-scatters (and averages) the window sum once; with
``reduce_scatter_every_micro_batch=True`` it reduce-scatters every micro-batch and adds
the sharded grads up (float32 params in ``p.grad``; bf16/fp16 ones, whose sharded grads
FSDP2 hands to the post-accumulate-grad hooks, into the buffers, sized as the local
shards). The window norm sums each rank's local sum of squares, a shard replicated on k
ranks weighted 1/k, in one all-reduce over the params' mesh. A partial window's last
micro-batch must run under ``accumulate(model, last=True)``: FSDP2 holds unsynced grads
where no public API reaches them.

The window end goes through the optimizer's public step(): the accumulator hands it
the window (buffers and multiplier), so step hooks, profilers and LR schedulers see
one ordinary step per window. A step() of the optimizer's own in the middle of a
window is refused.

fp16 training: ``GradAccumulator(..., scaler=GradScaler(...))`` replaces torch's
``scaler.scale(loss).backward()`` ... ``scaler.unscale_(opt)``, ``clip_grad_norm_``,
``scaler.step(opt)``, ``scaler.update()``. backward() scales each loss, so the buffers
(and fp32 params' ``p.grad``) hold scaled gradients; the window step folds 1/scale into
the one multiplier, ``grad_norm`` and clipping see the unscaled gradient, a window with
an inf or nan anywhere is skipped, and the scaler is updated once per window end as
``scaler.update()`` would (backoff after a skipped window, growth after
``growth_interval`` clean ones). Do not call the scaler's unscale_, step (refused) or
update yourself. A disabled scaler is the same as none. Losses are not divided here
either: a mean-loss micro-batch's scaled gradient is N times that of torch's recipe
``scaler.scale(loss / N)``, so in float16 it overflows at an N times smaller scale,
and the scaler settles about N times lower than in that recipe. ``state_dict()`` does not hold
the scaler: save and load ``scaler.state_dict()`` alongside it, as with torch (a window
in progress holds gradients scaled by the scaler's current scale).
"""

import contextlib
import math
import operator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ._ops import ops
from .optim import DTensor, _FusedAdamStep, _Window

if dist.is_available():
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import Partial
else:  # pragma: no cover - a torch built without distributed support
    FSDPModule = Partial = ()  # isinstance(x, ()) is always False

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_MEAN, _WEIGHTED = "mean", "weighted"


class GradAccumulator:
    """Accumulates ``steps`` micro-batches, then steps a FusedAdam/FusedAdamW once.

    ``max_grad_norm=None`` disables clipping; otherwise the normalised window gradient
    is clipped exactly as ``torch.nn.utils.clip_grad_norm_`` would clip it. Grads of
    the optimizer's params should be None or zero when the accumulator is created.
    ``scaler``: a ``torch.amp.GradScaler`` for fp16 training (see the module docstring),
    or None. ``reduce_scatter_every_micro_batch``: for FSDP2 models (see the module
    docstring), reduce-scatter every micro-batch's gradient instead of only the
    window sum, so that no rank holds an unsharded gradient between micro-batches.

    Each param must be listed once. Params appended later with
    ``optimizer.add_param_group``, and params of the optimizer that were frozen
    (``requires_grad=False``) and are unfrozen, join at the accumulator's next call,
    also in the middle of a window: a gradient they already hold counts toward it.
    """

    def __init__(self, optimizer, steps, max_grad_norm=None, scaler=None, *,
                 reduce_scatter_every_micro_batch=False):
        if not isinstance(optimizer, _FusedAdamStep):
            raise TypeError(
                "GradAccumulator needs a fused_accum.FusedAdam or FusedAdamW optimizer, "
                f"got {type(optimizer).__name__}"
            )
        if optimizer._differentiable():
            raise ValueError(
                "GradAccumulator needs an optimizer with differentiable=False: its window "
                "step runs the fused kernels, which autograd cannot differentiate through"
            )
        if optimizer._accumulator is not None:
            raise ValueError(
                "this optimizer is already driven by a GradAccumulator; call remove() on "
                "that one first"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if max_grad_norm is not None and not float(max_grad_norm) > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        self.optimizer = optimizer
        self.steps = steps
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.grad_norm = None
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.reduce_scatter_every_micro_batch = bool(reduce_scatter_every_micro_batch)
        _check_each_param_once(optimizer.param_groups)
        self._params, self._index = [], {}
        self._flats, self._buffers, self._hooks = {}, {}, []
        self._unhooked = {}  # params that did not require grad yet (a dict: ordered)
        self._removed = False
        self._reset_window()
        self._take_params(_params_of(optimizer), join_window=False)
        optimizer._accumulator = self

    # ----------------------------------------------------------------- micro-batches
    @contextlib.contextmanager
    def accumulate(self, model, last=False):
        """One micro-batch of `model`; for DDP and FSDP2, decides whether they reduce
        its gradient. `last=True` says that this micro-batch ends a partial window
        (end of data; flush() follows), so that DDP or FSDP2 reduces it as they
        reduce the last micro-batch of a full window."""
        self._ready("accumulate")
        self._check_model(model)
        ends_window = last or self.micro_step == self.steps - 1
        if isinstance(model, FSDPModule):
            self._fsdp_mesh = _mesh_of(self._params)
            if self._fsdp_mesh is None:
                raise ValueError("an FSDP2 model's parameters must be DTensors; the "
                                 "optimizer holds none")
            synced = self.reduce_scatter_every_micro_batch or ends_window
            model.set_requires_gradient_sync(synced)
            self._in_synced_context = synced
            try:
                yield self
            finally:
                self._in_synced_context = False
            return
        if not isinstance(model, DistributedDataParallel):
            yield self
            return
        self._ddp = model
        ddp_reduces = not self._flats and ends_window
        with contextlib.nullcontext() if ddp_reduces else model.no_sync():
            self._in_synced_context = ddp_reduces
            try:
                yield self
            finally:
                self._in_synced_context = False

    def backward(self, loss, weight=None):
        """loss.backward(), unscaled: the mean loss of a micro-batch, or with
        `weight` a summed loss and what it sums over (e.g. its token count). With a
        scaler, scaler.scale(loss).backward()."""
        self._ready("backward")
        if self.micro_step >= self.steps:
            raise RuntimeError(
                f"the window of {self.steps} micro-batches is full: call step() "
                "before the next backward"
            )
        mode = _MEAN if weight is None else _WEIGHTED
        if weight is not None:
            weight = float(weight)
            if not weight > 0 or math.isinf(weight):
                raise ValueError(f"weight must be a positive finite number, got {weight}")
        if self._mode not in (None, mode):
            raise ValueError(
                "cannot mix backward(loss) (mean losses) and backward(loss, weight=...) "
                "(weighted losses) in one accumulation window"
            )
        if self._scaler is not None:
            loss = self._scaler.scale(loss)
        loss.backward()
        self._mode = mode
        self._weight_total += weight or 0.0
        self._window_synced = self._in_synced_context
        self.micro_step += 1

    def step(self):
        """Steps when the window is complete; True when the optimizer stepped. False
        while the window is filling, and for a discarded (non-finite) window."""
        self._ready("step")
        if self.micro_step == 0:
            raise RuntimeError("step() called before any backward(): the window is empty")
        if self.micro_step < self.steps:
            return False
        return self._finish_window()

    def flush(self):
        """Steps on a partial window (end of data), normalised by the micro-batches
        or weight it holds; False when it is empty or its norm is not finite."""
        self._ready("flush")
        if self.micro_step == 0:
            return False
        return self._finish_window()

    def remove(self):
        """Removes the gradient hooks, frees the buffers and hands the optimizer back
        to plain use (or to a new GradAccumulator). A window in progress is dropped:
        call flush() first to step on it. fp32/fp64 params keep their window sums in
        ``p.grad``. Every later call of this accumulator raises; remove() itself may
        be called again."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._flats, self._buffers = {}, {}
        self._reset_window()
        self._removed = True
        if self.optimizer._accumulator is self:
            self.optimizer._accumulator = None

    # ------------------------------------------------------------------ window end
    @torch.no_grad()
    def _finish_window(self):
        grads = self._window_grads()
        already_averaged_over = 1  # DDP and FSDP2 divide by the world size when they reduce
        world = 1
        if self._fsdp_mesh is not None:
            if not self._window_synced:
                raise RuntimeError(
                    "the window's last micro-batch ran without FSDP2 gradient sync, so FSDP2 "
                    "still holds its gradients unreduced: run the last micro-batch of a "
                    "partial window under acc.accumulate(model, last=True)"
                )
            # FSDP2 averages over the ranks of the params' mesh. With tensor parallel
            # that mesh holds more ranks than FSDP2 averages over, but the ranks of
            # one data shard see the same weights, so the weighted normalisation
            # below (world / global weight) is still right.
            world = already_averaged_over = self._fsdp_mesh.size()
        elif self._ddp is not None:
            group = self._ddp.process_group
            world = dist.get_world_size(group)
            if self._window_synced:
                already_averaged_over = world
            else:
                for t in list(self._flats.values()) + [
                        g for p, g in zip(self._params, grads)
                        if g is not None and p not in self._buffers]:
                    dist.all_reduce(t, group=group)
        # Window normalisation relative to the summed gradient of all processes.
        if self._mode == _WEIGHTED:
            total = self._global_weight(world)
            scale = already_averaged_over / total
        else:
            scale = already_averaged_over / (self.micro_step * world)
        # With a scaler, a second host sync: its scale and growth tracker.
        scaler_state = None if self._scaler is None else self._scaler.state_dict()
        multiplier = self._multiplier(grads, scale, scaler_state)
        # The one host sync per window: step() must report whether the window counted.
        finite = bool(torch.isfinite(self.grad_norm))
        grads_per_group, start = [], 0
        for group in self.optimizer.param_groups:
            end = start + len(group["params"])
            grads_per_group.append(grads[start:end])
            start = end
        self.optimizer._window = _Window(grads_per_group, multiplier)
        try:
            self.optimizer.step()
        finally:
            self.optimizer._window = None
        self._reset_window()
        if scaler_state is not None:
            # scaler.update() after scaler.step(opt): the window's inf check is the
            # norm's (an inf or nan in any grad makes it non-finite).
            self._scaler.load_state_dict(_updated_scaler_state(scaler_state, not finite))
        return finite

    def _multiplier(self, grads, scale, scaler_state=None):
        """scale * clip_coef (and 1/loss scale) as a 0-d tensor (non-finite when the
        norm is, which makes the kernel discard the window). Sets self.grad_norm, the
        norm of the normalised, unscaled gradient. Float64 when any grad is float64,
        as clip_grad_norm_ reduces a float64 model, else float32."""
        sumsq = self._global_sum_of_squares(grads)
        if scaler_state is not None:
            # GradScaler.unscale_'s inv_scale, computed as torch computes it: the
            # reciprocal of the float32 scale in float64, rounded to float32. torch's
            # recipe multiplies every grad by it (rounding to the grad's dtype), then
            # by the clip coefficient (rounding again), with the 1/N of mean losses in
            # the loss. Here normalisation * inv_scale * clip coefficient is one
            # multiplier in the multiplier's dtype, and each element is multiplied
            # once: the same bits as torch's when the scale and N are powers of two
            # (GradScaler's default factors keep the scale one), else the gradient may
            # differ in its last bit. The norm is the scaled buffers' times the same
            # factor, exact for a power-of-two scale. A sum of squares that overflows
            # float32 (a scaled norm above 1.8e19) counts as an inf.
            inv_scale = torch.tensor(scaler_state["scale"], dtype=torch.float64)
            inv_scale = inv_scale.reciprocal().float()
            scale = inv_scale.to(dtype=sumsq.dtype, device=sumsq.device) * scale
        total_norm = sumsq.sqrt() * scale
        self.grad_norm = total_norm
        if self.max_grad_norm is None:
            # 1 where the norm is finite, nan otherwise: the non-finite window is skipped.
            coef = total_norm * 0 + 1
        else:
            # Exactly torch.nn.utils.clip_grad_norm_'s coefficient.
            coef = torch.clamp(self.max_grad_norm / (total_norm + 1e-6), max=1.0)
        return coef * scale

    def _global_sum_of_squares(self, grads):
        """The sum of squares of the whole window gradient, every shard counted once.

        Under FSDP2 or tensor parallel each rank holds shards (DTensor local tensors):
        each rank sums its own, weighing a shard held by k ranks (replicated over k)
        by 1/k, and one all-reduce over the mesh adds the ranks' sums. A plain
        param beside DTensor ones is replicated on every rank of the mesh."""
        mesh = self._fsdp_mesh or _mesh_of(self._params)
        by_key = {}
        for i, (p, g) in enumerate(zip(self._params, grads)):
            if g is None:
                continue
            copies = 1 if mesh is None else _copies(p, i, mesh)
            g = _local(g)
            # |z|^2 = re^2 + im^2: a complex grad's squares are its real view's, as
            # clip_grad_norm_'s vector_norm of a complex tensor is.
            g = torch.view_as_real(g) if g.is_complex() else g
            by_key.setdefault((g.device, copies), []).append(g)
        devices = [device for device, _ in by_key] or [self._params[0].device]
        sumsq = torch.zeros((), dtype=torch.float32, device=devices[0])
        for (_, copies), tensors in by_key.items():
            part = ops.sum_of_squares(tensors).to(devices[0])
            sumsq = sumsq + (part if copies == 1 else part / copies)
        if mesh is not None:
            _all_reduce_over_mesh(sumsq, mesh)
        return sumsq

    def _global_weight(self, world):
        if world == 1:
            return self._weight_total
        t = torch.tensor(self._weight_total, dtype=torch.float64, device=self._params[0].device)
        if self._fsdp_mesh is not None:
            _all_reduce_over_mesh(t, self._fsdp_mesh)
        else:
            dist.all_reduce(t, group=self._ddp.process_group)
        return t.item()

    def _window_grads(self):
        """Aligned with the optimizer's params, group after group: the tensor holding
        each param's window sum, or None for a param the window does not step (one that
        received no gradient: torch skips a param whose grad is None). Under DDP and
        FSDP2 every param with a gradient is stepped, as they make grads agree across
        ranks (FSDP2 sets sharded grads after the last micro-batch only)."""
        stepped_all = self._ddp is not None or self._fsdp_mesh is not None
        return [self._buffers.get(p, p.grad) if stepped_all or i in self._touched else None
                for i, p in enumerate(self._params)]

    def _reset_window(self):
        self.micro_step = 0
        self._mode = None
        self._weight_total = 0.0
        self._touched = set()
        self._ddp = None
        self._fsdp_mesh = None  # the params' DeviceMesh while an FSDP2 window fills
        self._in_synced_context = False
        self._window_synced = False

    # ------------------------------------------------------------ params followed
    def _ready(self, call):
        """Called first by every public method: refuses a removed accumulator, and
        follows params added to the optimizer or unfrozen since the last call."""
        if self._removed:
            raise RuntimeError(
                f"GradAccumulator.{call}() after remove(): the accumulator no longer "
                "follows its optimizer's gradients; make a new GradAccumulator"
            )
        self._follow_optimizer()

    def _follow_optimizer(self):
        """Takes in params appended to the optimizer since the last call
        (add_param_group) and params unfrozen since; refuses any other change to the
        optimizer's params."""
        params = _params_of(self.optimizer)
        if len(params) == len(self._params) and all(map(operator.is_, params, self._params)):
            if self._unhooked:
                self._hook_trainable()
            return
        for i, (p, q) in enumerate(zip(params, self._params)):
            if p is not q:
                raise RuntimeError(
                    "the optimizer's params changed since the GradAccumulator was made: "
                    f"{_param_name(self.optimizer.param_groups, i)} is not the param it "
                    "holds there. Only params appended with optimizer.add_param_group are "
                    "followed; to change others, call remove() and make a new "
                    "GradAccumulator"
                )
        if len(params) < len(self._params):
            raise RuntimeError(
                "the optimizer's params changed since the GradAccumulator was made: it "
                f"holds {len(params)} params, the accumulator {len(self._params)}. Only "
                "params appended with optimizer.add_param_group are followed; to change "
                "others, call remove() and make a new GradAccumulator"
            )
        _check_each_param_once(self.optimizer.param_groups)
        self._take_params(params[len(self._params):])

    def _take_params(self, new, join_window=True):
        """Appends `new` to the accumulator's params and hooks the trainable ones."""
        self._params = self._params + new
        self._index.update((p, i) for i, p in enumerate(self._params))
        self._unhooked.update(dict.fromkeys(new))
        self._hook_trainable(join_window)

    @torch.no_grad()
    def _hook_trainable(self, join_window=True):
        """A hook, and for low-precision params a buffer, for each param that requires
        grad and has none yet: one just added to the optimizer, or one frozen
        (requires_grad=False) until now. The buffers are laid out again over all
        hooked params in the optimizer's order, as a new accumulator lays them out (so
        its state_dict fits either), the window in progress copied over. With
        `join_window`, a gradient such a param already holds (from a backward before
        it was hooked) counts toward the window."""
        ready = [p for p in self._unhooked if p.requires_grad]
        if not ready:
            return
        for p in ready:
            del self._unhooked[p]
        if any(p.dtype in _LOW_PRECISION for p in ready):
            flats, buffers = _allocate_buffers(
                [p for p in self._params if p not in self._unhooked])
            for p, old in self._buffers.items():
                buffers[p].copy_(old)
            self._flats, self._buffers = flats, buffers
        self._hooks += [p.register_post_accumulate_grad_hook(self._on_grad) for p in ready]
        for p in ready:
            if join_window and p.grad is not None:
                self._on_grad(p)

    # ---------------------------------------------------------------- hooks, checks
    @torch.no_grad()
    def _on_grad(self, p):
        self._touched.add(self._index[p])
        buf = self._buffers.get(p)
        if buf is not None:
            ops.accumulate_([buf], [_local(p.grad)], scale=1.0)
            p.grad = None  # free the low-precision grad now; the buffer holds the sum

    def _check_model(self, model):
        module = model.module if isinstance(model, DistributedDataParallel) else model
        missing = [n for n, p in module.named_parameters()
                   if p.requires_grad and p not in self._index]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{len(missing)} trainable parameter(s) of the model are not in the "
                f"accumulator's optimizer ({shown}): pass the optimizer built on this "
                "model's parameters"
            )

    # ------------------------------------------------------------------ state dict
    def state_dict(self):
        """The window in progress, buffers and fp32 grads included (cloned).

        With DTensor params (FSDP2) only at a window boundary: FSDP2 holds a filling
        window's gradients unreduced, out of reach of any state_dict. The entries are
        tensors, numbers and lists, so torch.distributed.checkpoint saves them; the
        last window's norm is a number (None before the first window), so that a new
        accumulator's state_dict, as dcp.load's template, has the same entries."""
        self._ready("state_dict")
        if self.micro_step and any(isinstance(p, DTensor) for p in self._params):
            raise RuntimeError(
                f"state_dict() in the middle of a window ({self.micro_step} of "
                f"{self.steps} micro-batches) of DTensor (FSDP2) params: FSDP2 holds the "
                "window's gradients, which no state_dict can save; save after step()"
            )
        fp_grads = {i: p.grad.detach().clone() for i, p in enumerate(self._params)
                    if p not in self._buffers and p.grad is not None and i in self._touched}
        return {
            "steps": self.steps,
            "max_grad_norm": self.max_grad_norm,
            "micro_step": self.micro_step,
            "mode": self._mode,
            "weight_total": self._weight_total,
            "touched": sorted(self._touched),
            "buffers": [flat.clone() for flat in self._flats.values()],
            "grads": fp_grads,
            "grad_norm": None if self.grad_norm is None else self.grad_norm.item(),
            "scaled": self._scaler is not None,
        }

    @torch.no_grad()
    def load_state_dict(self, state):
        """Restores a window saved by state_dict(). Every entry is checked against
        this accumulator (its steps, params and buffers) before anything is loaded."""
        self._ready("load_state_dict")
        self._check_loadable(state)
        for flat, saved in zip(self._flats.values(), state["buffers"]):
            flat.copy_(saved)
        for i, g in state["grads"].items():
            p = self._params[i]
            p.grad = g.to(device=p.device).clone()
        self.max_grad_norm = state["max_grad_norm"]
        self.micro_step = state["micro_step"]
        self._mode = state["mode"]
        self._weight_total = state["weight_total"]
        self._touched = set(state["touched"])
        grad_norm = state["grad_norm"]
        self.grad_norm = None if grad_norm is None else torch.as_tensor(grad_norm)

    def _check_loadable(self, state):
        """Raises ValueError naming the first entry of `state` that does not fit."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"state_dict is missing {missing[0]!r}: expected the keys "
                             f"{', '.join(_STATE_KEYS)} of GradAccumulator.state_dict()")
        unexpected = [k for k in state if k not in _STATE_KEYS + _OPTIONAL_STATE_KEYS]
        if unexpected:
            raise ValueError(f"state_dict has unexpected key {unexpected[0]!r}: expected "
                             f"those of GradAccumulator.state_dict()")
        if state["steps"] != self.steps:
            raise ValueError(f"state_dict is for steps={state['steps']}, this "
                             f"accumulator has steps={self.steps}")
        micro_step = state["micro_step"]
        if isinstance(micro_step, bool) or not isinstance(micro_step, int) or not (
                0 <= micro_step <= self.steps):
            raise ValueError(f"state_dict['micro_step'] is {micro_step!r}, expected an "
                             f"integer from 0 to {self.steps}")
        if state["mode"] not in (None, _MEAN, _WEIGHTED):
            raise ValueError(f"state_dict['mode'] is {state['mode']!r}, expected None, "
                             f"{_MEAN!r} or {_WEIGHTED!r}")
        scaled = state.get("scaled", False)
        if micro_step and scaled != (self._scaler is not None):
            raise ValueError(
                f"state_dict holds a window of {'scaled' if scaled else 'unscaled'} "
                f"gradients, and this accumulator has {'no' if scaled else 'a'} GradScaler")
        n = len(self._params)
        for i in state["touched"]:
            if not 0 <= i < n:
                raise ValueError(f"state_dict['touched'] has index {i}, expected indices "
                                 f"of the {n} params")
        buffers = state["buffers"]
        if len(buffers) != len(self._flats):
            raise ValueError(
                f"state_dict['buffers'] holds {len(buffers)} buffers, expected "
                f"{len(self._flats)}: one per device holding bfloat16/float16 params")
        for i, (flat, saved) in enumerate(zip(self._flats.values(), buffers)):
            _check_saved_tensor(f"state_dict['buffers'][{i}]", saved, flat)
        for i, g in state["grads"].items():
            if not 0 <= i < n:
                raise ValueError(f"state_dict['grads'] has index {i}, expected indices of "
                                 f"the {n} params")
            p = self._params[i]
            if p in self._buffers:
                raise ValueError(f"state_dict['grads'][{i}] is for param {i}, whose window "
                                 "sum is kept in state_dict['buffers']")
            _check_saved_tensor(f"state_dict['grads'][{i}]", g, p)


# The keys of GradAccumulator.state_dict(); "scaled" is absent from checkpoints
# written before float16 training with a GradScaler existed.
_STATE_KEYS = ("steps", "max_grad_norm", "micro_step", "mode", "weight_total", "touched",
               "buffers", "grads", "grad_norm")
_OPTIONAL_STATE_KEYS = ("scaled",)


def _check_saved_tensor(name, saved, own):
    """A saved tensor must have the shape and dtype of the one it is loaded into (it
    may come from another device)."""
    if not isinstance(saved, torch.Tensor):
        raise ValueError(f"{name} is a {type(saved).__name__}, expected a tensor of "
                         f"shape {tuple(own.shape)} and dtype {own.dtype}")
    if saved.shape != own.shape or saved.dtype != own.dtype:
        raise ValueError(
            f"{name} has shape {tuple(saved.shape)} and dtype {saved.dtype}, expected "
            f"shape {tuple(own.shape)} and dtype {own.dtype}")


def _params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def _param_name(param_groups, index):
    """Where the `index`-th param of the optimizer (group after group) sits."""
    for g, group in enumerate(param_groups):
        if index < len(group["params"]):
            return f"param_groups[{g}]['params'][{index}]"
        index -= len(group["params"])
    raise IndexError(index)


def _check_each_param_once(param_groups):
    """Refuses a param listed twice. torch.optim only warns about one listed twice in
    a group; here its two hooks would fold each gradient in twice."""
    first = {}
    for g, group in enumerate(param_groups):
        for i, p in enumerate(group["params"]):
            seen = first.setdefault(id(p), (g, i))
            if seen != (g, i):
                raise ValueError(
                    f"param_groups[{g}]['params'][{i}] is the same tensor as "
                    f"param_groups[{seen[0]}]['params'][{seen[1]}]: a GradAccumulator "
                    "needs each param listed once"
                )


def _updated_scaler_state(state, found_inf):
    """A GradScaler state_dict after update(): torch._amp_update_scale_, the op
    GradScaler.update() runs, on host copies of its scale and growth tracker."""
    scale = torch.tensor(state["scale"], dtype=torch.float32)
    tracker = torch.tensor(state["_growth_tracker"], dtype=torch.int32)
    torch._amp_update_scale_(scale, tracker, torch.tensor(float(found_inf)),
                             state["growth_factor"], state["backoff_factor"],
                             state["growth_interval"])
    return {**state, "scale": scale.item(), "_growth_tracker": int(tracker.item())}


def _local(t):
    """A DTensor's local shard (FSDP2, tensor parallel); any other tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def _mesh_of(params):
    """The one DeviceMesh of the DTensor params (FSDP2 and tensor parallel place
    all params on one), or None without DTensor params."""
    meshes = {p.device_mesh for p in params if isinstance(p, DTensor)}
    if len(meshes) > 1:
        raise ValueError(
            f"the optimizer's DTensor params lie on {len(meshes)} DeviceMeshes; the "
            "accumulator reduces the window's norm over one"
        )
    return meshes.pop() if meshes else None


def _copies(p, index, mesh):
    """On how many ranks of `mesh` the local shard of params[index] is repeated."""
    if not isinstance(p, DTensor):
        return mesh.size()
    if p.device_mesh != mesh:
        raise ValueError(f"params[{index}] is a DTensor on {p.device_mesh}, expected "
                         f"the other params' {mesh}")
    copies = 1
    for dim, placement in enumerate(p.placements):
        if isinstance(placement, Partial):
            raise ValueError(f"params[{index}] has a Partial placement on mesh dim {dim}; "
                             "expected Shard or Replicate")
        if placement.is_replicate():
            copies *= mesh.size(dim)
    return copies


def _all_reduce_over_mesh(t, mesh):
    """Sums `t` over every rank of `mesh`: one all-reduce per mesh dimension."""
    for dim in range(mesh.ndim):
        dist.all_reduce(t, group=mesh.get_group(dim))


def _allocate_buffers(params):
    """One contiguous fp32 allocation per device for the low-precision ones of
    `params` (the hooked ones), and per-param views into it, shaped as each param's
    local shard for a DTensor. Returns ({device: flat}, {param: view})."""
    sizes = {}
    for p in params:
        if p.dtype in _LOW_PRECISION:
            sizes[p.device] = sizes.get(p.device, 0) + _local(p).numel()
    flats = {d: torch.zeros(n, dtype=torch.float32, device=d) for d, n in sizes.items()}
    offsets = dict.fromkeys(flats, 0)
    views = {}
    for p in params:
        if p.dtype in _LOW_PRECISION:
            local = _local(p)
            start = offsets[p.device]
            views[p] = flats[p.device][start:start + local.numel()].view(local.shape)
            offsets[p.device] = start + local.numel()
    return flats, views
