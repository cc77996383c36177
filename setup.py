"""Build of the fused_accum extension.

Environment switches:
  FUSED_ACCUM_CUDA=auto|0|1   auto (default): compile the CUDA kernels when torch is a CUDA
                              build and a CUDA toolkit is found; 1: required, fail loudly
                              otherwise; 0: CPU only.
  TORCH_CUDA_ARCH_LIST        as for any torch extension; with no GPU visible and no list,
                              8.0;9.0+PTX.
  MAX_JOBS                    parallel compile jobs, as for any torch extension.

CPU instruction sets: the CPU Adam loops (csrc/cpu/isa/) are compiled once per level, as
ATen compiles its CPU kernels: baseline, AVX2 and AVX-512 on x86-64, baseline only on
other machines. The extension runs the best level the CPU supports
(FUSED_ACCUM_CPU_CAPABILITY=default|avx2|avx512 overrides it when it runs; see
fused_accum.build_info()). Everything else is compiled for the baseline of the target, so a
build runs on every CPU of its architecture, whichever machine built it.
"""

import concurrent.futures
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import threading

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

# The loops see no ATen (csrc/cpu/adam_kernel.h), so they build without torch's
# include paths. No contraction, as for the other sources (see main()).
ISA_COMMON_FLAGS = ["-O3", "-fPIC", "-std=c++17", "-ffp-contract=off", "-fno-math-errno",
                    "-DNDEBUG", "-DFUSED_ACCUM_WITHOUT_C10", "-Wall"]
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
CPU_LEVELS = {  # level: its source's flags, lowest level first
    "default": [],
    "avx2": AVX2_FLAGS,
    "avx512": AVX2_FLAGS + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
}


def cpu_levels():
    """The levels to compile: the AVX ones exist only on x86-64."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return list(CPU_LEVELS)
    return ["default"]


def is_stale(obj, command):
    """Whether `obj` needs compiling: a new command, or a file it was built from
    (the compiler's dependency list, written next to it) changed since."""
    try:
        with open(obj + ".cmd") as f:
            if f.read() != " ".join(command):
                return True
        with open(obj + ".d") as f:
            deps = f.read().replace("\\\n", " ").split()[1:]  # "obj: dep dep ..."
        built = os.path.getmtime(obj)
        return any(os.path.getmtime(dep) > built for dep in deps)
    except OSError:
        return True


def isa_symbol_leaks(obj, level):
    """Weak symbols of an object compiled for `level` that lie outside its namespace.

    The linker keeps one copy of each weak (inline or template) symbol: one that an
    AVX2 object defines could be the copy baseline code calls on a CPU without AVX2.
    Names that contain the level's namespace are its own, even template arguments.
    """
    nm = shutil.which("nm")
    if nm is None:
        return []
    out = subprocess.run([nm, "-C", "--defined-only", obj], capture_output=True, text=True,
                         check=True).stdout
    leaks = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in ("W", "V", "u") and f"::isa_{level}::" not in parts[2]:
            leaks.append(parts[2])
    return leaks


def cuda_mode():
    mode = os.environ.get("FUSED_ACCUM_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"FUSED_ACCUM_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def has_cudart(root):
    patterns = ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*")
    return any(glob.glob(os.path.join(root, p)) for p in patterns)


def toolkit_root_of_nvcc(nvcc):
    """The toolkit folder an nvcc really runs from.

    nvcc on PATH may be a wrapper script outside the toolkit (torch then guesses the
    wrong CUDA_HOME and linking fails on -lcudart); nvcc's dry run prints its TOP.
    """
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if match:
        return os.path.realpath(match.group(1).strip())
    return os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(nvcc)), ".."))


def find_cuda_home():
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(toolkit_root_of_nvcc(nvcc))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")) and has_cudart(root):
            return root
    return None


def configure_cuda(torch_has_cuda):
    """Returns (build_cuda, reason) and points torch's extension builder at the toolkit."""
    mode = cuda_mode()
    if mode == "0":
        return False, "FUSED_ACCUM_CUDA=0"
    cuda_home = find_cuda_home()
    problem = None
    if not torch_has_cuda:
        problem = "the installed torch is a CPU-only build"
    elif cuda_home is None:
        problem = "no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)"
    if problem:
        if mode == "1":
            raise SystemExit(f"FUSED_ACCUM_CUDA=1 but {problem}")
        return False, problem
    os.environ["CUDA_HOME"] = cuda_home
    return True, f"toolkit at {cuda_home}"


def build_ext_with_cpu_levels(base, levels, extra_flags):
    """`base` (torch's BuildExtension) that first compiles the per-level loops.

    torch's builder gives every source the same flags; these objects each need their
    own, so they are compiled here, in parallel, into the build's temp folder, and
    linked in as extra objects.
    """
    from torch.utils.cpp_extension import get_cxx_compiler

    class BuildExtWithCpuLevels(base):
        def build_extensions(self):
            objects = self.compile_cpu_levels()
            for ext in self.extensions:
                ext.extra_objects = list(ext.extra_objects or []) + objects
                ext.depends = list(ext.depends or []) + objects
            super().build_extensions()

        def compile_cpu_levels(self):
            jobs = []
            for level in levels:
                source = f"csrc/cpu/isa/adam_loops_{level}.cpp"
                obj = os.path.abspath(os.path.join(self.build_temp, f"adam_loops_{level}.o"))
                command = ([get_cxx_compiler()] + ISA_COMMON_FLAGS + CPU_LEVELS[level] +
                           extra_flags + [f"-I{os.path.join(ROOT, 'csrc')}", "-MMD", "-MF",
                                          obj + ".d", "-c", os.path.join(ROOT, source), "-o",
                                          obj])
                jobs.append((level, source, obj, command))
            # Not self.force: torch's builder always sets it and leaves staleness to ninja.
            stale = [job for job in jobs if is_stale(job[2], job[3])]
            max_jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
            printing = threading.Lock()
            counter = iter(range(1, len(stale) + 1))

            def compile_one(job):
                level, source, obj, command = job
                with printing:
                    print(f"[{next(counter)}/{len(stale)}] {source}", flush=True)
                os.makedirs(os.path.dirname(obj), exist_ok=True)
                done = subprocess.run(command, capture_output=True, text=True)
                with printing:
                    sys.stdout.write(done.stdout + done.stderr)
                    sys.stdout.flush()
                if done.returncode != 0:
                    raise SystemExit(f"compiling {source} failed: {' '.join(command)}")
                if level != "default":
                    leaks = isa_symbol_leaks(obj, level)
                    if leaks:
                        os.remove(obj)
                        raise SystemExit(
                            f"{source} defines weak symbols outside namespace isa_{level}, "
                            "which the linker may pick for baseline code: " + "; ".join(leaks))
                with open(obj + ".cmd", "w") as f:
                    f.write(" ".join(command))

            if stale:
                workers = max(1, min(max_jobs, len(stale)))
                with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                    for future in [pool.submit(compile_one, job) for job in stale]:
                        future.result()
            return [obj for _, _, obj, _ in jobs]

    return BuildExtWithCpuLevels


def main():
    import torch

    build_cuda, reason = configure_cuda(torch.version.cuda is not None)
    # torch.utils.cpp_extension reads CUDA_HOME when imported: import it only now.
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    levels = cpu_levels()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    defines = [f'-DFUSED_ACCUM_TORCH_VERSION="{torch.__version__}"']
    if "avx2" in levels:
        defines.append("-DFUSED_ACCUM_WITH_AVX_LOOPS")
    # No contraction: the only fused multiply-add in the math is the explicit one, on
    # every backend, so CPU and CUDA round alike and float32 matches torch bit for bit.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    extra = {"cxx": cxx_flags + defines}
    extension = CppExtension
    cuda_archs = None
    if build_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        cuda_archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "detected from visible GPUs")
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        cuda_defines = ["-DFUSED_ACCUM_WITH_CUDA",
                        f'-DFUSED_ACCUM_CUDA_VERSION="{torch.version.cuda}"',
                        f'-DFUSED_ACCUM_CUDA_ARCHS="{cuda_archs}"']
        extra["cxx"] += cuda_defines
        extra["nvcc"] = ["-O3", "--fmad=false"] + defines + cuda_defines
        extension = CUDAExtension
    print(f"fused_accum: CUDA kernels {'on' if build_cuda else 'off'} ({reason}); "
          f"CPU loops for {', '.join(levels)}")

    with open(os.path.join(ROOT, "fused_accum", "_build_config.py"), "w") as f:
        f.write("# Written by setup.py: what the compiled extension was built against.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {build_cuda!r}\n")

    isa_sources = [f"csrc/cpu/isa/adam_loops_{level}.cpp" for level in levels]
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True) +
                     glob.glob("csrc/**/*.cuh", recursive=True))
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    build_ext = build_ext_with_cpu_levels(BuildExtension, levels, [abi])
    setup(
        packages=find_packages(include=["fused_accum", "fused_accum.*"]),
        # depends: without ninja, setuptools rebuilds when one of these is newer than
        # the library.
        ext_modules=[extension("fused_accum._C", sources, extra_compile_args=extra,
                               depends=headers + isa_sources)],
        cmdclass={"build_ext": build_ext},
    )


main()
