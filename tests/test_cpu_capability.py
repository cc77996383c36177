"""The CPU Adam loops at every instruction-set level compute the same bits.

The loops are compiled once per level (csrc/cpu/isa/) and one is chosen when the
extension runs; FUSED_ACCUM_CPU_CAPABILITY picks another. Each level this CPU
supports steps the same configurations in its own process, and every level's
results must equal, bit for bit, each other's and those of the element functor
run one element at a time (torch.ops.fused_accum_testing.adam_step_).
"""

import itertools
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import fused_accum

ENV = "FUSED_ACCUM_CPU_CAPABILITY"
LEVELS = ["default", "avx2", "avx512"]
# Lengths around the lane widths (1, 8, 16): whole groups and partial last ones.
SHAPES = [(1000,), (37,), (1,), (3, 5)]
HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.05, eps=1e-8)
STEPS = 3


def configurations():
    """(name, param dtype, moment dtype, flags) of each configuration stepped."""
    configs = []
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    for dtype, (decoupled, amsgrad, maximize) in itertools.product(
            dtypes, itertools.product([False, True], repeat=3)):
        flags = dict(decoupled_weight_decay=decoupled, amsgrad=amsgrad, maximize=maximize,
                     # every other one unscales its grads (and writes them back)
                     unscale=(decoupled + amsgrad + maximize) % 2 == 1)
        name = (f"{str(dtype)[6:]} {'adamw' if decoupled else 'adam-l2'}"
                f"{' amsgrad' if amsgrad else ''}{' maximize' if maximize else ''}"
                f"{' unscale' if flags['unscale'] else ''}")
        configs.append((name, dtype, dtype, flags))
    # Moments in another dtype than the params.
    for dtype, state in [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)]:
        flags = dict(decoupled_weight_decay=True, amsgrad=True, maximize=False, unscale=False)
        configs.append((f"{str(dtype)[6:]} moments {str(state)[6:]}", dtype, state, flags))
    return configs


def run_configurations(ops):
    """Steps every configuration with `ops` (torch.ops.fused_accum or the testing
    library); returns {name: every tensor after the steps}."""
    results = {}
    for index, (name, dtype, state, flags) in enumerate(configurations()):
        g = torch.Generator().manual_seed(index)
        lists = {k: [] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs",
                                 "max_exp_avg_sqs", "state_steps")}
        for shape in SHAPES:
            lists["params"].append(torch.randn(shape, generator=g).to(dtype))
            lists["grads"].append(torch.randn(shape, generator=g).to(dtype))
            lists["exp_avgs"].append((0.1 * torch.randn(shape, generator=g)).to(state))
            lists["exp_avg_sqs"].append((0.01 * torch.rand(shape, generator=g)).to(state))
            if flags["amsgrad"]:
                lists["max_exp_avg_sqs"].append((0.02 * torch.rand(shape, generator=g)).to(state))
            lists["state_steps"].append(torch.tensor(2.0))
        before = [p.clone() for p in lists["params"]]
        kwargs = {k: v for k, v in flags.items() if k != "unscale"}
        for _ in range(STEPS):
            ops.adam_step_(**lists, master_params=[], compensations=[], rounding_seeds=[],
                           **HYPER, **kwargs,
                           grad_scale=torch.tensor(4.0) if flags["unscale"] else None)
        # The steps happened (equal no-ops would prove nothing).
        assert not torch.equal(before[0], lists["params"][0]), name
        results[name] = lists
    return results


def run_at_level(level, path):
    """Starts a process that steps every configuration at `level` and saves them to `path`."""
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import fused_accum; "
            "import test_cpu_capability as t; "
            "assert fused_accum.build_info()['cpu_capability'] == sys.argv[3]; "
            "torch.save(t.run_configurations(torch.ops.fused_accum), sys.argv[2])")
    env = dict(os.environ, **{ENV: level})
    return subprocess.Popen([sys.executable, "-c", code, os.path.dirname(__file__), path, level],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_python(code, level):
    env = dict(os.environ, **{ENV: level})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def usable_levels():
    info = fused_accum.build_info()
    return [level for level in LEVELS
            if level in info["cpu_capabilities_supported"]
            and level in info["cpu_capabilities_compiled"]]


def test_build_info_names_the_level_in_use():
    info = fused_accum.build_info()
    assert set(info["cpu_capabilities_supported"]) <= set(LEVELS)
    assert set(info["cpu_capabilities_compiled"]) <= set(LEVELS)
    assert "default" in info["cpu_capabilities_supported"]
    assert "default" in info["cpu_capabilities_compiled"]
    assert info["cpu_capability"] in info["cpu_capabilities_supported"]
    assert info["cpu_capability"] in info["cpu_capabilities_compiled"]
    asked = os.environ.get(ENV, "").lower()
    # Unless told otherwise, the best level that can run.
    assert info["cpu_capability"] == (asked or usable_levels()[-1])


def test_every_level_steps_bit_for_bit_as_the_element_functor():
    levels = usable_levels()
    with tempfile.TemporaryDirectory() as folder:
        paths = {level: os.path.join(folder, f"{level}.pt") for level in levels}
        processes = {level: run_at_level(level, paths[level]) for level in levels}
        reference = run_configurations(torch.ops.fused_accum_testing)
        for level, process in processes.items():
            output, _ = process.communicate(timeout=300)
            assert process.returncode == 0, f"{level}:\n{output}"
        results = {level: torch.load(paths[level]) for level in levels}
    for level in levels:
        assert results[level].keys() == reference.keys()
        for name, lists in reference.items():
            for key, tensors in lists.items():
                for i, (ours, theirs) in enumerate(zip(results[level][name][key], tensors)):
                    assert ours.dtype == theirs.dtype
                    assert torch.equal(ours, theirs), (level, name, key, SHAPES[i])


CHECK_ERROR = """
import fused_accum, torch
for what, call in [
        ("build_info", fused_accum.build_info),
        ("adam_step_", lambda: torch.ops.fused_accum.adam_step_(
            [torch.ones(3)], [torch.ones(3)], [torch.zeros(3)], [torch.zeros(3)], [],
            [torch.tensor(0.0)], [], [], [], lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0,
            eps=1e-8, amsgrad=False, maximize=False, decoupled_weight_decay=True))]:
    try:
        call()
    except RuntimeError as e:
        print(what, "raised:", e)
    else:
        print(what, "did not raise")
"""


def assert_clear_error(level, *expected):
    done = run_python(CHECK_ERROR, level)
    assert done.returncode == 0, done.stdout + done.stderr  # the import itself works
    lines = [line for line in done.stdout.splitlines() if "raise" in line]
    assert [line.split()[0] for line in lines] == ["build_info", "adam_step_"], done.stdout
    for line in lines:
        assert "raised:" in line, line
        for text in (ENV, level) + expected:
            assert text in line, line


def test_a_value_that_names_no_level_is_an_error():
    assert_clear_error("avx3", "default, avx2, avx512", "usable on this CPU: default")


def test_a_level_this_cpu_lacks_is_an_error():
    supported = fused_accum.build_info()["cpu_capabilities_supported"]
    missing = [level for level in LEVELS if level not in supported]
    if not missing:
        pytest.skip("this CPU supports every level")
    assert_clear_error(missing[-1].upper(), "does not support " + missing[-1],
                       "usable on this CPU: " + ", ".join(usable_levels()))
