"""Tests of `python -m fused_accum.bench.spread`: the spread over runs of each ratio,
from JSON files the benchmark writes."""

import pytest

from fused_accum.bench import spread
from fused_accum.bench.report import write_json
from fused_accum.bench.results import Row, Table
from fused_accum.bench.timing import Samples


def _step_table(ours_ms, fused_ms, ours_beside_ms, roofline_gbps):
    table = Table(scenario="step", title="one AdamW step, s", shape_set="s", params=1,
                  tensors=1, dtype="float32", device="cpu")
    table.rows = [Row("ours", Samples((ours_ms,)), 28e6, roofline_gbps=roofline_gbps),
                  Row("torch fused", Samples((fused_ms,)), 28e6, roofline_gbps=roofline_gbps,
                      ours_beside_ms=ours_beside_ms)]
    return table


def _dtypes_table(fp32_ms, bf16_ms):
    table = Table(scenario="dtypes", title="float32 against bfloat16", shape_set="s",
                  params=1, tensors=1, dtype="float32, bfloat16", device="cpu",
                  reference="ours float32")
    table.rows = [Row("ours float32", Samples((fp32_ms,)), 28e6),
                  Row("ours bfloat16", Samples((bf16_ms,)), 14e6)]
    return table


def _write_runs(tmp_path, runs):
    paths = []
    for i, tables in enumerate(runs):
        path = tmp_path / f"run{i}.json"
        write_json(path, tables, meta={})
        paths.append(str(path))
    return paths


def _row(output, title, variant):
    """The cells after the variant's name in the table under `title`."""
    lines = output.splitlines()
    start = lines.index(title)
    return next(line[len(variant):].split() for line in lines[start:]
                if line.startswith(variant + " "))


def test_min_median_max_of_each_ratio_over_runs(tmp_path, capsys):
    # torch fused / ours in turn: 1.1, 0.9, 1.3; ours' GB/s over the roofline: 28 MB
    # in 1 ms is 28 GB/s, over 40, 28 and 56 GB/s.
    paths = _write_runs(tmp_path, [
        [_step_table(1.0, 11.0, 10.0, 40.0), _dtypes_table(2.0, 1.0)],
        [_step_table(1.0, 9.0, 10.0, 28.0), _dtypes_table(3.0, 1.0)],
        [_step_table(1.0, 13.0, 10.0, 56.0), _dtypes_table(1.5, 1.0)],
    ])
    assert spread.main(paths) == 0
    out = capsys.readouterr().out
    assert _row(out, "one AdamW step, s", "torch fused")[:4] == ["3", "0.90", "1.10", "1.30"]
    assert _row(out, "one AdamW step, s", "ours") == ["3", "-", "-", "-", "50%", "70%",
                                                          "100%"]
    # The dtypes table's ratio sits in its bfloat16 row, under the run's own header.
    assert "faster than ours float32 by: min" in out
    assert _row(out, "float32 against bfloat16", "ours bfloat16")[:4] == ["3", "1.50", "2.00",
                                                                           "3.00"]
    assert not any(line.startswith("ours float32 ") for line in out.splitlines())


def test_a_table_only_some_runs_have_counts_those_runs(tmp_path, capsys):
    paths = _write_runs(tmp_path, [[_step_table(1.0, 11.0, 10.0, 40.0)],
                                   [_step_table(1.0, 9.0, 10.0, 40.0),
                                    _dtypes_table(2.0, 1.0)]])
    spread.main(paths)
    out = capsys.readouterr().out
    assert _row(out, "one AdamW step, s", "torch fused")[0] == "2"
    assert _row(out, "float32 against bfloat16", "ours bfloat16")[:2] == ["1", "2.00"]


@pytest.mark.parametrize("content, message", [
    ('{"meta": {}}', "not a `python -m fused_accum.bench --json` file"),
    ('{"tables": [{"rows": []}]}', "not a `python -m fused_accum.bench --json` file"),
    ("[1, 2", "not JSON"),
])
def test_a_file_the_benchmark_did_not_write_is_refused_by_name(tmp_path, capsys, content,
                                                                 message):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        spread.main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err
