"""Unit tests of `python -m fused_accum.bench`: its tables, its documents, its JSON
checker and its timing rules, on synthetic results or tiny sets. No assertions on speed.
The whole quick benchmark runs once in CI (.ci/run), which checks the JSON it writes
with `python -m fused_accum.bench.check_json`."""

import copy
import dataclasses
import json
import time

import pytest
import torch

import fused_accum
from fused_accum.bench import __main__ as bench_main
from fused_accum.bench import check_json, document, mixed, report, scenarios, shapes
from fused_accum.bench.__main__ import parse_args
from fused_accum.bench.report import cells
from fused_accum.bench.results import Row, Table
from fused_accum.bench.tensors import make_params, nbytes
from fused_accum.bench.timing import Samples, time_alternately
from fused_accum.bench.variants import ADAMW, Variant, share_moments_with_deepspeed, variants


def _table(scenario, title, rows, **kwargs):
    table = Table(scenario=scenario, title=title, shape_set="s", params=1_000_000,
                  tensors=10, dtype="float32", device="cpu", **kwargs)
    table.rows = rows
    return table


def _step_table(title="Headline: one AdamW step, s"):
    return _table("step", title, [
        Row("ours", Samples((1.0, 1.1, 1.2)), 28e6, 0, roofline_gbps=30.0),
        Row("torch for-loop", Samples((8.0, 9.0, 10.0)), 28e6, 0, roofline_gbps=30.0,
            ours_beside_ms=1.2),
        Row("torch foreach", Samples((6.0, 6.5, 7.0)), 28e6, 0, roofline_gbps=28.0,
            ours_beside_ms=1.0),
        Row("torch fused", Samples((1.3, 1.4, 1.5)), 28e6, 0, roofline_gbps=29.0,
            ours_beside_ms=1.1),
    ], roofline_gbps=29.5)


def _dtypes_table(algorithm="AdamW", fp32_ms=2.0, bf16_ms=1.0):
    return _table("dtypes", f"ours, float32 against bfloat16 storage: one {algorithm} step",
                  [Row("ours float32", Samples((fp32_ms,)), 28e6, 0),
                   Row("ours bfloat16", Samples((bf16_ms,)), 14e6, 0)],
                  reference="ours float32")


def _mixed_tables():
    """The mixed scenario's two tables, as a run returns them: ours' modes against ours
    float32, then ours with master weights against torch's recipe."""
    cpu = "CPU: Test CPU, 2 logical CPUs; fused_accum's CPU kernels built for AVX2"
    times = dict(zip([m.name for m in mixed.MODES], (2.0, 2.2, 1.4, 1.1, 1.6, 1.0)))
    modes = _table("mixed", "precision modes of ours", [
        Row(mode.name, Samples((times[mode.name],)),
            mixed.traffic_bytes(mode.traffic, 1_000_000), 0, roofline_gbps=30.0,
            held_bytes=10_000_000) for mode in mixed.MODES],
        roofline_gbps=30.0, reference=mixed.OURS_FLOAT32)
    modes.notes = [cpu]
    master = _table("mixed", "float32 master weights of bfloat16 params", [
        dataclasses.replace(modes.row(mixed.OURS_MASTER), variant="ours"),
        Row(mixed.TORCH_RECIPE, Samples((4.4,)), 40e6, 0, roofline_gbps=30.0,
            held_bytes=20_000_000)], roofline_gbps=30.0)
    master.notes = [cpu]
    return [modes, master]


def _default_set():
    """Synthetic tables of every scenario of the default set, as a run returns them."""
    roofline = _table("roofline", "memory roofline", [
        Row("stream_roofline_ (7 streams)", Samples((1.0,)), 28e6),
        Row("copy (2 streams)", Samples((0.5,)), 8e6)], roofline_gbps=28.0)
    small = _step_table("one AdamW step, 2000x1024")
    small.scenario = "small"
    window = _table("window", "end of an accumulation window", [
        Row("ours", Samples((1.5,)), 36e6, 0, roofline_gbps=30.0),
        Row("torch fused", Samples((3.0,)), 36e6, 0, roofline_gbps=30.0)],
        roofline_gbps=30.0)
    return [roofline, _step_table(), _dtypes_table("AdamW"), _dtypes_table("Adam+L2"),
            *_mixed_tables(), small, window]


def _run_dict(tables, argv=("--quick",)):
    return json.loads(json.dumps(dict(
        meta=dict(argv=list(argv), quick="--quick" in argv),
        tables=[t.to_dict() for t in tables])))


def _by_header(table):
    header, rows = cells(table)
    return [dict(zip(header, row)) for row in rows]


def test_dtypes_ratio_sits_in_the_bfloat16_row():
    """The row that is faster or slower carries the ratio, under a header that says
    what it compares with: bfloat16 1.60x faster than float32, in bfloat16's row."""
    fp32, bf16 = _by_header(_dtypes_table(fp32_ms=1.6, bf16_ms=1.0))
    assert fp32["faster than ours float32 by"] == "-"
    assert bf16["faster than ours float32 by"] == "1.60x"
    # Slower reads below 1, still in the bfloat16 row.
    _, bf16 = _by_header(_dtypes_table(fp32_ms=0.5, bf16_ms=1.0))
    assert bf16["faster than ours float32 by"] == "0.50x"


def test_columns_no_row_fills_are_left_out():
    header, _ = cells(_dtypes_table())
    assert header == ("variant", "median ms", "IQR ms", "GB/s",
                      "faster than ours float32 by", "peak extra MB")
    header, _ = cells(_step_table())
    assert header == ("variant", "median ms", "IQR ms", "GB/s", "of roofline",
                      "ours in turn ms", "ours faster by", "peak extra MB")


def test_text_report_ends_with_a_short_legend():
    text = report.text(_default_set())
    legend = text[text.index(report.LEGEND_TITLE):].splitlines()
    assert 4 <= len(legend) <= 10
    assert all(len(line) <= 120 for line in legend)
    for column in ("median ms", "of roofline", "ours faster by", "faster than X by"):
        assert any(line.strip().startswith(column) for line in legend[1:]), column


def test_markdown_document_is_whole_and_replaced_each_run(tmp_path, monkeypatch, capsys):
    """--markdown writes the whole of docs/benchmarks.md: the command that made it, the
    machine, the methodology, the tables and the legend; a second run replaces it."""
    monkeypatch.setattr(bench_main, "DEFAULT", (lambda settings: _default_set(),))
    md, js = tmp_path / "benchmarks.md", tmp_path / "run.json"
    for _ in range(2):
        bench_main.main(["--quick", "--markdown", str(md), "--json", str(js)])
    text = md.read_text()
    assert text.count("# Benchmarks") == 1
    words = " ".join(text.split())  # paragraphs are filled to a width
    assert "Generated by `python -m fused_accum.bench --markdown docs/benchmarks.md`" in words
    assert f"- command: `python -m fused_accum.bench --quick --markdown {md} --json {js}`" \
        in words
    for heading in ("## This run", "## What is measured", "## How it is timed",
                    "## The roofline", "## Columns", "## Tables", "## Legend"):
        assert f"\n{heading}\n" in text, heading
    assert "| ours bfloat16 |" in text and "| faster than ours float32 by |" in text
    assert "Headline: one AdamW step" in capsys.readouterr().out
    run = json.loads(js.read_text())
    assert run["meta"]["quick"] is True and run["meta"]["argv"][0] == "--quick"
    assert check_json.problems_of(run) == []


def test_summary_quotes_each_ratio_against_the_ours_median_it_was_timed_with():
    tables = _default_set()
    second_small = dataclasses.replace(tables[6], title="one AdamW step, 20000x64")
    lines = document.summary(tables + [second_small]).splitlines()
    assert lines[0] == "| comparison | ours ms | theirs ms | ours faster by |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    # torch fused's 1.4 ms against ours' 1.1 in its turns, not ours' own row's 1.1 ms
    assert rows["AdamW step, s float32, against torch `fused=True`"] == ["1.1", "1.4", "1.27x |"]
    assert rows["AdamW step, s float32, against torch `foreach=True`"] == ["1", "6.5", "6.50x |"]
    # bfloat16 twice as fast as float32: the ratio reads as in the dtypes table
    assert rows["AdamW step, s: ours in bfloat16, against ours in float32"] == ["1", "2",
                                                                               "2.00x |"]
    # ours with master weights, 2.2 ms, against torch's recipe, 4.4 ms
    assert rows["AdamW step, s bfloat16 with float32 master weights, against torch's "
                "float32 copy + `fused=True` + `copy_`"] == ["2.2", "4.4", "2.00x |"]
    # and the first small set's torch fused, and the window end
    assert len(lines) == 2 + 6


def test_check_json_accepts_a_consistent_default_run(tmp_path, capsys):
    path = tmp_path / "run.json"
    report.write_json(path, _default_set(), meta=dict(argv=["--quick"], quick=True))
    assert check_json.main([str(path)]) == 0
    assert "8 tables checked" in capsys.readouterr().out


@pytest.mark.parametrize("break_run, message", [
    (lambda run: run["tables"].pop(), "scenarios ['dtypes', 'mixed', 'roofline', 'small', "
                                      "'step'], expected"),
    (lambda run: run["tables"][1]["rows"].clear(), "Headline: one AdamW step, s: no rows"),
    (lambda run: run["tables"][1]["rows"][3].update(ratio=2.0),
     "torch fused: ratio 2.0, expected its median / ours' median in its turns"),
    (lambda run: run["tables"][1]["rows"].pop(3), "expected ['ours', 'torch for-loop', "
                                                  "'torch foreach', 'torch fused'] first"),
    (lambda run: run["tables"][2]["rows"][0].update(median_ms=3.0, max_ms=3.0),
     "ratio not float32's median / bfloat16's, in the bfloat16 row"),
    (lambda run: run["tables"][7]["rows"][1].update(roofline_gbps=31.0),
     "the two window ends have different rooflines"),
    (lambda run: run["tables"][0]["rows"][0].update(median_ms=0.0, min_ms=0.0),
     "memory roofline: stream_roofline_ (7 streams): median 0.0 ms"),
    (lambda run: run["meta"].update(quick=False), "meta: quick is False"),
    (lambda run: run["tables"][4]["rows"][5].update(ratio=1.5),
     "ours bfloat16: ratio 1.5, expected 2.0"),
    (lambda run: run["tables"][5]["rows"][1].update(ratio=1.5),
     "torch float32 copy + fused + copy_: ratio 1.5, expected 2.0"),
    (lambda run: run["tables"][4]["rows"].pop(2),
     "rows ['ours float32', 'ours bfloat16 + master_weights', 'ours bfloat16 + "
     "stochastic_rounding'"),
    (lambda run: run["tables"][5]["rows"][0].update(held_bytes_per_param=8.0),
     "ours: held B/param 8.0, expected its held bytes / the param count"),
    (lambda run: run["tables"][4].update(notes=[]), "precision modes of ours: no note names "
                                                    "the CPU"),
])
def test_check_json_names_what_is_wrong(break_run, message):
    run = _run_dict(_default_set())
    assert check_json.problems_of(copy.deepcopy(run)) == []
    break_run(run)
    problems = check_json.problems_of(run)
    assert any(message in p for p in problems), problems


def test_check_json_expects_the_scenarios_the_run_was_asked_for():
    run = _run_dict([_dtypes_table()], argv=["--scenario", "dtypes", "--repeats", "1"])
    assert check_json.problems_of(run) == []
    run = _run_dict([_dtypes_table()], argv=["--scenario", "headline", "dtypes"])
    assert any("expected ['dtypes', 'step']" in p for p in check_json.problems_of(run))


def test_check_json_refuses_a_file_the_benchmark_did_not_write(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text('{"meta": {}}')
    with pytest.raises(SystemExit) as exit_info:
        check_json.main([str(path)])
    assert exit_info.value.code == 2
    assert "not a `python -m fused_accum.bench --json` file" in capsys.readouterr().err


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
    ours, fused = _by_header(table)
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


def test_held_bytes_counts_each_storage_once_at_its_allocated_size():
    t = torch.zeros(1000)
    assert mixed.held_bytes([t, t.view(10, 100), t[:10]]) == 4000
    assert mixed.held_bytes([t, torch.zeros(10, dtype=torch.bfloat16)]) == 4020


def test_torch_master_recipe_steps_a_float32_copy_and_rounds_it_into_the_params():
    """torch's recipe for master weights is what the mixed table says it is: AdamW
    (fused=True) over float32 copies stepped with the bfloat16 grads, the params the
    copies rounded; it holds 20 bytes per param (bfloat16 param and grad, float32 copy,
    its grad and two moments) and one step count per tensor."""
    params = make_params(shapes.uniform(3, 1000), torch.bfloat16, "cpu")
    copies = [p.detach().float().requires_grad_() for p in params]
    reference = torch.optim.AdamW(copies, lr=mixed.LR, weight_decay=mixed.WEIGHT_DECAY,
                                  fused=True)
    recipe = mixed.TorchMasterRecipe(params)
    for _ in range(3):
        recipe.step()
        for c, p in zip(copies, params):
            c.grad = p.grad.float()
        reference.step()
    for c, master, p in zip(copies, recipe.masters, params):
        torch.testing.assert_close(master, c, rtol=0, atol=0)
        torch.testing.assert_close(p, c.detach().bfloat16(), rtol=0, atol=0)
    assert mixed.held_bytes(recipe.tensors()) == 20 * 3000 + 4 * 3


# Bytes per param each mode holds: params, grads and state, less the step counts.
_HELD_PER_PARAM = {
    "ours float32": 4 + 4 + 8,
    "ours bfloat16 + master_weights": 2 + 2 + 4 + 8,
    "ours bfloat16 + kahan_summation": 2 + 2 + 2 + 4,
    "ours bfloat16 + stochastic_rounding": 2 + 2 + 4,
    "ours float32 + bfloat16 states": 4 + 4 + 4,
    "ours bfloat16": 2 + 2 + 4,
    mixed.TORCH_RECIPE: 2 + 2 + 4 + 4 + 8,
}


def test_mixed_scenario_times_every_mode_and_checks(monkeypatch):
    """The mixed scenario on a tiny set: two tables that check_json accepts, every row
    holding the bytes its layout allocates, the master-weights rows the same samples
    in both tables."""
    monkeypatch.setattr(shapes, "GPT_TINY", shapes.uniform(4, 4096))
    monkeypatch.setattr(scenarios, "REFILL_MS", 0.0)
    settings = scenarios.Settings(device=torch.device("cpu"), repeats=2, warmup=1,
                                  quick=True)
    tables = scenarios.mixed(settings)
    assert check_json.problems_of(_run_dict(tables, argv=["--quick", "--scenario", "mixed"])) \
        == []
    modes, master = tables
    assert [r.variant for r in modes.rows] == [m.name for m in mixed.MODES]
    assert [r.variant for r in master.rows] == ["ours", mixed.TORCH_RECIPE]
    assert master.rows[0].samples is modes.row(mixed.OURS_MASTER).samples
    for table in tables:
        for row in table.rows:
            name = mixed.OURS_MASTER if row.variant == "ours" else row.variant
            # one float32 step count (and with stochastic rounding one int64 seed) per tensor
            per_tensor = 4 + (8 if "stochastic" in name else 0)
            assert row.held_bytes == _HELD_PER_PARAM[name] * 4 * 4096 + per_tensor * 4, name
