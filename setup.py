"""Build of the fused_accum extension.

Environment switches:
  FUSED_ACCUM_CUDA=auto|0|1   auto (default): compile the CUDA kernels when torch is a CUDA
                              build and a CUDA toolkit is found; 1: required, fail loudly
                              otherwise; 0: CPU only.
  FUSED_ACCUM_CPU_ARCH=NAME   the -march for the CPU kernels (default: native).
  TORCH_CUDA_ARCH_LIST        as for any torch extension; with no GPU visible and no list,
                              8.0;9.0+PTX.
  MAX_JOBS                    parallel compile jobs (ninja), as for any torch extension.
"""

import glob
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


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


def main():
    import torch

    build_cuda, reason = configure_cuda(torch.version.cuda is not None)
    # torch.utils.cpp_extension reads CUDA_HOME when imported: import it only now.
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpu_arch = os.environ.get("FUSED_ACCUM_CPU_ARCH", "native")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    defines = [f'-DFUSED_ACCUM_TORCH_VERSION="{torch.__version__}"',
               f'-DFUSED_ACCUM_CPU_ARCH="{cpu_arch}"']
    # No contraction: the only fused multiply-add in the math is the explicit one, on
    # every backend, so CPU and CUDA round alike and float32 matches torch bit for bit.
    cxx_flags = ["-O3", f"-march={cpu_arch}", "-fopenmp", "-ffp-contract=off",
                 "-fno-math-errno"]
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
          f"CPU -march={cpu_arch}")

    with open(os.path.join(ROOT, "fused_accum", "_build_config.py"), "w") as f:
        f.write("# Written by setup.py: what the compiled extension was built against.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {build_cuda!r}\n")

    setup(
        packages=find_packages(include=["fused_accum", "fused_accum.*"]),
        ext_modules=[extension("fused_accum._C", sources, extra_compile_args=extra)],
        cmdclass={"build_ext": BuildExtension},
    )


main()
