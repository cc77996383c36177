"""Runs a test's worker function in several processes, bounded in time."""

import socket
import time

import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, args, nprocs, timeout_s):
    """mp.spawn(worker, args, nprocs), failing with TimeoutError (and the workers
    ended) when they have not all finished after timeout_s seconds. A worker's
    exception is raised here, as mp.spawn raises it."""
    context = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            raise TimeoutError(f"{nprocs} workers still running after {timeout_s} s")
