"""Peak extra memory of one call, and how much memory the benchmarks may use.

CPU: the growth of the process's resident set during the call. Writing 5 to
/proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the current
RSS; VmHWM after the call minus RSS before it is the memory the call newly touched
at its peak: temporaries it allocates, and first touches of lazily created buffers.
Memory the allocator already holds from earlier calls and reuses is not counted,
which is why callers measure after warm-up (steady state, as in a training loop).
CUDA: torch.cuda.max_memory_allocated above the allocation before the call.
"""

import torch

_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_high_water_mark():
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn, device):
    """Calls fn once; returns its peak extra memory in bytes, or None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if not _reset_high_water_mark():
        fn()
        return None  # no /proc (not Linux) or not permitted
    before = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def available_bytes(device):
    """Memory a benchmark may still allocate on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # unknown: callers do not skip on memory grounds


# What one benchmark process may hold at once: the development machine has 24 GiB,
# shared with builds and other work.
PROCESS_CAP_BYTES = 18 * 10**9
# Left free for the rest of the machine when deciding whether a new allocation fits.
_MARGIN_BYTES = 1 << 30


def fits(new_bytes, total_bytes, device, released_bytes=0):
    """Whether allocating `new_bytes` more, holding `total_bytes` in all, is safe,
    once `released_bytes` now held are freed."""
    if device.type == "cpu" and total_bytes > PROCESS_CAP_BYTES:
        return False
    available = available_bytes(device)
    return available is None or new_bytes + _MARGIN_BYTES <= available + released_bytes
