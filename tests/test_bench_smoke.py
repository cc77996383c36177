"""Tests of `python -m fused_accum.bench`: it runs, its JSON has the expected
tables with positive timings, and its tables and timing rules hold. No assertions
on speed."""

import dataclasses
import json
import subprocess
import sys
import time

import pytest
import torch

import fused_accum
from fused_accum.bench import scenarios, shapes
from fused_accum.bench.__main__ import parse_args
from fused_accum.bench.report import HEADER, cells
from fused_accum.bench.results import Row, Table
from fused_accum.bench.tensors import make_params, nbytes
from fused_accum.bench.timing import Samples, time_alternately
from fused_accum.bench.variants import ADAMW, Variant, share_moments_with_deepspeed, variants

DEFAULT_SCENARIOS = {"roofline", "step", "dtypes", "small", "window"}


def run_bench(*args):
    return subprocess.run([sys.executable, "-m", "fused_accum.bench", *args],
                          capture_output=True, text=True, timeout=600)


def test_quick_run_writes_json_with_default_scenarios(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_bench("--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Headline: one AdamW step" in proc.stdout
    result = json.loads(out.read_text())
    tables = result["tables"]
    assert {t["scenario"] for t in tables} == DEFAULT_SCENARIOS
    for table in tables:
        assert table["rows"], f"{table['title']} has no rows: {table['notes']}"
        for row in table["rows"]:
            assert row["median_ms"] > 0 and row["gb_per_s"] > 0, (table["title"], row)
            assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    step = next(t for t in tables if t["scenario"] == "step")
    variants = [r["variant"] for r in step["rows"]]
    assert variants == ["ours", "torch for-loop", "torch foreach", "torch fused"]
    assert step["roofline_gbps"] > 0
    assert all(r["speedup_of_ours"] > 0 for r in step["rows"][1:])
    for r in step["rows"][1:]:  # each timed alternately with ours and with the roofline
        assert r["speedup_of_ours"] == pytest.approx(r["median_ms"] / r["ours_beside_ms"])
        assert r["roofline_fraction"] == pytest.approx(r["gb_per_s"] / r["roofline_gbps"])
    dtypes = [t for t in tables if t["scenario"] == "dtypes"]
    assert [t["title"].split(": one ")[1].split(" step")[0] for t in dtypes] == ["AdamW",
                                                                              "Adam+L2"]
    for table in dtypes:
        assert [r["variant"] for r in table["rows"]] == ["ours float32", "ours bfloat16"]
        assert table["reference"] == "ours bfloat16"
        fp32, bf16 = table["rows"]
        # bfloat16 moves half the bytes; the ratio is the float32 row's time over bf16's
        assert fp32["bytes_per_call"] == 2 * bf16["bytes_per_call"]
        assert fp32["speedup_of_ours"] == pytest.approx(fp32["median_ms"] / bf16["median_ms"])
        assert bf16["speedup_of_ours"] is None
    window = next(t for t in tables if t["scenario"] == "window")
    assert [r["variant"] for r in window["rows"]] == ["ours", "torch fused"]
    ours_end, torch_end = window["rows"]
    # timed in the same turns: one roofline for both, ours' own row for the speedup
    assert ours_end["roofline_gbps"] == torch_end["roofline_gbps"] == window["roofline_gbps"]
    assert torch_end["speedup_of_ours"] == pytest.approx(torch_end["median_ms"]
                                                         / ours_end["median_ms"])
    assert result["meta"]["quick"] is True
    # The file is what `python -m fused_accum.bench.spread` reads. Given it twice, the
    # headline's torch fused ratio is its own min, median and max over the two "runs".
    spread = subprocess.run([sys.executable, "-m", "fused_accum.bench.spread", str(out),
                             str(out)], capture_output=True, text=True, timeout=120)
    assert spread.returncode == 0, spread.stderr
    headline = next(t for t in tables if t["title"].startswith("Headline"))
    fused = next(r for r in headline["rows"] if r["variant"] == "torch fused")
    lines = spread.stdout.splitlines()
    fused_line = next(line for line in lines[lines.index(headline["title"]):]
                      if line.startswith("torch fused "))
    assert fused_line.split()[2:6] == ["2"] + [f"{fused['speedup_of_ours']:.2f}"] * 3


def test_named_scenario_and_markdown(tmp_path):
    md = tmp_path / "bench.md"
    proc = run_bench("--quick", "--scenario", "scaling", "--dtype", "bfloat16",
                     "--repeats", "1", "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "| variant | median ms |" in text and "bfloat16" in text


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "expected a positive integer"),
    (["--scenario", "nope"], "invalid choice"),
    (["--dtype", "float16"], "invalid choice"),
    (["--json", "/no/such/folder/x.json"], "does not exist"),
])
def test_bad_arguments_are_refused_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_step_table_shows_the_ours_median_each_speedup_divides_by():
    """Ours' own row and the turns beside a torch row can see different machine
    speeds; the row shows the median its ratio uses, so the table reads consistently."""
    table = Table(scenario="step", title="t", shape_set="s", params=1, tensors=1,
                  dtype="float32", device="cpu")
    table.rows = [Row("ours", Samples((50.0, 51.0, 52.0)), 28),
                  Row("torch fused", Samples((31.0, 31.5, 32.0)), 28, ours_beside_ms=28.0)]
    ours, fused = (dict(zip(HEADER, row)) for row in cells(table))
    assert ours["ours in turn ms"] == "-" and ours["ours faster by"] == "-"
    assert fused["ours in turn ms"] == "28.0"
    assert fused["ours faster by"] == "1.12x"  # 31.5 / 28.0, not 31.5 / 51.0


def test_a_set_with_room_for_one_state_still_times_torch_beside_ours(monkeypatch):
    """Where two optimizer states do not fit (a 1B-param set), torch's variants step
    ours' state tensors, so they are still timed in turns with ours; foreach, whose
    temporaries would not fit even then, is skipped without costing the others that;
    a peer with its own state layout is timed alone after them."""
    params = make_params(shapes.uniform(4, 4096), torch.float32, "cpu")
    one_set = nbytes(params)
    # Room for params, grads and one state, plus a little, not for a second state.
    monkeypatch.setattr(scenarios, "fits",
                        lambda new, total, device, released=0: total <= 4.5 * one_set)
    settings = scenarios.Settings(device=torch.device("cpu"), repeats=2, warmup=1)
    table = scenarios._new_table("step", "t", shapes.uniform(4, 4096), torch.float32, settings)
    made = {}

    def recorded(variant):
        def make(ps):
            made[variant.name] = variant.make(ps)
            return made[variant.name]
        return dataclasses.replace(variant, make=make)

    # A peer with a state of its own layout (as DeepSpeedCPUAdam's) comes last.
    peer = Variant("peer", lambda ps: torch.optim.AdamW(ps, fused=True))
    chosen = [recorded(v) for v in variants(ADAMW, settings.device) + [peer]]
    scenarios._time_variants(table, chosen, params, settings, roofline=None)
    rows = {r.variant: r for r in table.rows}
    assert set(rows) == {"ours", "torch for-loop", "torch fused", "peer"}
    for name in ("torch for-loop", "torch fused"):
        assert rows[name].ours_beside_ms is not None
        assert all(made[name].state[p] is made["ours"].state[p] for p in params)
    # Timed once ours' state is freed, so against ours' row.
    assert rows["peer"].ours_beside_ms is None
    assert all(made["peer"].state[p] is not made["ours"].state[p] for p in params)
    assert "peer: ours faster by is against ours' row" in " ".join(table.notes)
    assert "torch fused stepped ours' state tensors in its turns" in " ".join(table.notes)
    assert any(n.startswith("torch foreach skipped") for n in table.notes)


def test_shared_state_steps_as_one_optimizer_would():
    """Ours and torch fused stepping one state in turns give torch fused's own
    trajectory: the timing compares the same work."""
    params = make_params(shapes.uniform(3, 1000), torch.float32, "cpu")
    reference = [p.detach().clone().requires_grad_() for p in params]
    for r, p in zip(reference, params):
        r.grad = p.grad.clone()
    hyper = dict(lr=1e-2, weight_decay=1e-2)
    ours = fused_accum.FusedAdamW(params, **hyper)
    fused = torch.optim.AdamW(params, fused=True, **hyper)
    alone = torch.optim.AdamW(reference, fused=True, **hyper)
    ours.step()
    for p in params:
        fused.state[p] = ours.state[p]
    for step in (fused.step, ours.step, fused.step):
        step()
    for _ in range(4):
        alone.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p, r)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[p][key], alone.state[r][key])


def test_deepspeed_steps_ours_moments_with_a_count_of_its_own():
    """DeepSpeedCPUAdam keeps an int step count (`state['step'] += 1`): sharing ours'
    dicts would turn ours' step tensor into an int, so it gets dicts of its own that
    hold ours' moment tensors. Any Optimizer's `state` shows it; deepspeed need not
    be installed."""
    params = make_params(shapes.uniform(3, 100), torch.float32, "cpu")
    ours = fused_accum.FusedAdamW(params)
    for _ in range(2):
        ours.step()
    holder = torch.optim.SGD(params, lr=0.1)
    share_moments_with_deepspeed(holder, ours, params)
    for p in params:
        theirs, mine = holder.state[p], ours.state[p]
        assert theirs is not mine
        assert theirs["exp_avg"] is mine["exp_avg"]
        assert theirs["exp_avg_sq"] is mine["exp_avg_sq"]
        assert type(theirs["step"]) is int and theirs["step"] == 2
        assert torch.is_tensor(mine["step"])


def test_gpt2_small_shapes_match_the_published_count():
    assert shapes.GPT2_SMALL.numel == 124_439_808
    assert shapes.GPT2_SMALL.tensors == 148


def test_alternate_timing_refills_short_calls_only():
    """A short call is repeated untimed before each timed one; a call longer than
    refill_ms is not, after the first round has shown its length."""
    calls = {"short": 0, "long": 0}

    def call(name, seconds):
        def fn():
            calls[name] += 1
            time.sleep(seconds)
        return fn

    short, long_ = time_alternately([call("short", 0.002), call("long", 0.012)],
                                    torch.device("cpu"), repeats=3, warmup=1, refill_ms=10.0)
    assert len(short.ms) == len(long_.ms) == 3
    rounds = 4
    # short: at least 10 ms of untimed 2 ms calls (5 or fewer, sleep may overshoot) per round
    assert rounds * 2 <= calls["short"] - rounds <= rounds * 5
    # long: one untimed call in the first round only, when its length was not known yet
    assert calls["long"] == rounds + 1


def test_alternate_timing_runs_each_setup_before_each_call_of_its_fn():
    """A window end needs its micro-batches before every call, refills included."""
    log = []

    def fn(name, seconds):
        def call():
            log.append(name)
            time.sleep(seconds)
        return call

    time_alternately([fn("a", 0.001), fn("b", 0.001)], torch.device("cpu"), repeats=2,
                     warmup=1, refill_ms=2.5,
                     setups=[lambda: log.append("setup a"), None])
    calls_of_a = [i for i, entry in enumerate(log) if entry == "a"]
    assert len(calls_of_a) > 3  # refills ran as well as the timed calls
    assert all(log[i - 1] == "setup a" for i in calls_of_a)
    assert log.count("setup a") == len(calls_of_a)
    assert "setup b" not in log


def test_alternate_timing_refuses_setups_not_aligned_with_the_calls():
    with pytest.raises(ValueError, match="one entry per fn: 2 fns, 1 setups"):
        time_alternately([lambda: None, lambda: None], torch.device("cpu"), repeats=1,
                         warmup=0, setups=[None])
