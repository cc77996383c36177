"""A FusedAdamW + GradAccumulator run killed with SIGKILL and resumed from its last
checkpoint in a new process ends with the params of an uninterrupted run, bit for bit."""

import os
import pathlib
import select
import signal
import subprocess
import sys
import time

import torch

import fused_accum

SCRIPT = pathlib.Path(__file__).with_name("crash_resume_train.py")
# The package under test, not another one on the path.
ENV = {**os.environ, "PYTHONPATH": str(pathlib.Path(fused_accum.__file__).parents[1])}
TIMEOUT_S = 60


def start(*args):
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def read_line(process, timeout_s):
    """The process's next output line, or "" when it exits or the time is up."""
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    return process.stdout.readline().strip() if ready else ""


def finish(process):
    """Waits for a clean exit; returns the output."""
    out, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0
    return out


def test_sigkill_mid_window_then_resume_equals_an_uninterrupted_run(tmp_path):
    uninterrupted = start(tmp_path / "u.ckpt", tmp_path / "u.pt")
    # The 4th checkpoint is saved after micro-batch 8, 2 into a window of 3; the run
    # then completes that window (a step the checkpoint does not hold) and is killed.
    crashed = start(tmp_path / "c.ckpt", tmp_path / "c.pt", "--hang-after", 4)
    processes = [uninterrupted, crashed]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        assert read_line(crashed, deadline - time.monotonic()) == "checkpoint 4"
        assert crashed.poll() is None
        crashed.send_signal(signal.SIGKILL)
        assert crashed.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
        assert not (tmp_path / "c.pt").exists()
        resumed = start(tmp_path / "c.ckpt", tmp_path / "c.pt", "--resume")
        processes.append(resumed)
        assert finish(resumed).splitlines()[0] == "resumed after micro-batch 8, 2 in the window"
        finish(uninterrupted)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    final, reference = torch.load(tmp_path / "c.pt"), torch.load(tmp_path / "u.pt")
    assert [p.dtype for p in final] == [torch.bfloat16] * 2 + [torch.float32] * 2
    for p, q in zip(final, reference):
        assert torch.equal(p, q)
