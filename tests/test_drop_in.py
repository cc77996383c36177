"""FusedAdam/FusedAdamW behave as torch.optim.Adam/AdamW wherever a user can tell."""

import copy

import pytest
import torch

import fused_accum
from fused_accum import FusedAdam, FusedAdamW

PAIRS = [(FusedAdam, torch.optim.Adam), (FusedAdamW, torch.optim.AdamW)]

BAD_ARGUMENTS = [
    dict(lr=-1.0),
    dict(eps=-1e-8),
    dict(betas=(1.0, 0.999)),
    dict(betas=(0.9, -0.1)),
    dict(weight_decay=-0.5),
    dict(betas=(0.9, torch.tensor(0.999))),
    dict(lr=torch.tensor([1e-3, 1e-3])),
    dict(lr=torch.tensor(1e-3), foreach=True),
    dict(fused=True, foreach=True),
]


def error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(e), str(e)
    return None


@pytest.mark.parametrize("ours,theirs", PAIRS)
@pytest.mark.parametrize("kwargs", BAD_ARGUMENTS, ids=lambda k: ",".join(k))
def test_same_validation_errors_as_torch(ours, theirs, kwargs):
    params = [torch.nn.Parameter(torch.randn(3))]
    expected = error_of(lambda: theirs(params, **kwargs))
    assert expected is not None
    assert error_of(lambda: ours(params, **kwargs)) == expected


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_same_defaults_and_param_groups(ours, theirs):
    # torch's defaults, and the low-precision options, off.
    params = [torch.nn.Parameter(torch.randn(3))]
    low_precision = dict(master_weights=False, kahan_summation=False,
                         stochastic_rounding=False, state_dtype=None)
    assert ours(params).defaults == {**theirs(params).defaults, **low_precision}
    assert isinstance(ours(params), theirs)


def test_sparse_grads_are_refused_like_torch():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = FusedAdam([p])
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def train(model, opt, steps, scheduler=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)

        def closure():
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            return loss

        opt.step(closure)
        if scheduler:
            scheduler.step()


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))


def assert_models_close(a, b, **tol):
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **tol)


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_scheduler_closure_hooks_and_param_groups(ours, theirs):
    runs = []
    for cls in (ours, theirs):
        model = tiny_model()
        opt = cls(model[0].parameters(), lr=0.01, weight_decay=0.05)
        opt.add_param_group({"params": model[2].parameters(), "lr": 0.02, "amsgrad": True})
        calls = []
        opt.register_step_pre_hook(lambda *_: calls.append("pre"))
        opt.register_step_post_hook(lambda *_: calls.append("post"))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        train(model, opt, 10, sched)
        assert calls == ["pre", "post"] * 10
        runs.append((model, opt))
    assert_models_close(runs[0][0], runs[1][0])
    assert runs[0][1].param_groups[0]["lr"] == runs[1][1].param_groups[0]["lr"]


def test_zero_grad_set_to_none_choices():
    model = tiny_model()
    opt = FusedAdamW(model.parameters())
    train(model, opt, 1)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def strip_flags(state_dict):
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")}
              for g in state_dict["param_groups"]]
    return groups


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_checkpoint_round_trip_torch_ours_torch(ours, theirs, tmp_path):
    # Reference: torch trains 15 steps without interruption.
    ref_model = tiny_model()
    ref_opt = theirs(ref_model.parameters(), lr=0.01, amsgrad=True, foreach=False)
    train(ref_model, ref_opt, 5, seed=1)
    train(ref_model, ref_opt, 5, seed=2)
    train(ref_model, ref_opt, 5, seed=3)

    # torch 5 steps -> checkpoint -> ours 5 steps -> checkpoint -> torch 5 steps.
    model = tiny_model()
    opt = theirs(model.parameters(), lr=0.01, amsgrad=True, foreach=False)
    train(model, opt, 5, seed=1)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "a.pt")
    ckpt = torch.load(tmp_path / "a.pt")
    model = tiny_model(seed=99)
    model.load_state_dict(ckpt["model"])
    opt = ours(model.parameters(), lr=0.01, amsgrad=True)
    opt.load_state_dict(ckpt["opt"])
    train(model, opt, 5, seed=2)
    sd = opt.state_dict()
    assert strip_flags(sd) == strip_flags(ref_opt.state_dict())
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"].dtype == torch.float32 and sd["state"][0]["step"].dim() == 0
    torch.save({"model": model.state_dict(), "opt": sd}, tmp_path / "b.pt")
    ckpt = torch.load(tmp_path / "b.pt")
    model = tiny_model(seed=98)
    model.load_state_dict(ckpt["model"])
    opt = theirs(model.parameters(), lr=0.01, amsgrad=True, foreach=False)
    opt.load_state_dict(ckpt["opt"])
    train(model, opt, 5, seed=3)
    assert_models_close(model, ref_model)
    for key, value in ref_opt.state_dict()["state"][1].items():
        torch.testing.assert_close(opt.state_dict()["state"][1][key], value)


def test_checkpoint_across_dtypes_and_step_dtype():
    # A float64-default torch run stores float64 steps; a float64 checkpoint loads into
    # float32 params with its state cast to the params' dtype, as torch does.
    model64 = tiny_model().double()
    opt64 = torch.optim.AdamW(model64.parameters(), lr=0.01)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = torch.randn(4, 6)
        model64(x).sum().backward()
        opt64.step()
    finally:
        torch.set_default_dtype(previous)
    assert opt64.state_dict()["state"][0]["step"].dtype == torch.float64
    model32 = tiny_model()
    opt32 = FusedAdamW(model32.parameters(), lr=0.01)
    opt32.load_state_dict(opt64.state_dict())
    state = opt32.state[model32[0].weight]
    assert state["exp_avg"].dtype == torch.float32 and state["step"].dtype == torch.float32
    assert float(state["step"]) == 1.0
    train(model32, opt32, 2)
    assert float(state["step"]) == 3.0


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_grad_scaler_unscales_in_the_kernel_and_skips_on_inf(ours, theirs):
    results = []
    for cls in (ours, theirs):
        model = tiny_model()
        opt = cls(model.parameters(), lr=0.01, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        gen = torch.Generator().manual_seed(0)
        snapshots = []
        for step in range(6):
            opt.zero_grad()
            loss = model(torch.randn(8, 6, generator=gen)).square().mean()
            scaler.scale(loss).backward()
            if step == 3:  # an overflow: the step must be skipped
                model[0].weight.grad[0, 0] = float("inf")
                before = copy.deepcopy((list(model.parameters()), opt.state_dict()))
            scaler.step(opt)
            scaler.update()
            if step == 3:
                after = (list(model.parameters()), opt.state_dict())
                for a, b in zip(before[0], after[0]):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
                for i, st in before[1]["state"].items():
                    for key, value in st.items():
                        torch.testing.assert_close(after[1]["state"][i][key], value, rtol=0, atol=0)
            snapshots.append(scaler.get_scale())
        results.append((model, snapshots))
    assert results[0][1] == results[1][1]
    assert_models_close(results[0][0], results[1][0])


def test_build_info_describes_the_build():
    info = fused_accum.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cpu_capability"] in info["cpu_capabilities_compiled"]
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"]
