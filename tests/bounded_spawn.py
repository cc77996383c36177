"""Multi-process tests that cannot hang: gloo process groups with a timeout, and a
spawn whose join has a deadline."""

import datetime
import socket
import time

import torch.distributed as dist
import torch.multiprocessing as mp

# A collective that waits longer than this (a rank died or diverged) raises.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank, world, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=COLLECTIVE_TIMEOUT)


def spawn(fn, args, nprocs, timeout_s):
    """mp.spawn(fn, args, nprocs), failing after timeout_s seconds instead of hanging:
    the processes still running then are killed."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
            raise TimeoutError(f"{nprocs} processes of {fn.__name__} still ran after "
                               f"{timeout_s} s")
