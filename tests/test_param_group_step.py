"""The two groupings of a param group's step agree bit for bit.

Eagerly a group is sorted into per-(device, dtype) lists in C++ by a plan kept
between steps (csrc/param_group_step.cpp); under torch.compile, which traces Python, in
FusedAdam.group_tensors. Both then call the same operators, so any difference
would be a grouping bug: a param stepped with another's state, a skipped param
stepped, a complex param not viewed as real.
"""

import collections
import sys
import weakref

import pytest
import torch

from fused_accum import FusedAdam, FusedAdamW
from fused_accum._loader import ParamGroupPlan

EAGER, TRACED = "_step_group_eager", "_step_group_traced"


def step_by(opt, path, grad_scale=None, found_inf=None):
    with torch.no_grad():
        for group in opt.param_groups:
            getattr(opt, path)(group, None, False, grad_scale, found_inf)


def mixed_params(seed):
    """Three dtypes, a complex param, a non-contiguous one, two groups."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    first = [rand(7, 3), rand(5, dtype=torch.bfloat16), rand(4, 4, dtype=torch.float64),
             rand(6, 2).t(), rand(3, dtype=torch.float32), rand(1, dtype=torch.bfloat16)]
    second = [torch.complex(rand(4), rand(4)), rand(9, dtype=torch.float16)]
    return first, second


def build(opt_class, seed, **kwargs):
    first, second = mixed_params(seed)
    params = [torch.nn.Parameter(t.clone()) for t in first + second]
    groups = [{"params": params[:len(first)]},
              {"params": params[len(first):], "lr": torch.tensor(3e-3, dtype=torch.float64)}]
    return params, opt_class(groups, lr=1e-2, **kwargs)


def give_grads(params, step, none_every=3):
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        if (i + step) % none_every == 0:
            p.grad = None  # skipped this step: its state must stay as it is
            continue
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.is_complex():
            g = torch.complex(g, torch.randn(p.shape, generator=gen, dtype=torch.float64))
        p.grad = g.to(p.dtype)


def assert_same(opt_a, params_a, opt_b, params_b):
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})  # creating none
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


@pytest.mark.parametrize("opt_class,kwargs", [
    (FusedAdamW, {}),
    (FusedAdamW, {"amsgrad": True, "weight_decay": 0.1}),
    (FusedAdam, {"weight_decay": 0.1}),
    (FusedAdam, {"maximize": True, "amsgrad": True}),
])
def test_eager_and_traced_grouping_step_alike(opt_class, kwargs):
    params_a, opt_a = build(opt_class, 0, **kwargs)
    params_b, opt_b = build(opt_class, 0, **kwargs)
    for step in range(6):
        give_grads(params_a, step)
        give_grads(params_b, step)
        step_by(opt_a, EAGER)
        step_by(opt_b, TRACED)
    assert_same(opt_a, params_a, opt_b, params_b)
    # Every param was stepped at least once, and a param's count is its own.
    assert all(opt_a.state[p]["step"].item() >= 3 for p in params_a)


def test_grad_scale_and_found_inf_reach_every_group():
    params_a, opt_a = build(FusedAdamW, 1)
    params_b, opt_b = build(FusedAdamW, 1)
    scale = torch.tensor(4.0)
    for step, inf in enumerate([0.0, 1.0, 0.0]):
        give_grads(params_a, step)
        give_grads(params_b, step)
        step_by(opt_a, EAGER, scale, torch.tensor(inf))
        step_by(opt_b, TRACED, scale, torch.tensor(inf))
    assert_same(opt_a, params_a, opt_b, params_b)


def test_a_replaced_state_tensor_is_the_one_stepped():
    # Nothing is cached between steps: the state is read afresh every step.
    p = torch.nn.Parameter(torch.ones(4))
    opt = FusedAdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    old = opt.state[p]["exp_avg"]
    new = torch.zeros(4)
    opt.state[p]["exp_avg"] = new
    before = old.clone()
    opt.step()
    torch.testing.assert_close(old, before, rtol=0, atol=0)
    torch.testing.assert_close(new, torch.full((4,), 0.1), rtol=0, atol=0)


def test_a_param_added_between_steps_is_stepped():
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = FusedAdamW([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    opt.param_groups[0]["params"].append(q)
    q.grad = torch.ones(3)
    opt.step()
    assert opt.state[q]["step"].item() == 1
    assert opt.state[p]["step"].item() == 2


def test_state_replaced_by_init_state_mid_step_is_the_one_stepped():
    # The step finds each param's state before walking the params; once Python code
    # has run mid-step (here init_state, replacing the later params' state dicts),
    # what it found before must not be used.
    class Replacing(FusedAdamW):
        def _init_state(self, p, group):
            state = super()._init_state(p, group)
            if p is a:
                for other in (b, c):
                    self.state[other] = {k: v.clone() for k, v in self.state[other].items()}
            return state

    a, b, c = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    opt = Replacing([a, b, c], lr=0.1)
    b.grad, c.grad = torch.ones(3), torch.ones(3)
    opt.step()  # a has no grad: no state yet
    old_states = [opt.state[b], opt.state[c]]
    old_values = [{k: v.clone() for k, v in s.items()} for s in old_states]
    a.grad = torch.ones(3)
    opt.step()  # init_state(a) runs first and replaces b's and c's state dicts
    for param, old, values in zip((b, c), old_states, old_values):
        assert opt.state[param] is not old
        assert opt.state[param]["step"].item() == 2
        for k, v in old.items():
            torch.testing.assert_close(v, values[k], rtol=0, atol=0)
    assert opt.state[a]["step"].item() == 1


class SaltedHashParameter(torch.nn.Parameter):
    """A param type with its own hash: its state must be found the ordinary way."""

    def __hash__(self):
        return hash(("salted", id(self)))


@pytest.mark.parametrize("opt_class", [FusedAdamW, FusedAdam])
def test_a_param_type_with_its_own_hash_finds_its_state(opt_class):
    def params():
        gen = torch.Generator().manual_seed(3)
        return [cls(torch.randn(5, generator=gen)) for cls in
                (torch.nn.Parameter, SaltedHashParameter, torch.nn.Parameter)]

    params_a, params_b = params(), params()
    opt_a = opt_class(params_a, lr=1e-2, weight_decay=0.1)
    opt_b = opt_class(params_b, lr=1e-2, weight_decay=0.1)
    for step in range(4):
        give_grads(params_a, step, none_every=4)
        give_grads(params_b, step, none_every=4)
        step_by(opt_a, EAGER)
        step_by(opt_b, TRACED)
    assert_same(opt_a, params_a, opt_b, params_b)
    assert len(opt_a.state) == 3


class CountingState(collections.defaultdict):
    """An optimizer state map with its own lookup, which a step must go through."""

    def __init__(self, *args):
        super().__init__(*args)
        self.lookups = 0

    def __getitem__(self, key):
        self.lookups += 1
        return super().__getitem__(key)


def test_a_state_map_with_its_own_lookup_is_asked():
    params_a, opt_a = build(FusedAdamW, 4)
    params_b, opt_b = build(FusedAdamW, 4)
    opt_a.state = CountingState(dict, opt_a.state)
    for step in range(3):
        give_grads(params_a, step, none_every=10)
        give_grads(params_b, step, none_every=10)
        lookups_before = opt_a.state.lookups
        step_by(opt_a, EAGER)
        step_by(opt_b, TRACED)
        with_grads = sum(p.grad is not None for p in params_a)
        assert opt_a.state.lookups - lookups_before >= with_grads > 0
    assert_same(opt_a, params_a, opt_b, params_b)


def test_a_step_keeps_no_reference_once_it_returns():
    # The eager step borrows tensors and holds Python references while it runs;
    # all of them must be given back, and no C++ reference may outlive it.
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2)),
              torch.nn.Parameter(torch.complex(torch.randn(2), torch.randn(2)))]
    opt = FusedAdamW(params, lr=1e-2, amsgrad=True)
    give_grads(params, 1, none_every=10)
    opt.step()
    watched = params + [p.grad for p in params] + [
        t for p in params for t in opt.state[p].values()]
    before = [sys.getrefcount(o) for o in watched]
    opt.step()
    assert [sys.getrefcount(o) for o in watched] == before
    grads = [weakref.ref(p.grad) for p in params]
    del watched
    for p in params:
        p.grad = None
    assert all(ref() is None for ref in grads)


def plan_step(opt, grads, grad_factor=None):
    params = opt.param_groups[0]["params"]
    plan = ParamGroupPlan(params, [opt.state.get(p) for p in params], opt.state,
                          lambda p: opt._init_state(p, opt.param_groups[0]))
    plan.step(grads, window=False, lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0,
              eps=1e-8, amsgrad=False, maximize=False, decoupled_weight_decay=True,
              write_key=None, param_write=0, grad_factor=grad_factor, found_inf=None)


def call_eager(opt, grads, grad_enabled=False):
    with torch.set_grad_enabled(grad_enabled):
        plan_step(opt, grads)


def test_misuse_is_refused_with_a_message():
    p = torch.nn.Parameter(torch.ones(2))
    opt = FusedAdamW([p])
    with pytest.raises(ValueError, match="one entry per param: 1 params, 2 grads"):
        call_eager(opt, [torch.ones(2), torch.ones(2)])
    with pytest.raises(TypeError, match=r"grads\[0\] must be a Tensor, got int"):
        call_eager(opt, [3])
    with pytest.raises(TypeError, match="grads must be None or a list, got tuple"):
        call_eager(opt, (torch.ones(2),))
    opt.state[p] = ["not", "a", "dict"]
    with pytest.raises(TypeError, match=r"state of params\[0\] must be a dict, got list"):
        call_eager(opt, [torch.ones(2)])
    opt.state[p] = {"step": torch.zeros(()), "exp_avg": torch.zeros(2), "exp_avg_sq": 1.0}
    with pytest.raises(TypeError, match=r"state of params\[0\]\['exp_avg_sq'\] must be a Tensor, got float"):
        call_eager(opt, [torch.ones(2)])
    with pytest.raises(RuntimeError, match="must run under torch.no_grad"):
        call_eager(opt, None, grad_enabled=True)
    with torch.no_grad(), pytest.raises(TypeError, match="^grad_factor must be a Tensor"):
        plan_step(opt, None, grad_factor=2.0)


def test_operator_errors_arrive_as_runtime_errors():
    p = torch.nn.Parameter(torch.ones(2))
    opt = FusedAdamW([p])
    p.grad = torch.ones(2)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] must have shape \[2\]"):
        opt.step()


def test_a_plan_follows_changes_to_params_and_state():
    # The eager step keeps each group's params and state dicts between steps; every
    # change below must reach the next step exactly as the traced grouping sees it.
    params_a, opt_a = build(FusedAdamW, 5)
    params_b, opt_b = build(FusedAdamW, 5)

    def both(change):
        change(params_a, opt_a)
        change(params_b, opt_b)

    def step_both(step):
        # Every param has a grad: no state is created after the first step, which
        # would make the plan look states up again and hide a stale one.
        give_grads(params_a, step, none_every=1000)
        give_grads(params_b, step, none_every=1000)
        step_by(opt_a, EAGER)
        step_by(opt_b, TRACED)
        assert_same(opt_a, params_a, opt_b, params_b)

    def replace_a_state(params, opt):
        p = params[1]
        opt.state[p] = {k: v.clone() * 0.5 for k, v in opt.state[p].items()}

    def replace_a_state_tensor(params, opt):
        opt.state[params[2]]["exp_avg"] = torch.ones_like(params[2])

    def forget_a_state(params, opt):
        del opt.state[params[0]]

    def update_a_state(params, opt):
        opt.state.update({params[3]: {k: v.clone() * 2 for k, v in opt.state[params[3]].items()}})

    def pop_a_state(params, opt):
        opt.state.pop(params[4])

    def reload(params, opt):
        opt.load_state_dict(opt.state_dict())

    def swap_two_params(params, opt):
        group = opt.param_groups[0]["params"]
        group[0], group[1] = group[1], group[0]

    step_both(0)
    for step, change in enumerate([replace_a_state, replace_a_state_tensor, forget_a_state,
                                   update_a_state, pop_a_state, reload, swap_two_params], start=1):
        both(change)
        step_both(step)
