"""The machine a run measures: its CPU and memory, as the tables name them."""

import os
import platform

import fused_accum


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20)
    except OSError:
        pass
    return None


def cpu_kernels(build):
    """What fused_accum's CPU kernels run, from its build_info(): the instruction-set
    level chosen at run time and those compiled, or, from a build that compiled one
    level only, that level and its -march."""
    if "cpu_capability" in build:
        compiled = ", ".join(build.get("cpu_capabilities_compiled") or [])
        return f"{build['cpu_capability']} (chosen at run time; compiled: {compiled})"
    return (f"{build.get('cpu_instruction_set', '?')} "
            f"(`-march={build.get('cpu_arch_flag', '?')}`)")


def cpu_line():
    """One line naming the CPU and the instruction set fused_accum's kernels use."""
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; fused_accum's CPU kernels: "
            f"{cpu_kernels(fused_accum.build_info())}")
