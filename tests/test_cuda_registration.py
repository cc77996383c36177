"""Every fused_accum operator has a kernel for each backend the build claims.

Not skipped without a GPU: registration happens when the extension is imported, so a CUDA
build that silently lost its CUDA kernels (a source left out of the glob, a registration
block compiled out) fails here, on the build machine, instead of falling back or erroring
for a user.
"""

import pytest
import torch

import fused_accum

EXPECTED_OPS = {
    "fused_accum::adam_step_",
    "fused_accum::adam_step_.tensor_lr",
    "fused_accum::adam_window_step_",
    "fused_accum::adam_window_step_.tensor_lr",
    "fused_accum::accumulate_",
    "fused_accum::sum_of_squares",
}


def fused_accum_ops():
    return {name for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("fused_accum::")}


def test_namespace_holds_the_expected_ops():
    # Guards the test below against an empty list: it must see every operator.
    assert fused_accum_ops() >= EXPECTED_OPS


def test_every_op_has_a_cpu_kernel():
    missing = sorted(op for op in fused_accum_ops()
                     if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"))
    assert missing == []


@pytest.mark.skipif(not fused_accum.build_info()["cuda"],
                    reason="CPU-only build: the CUDA kernels were not compiled")
def test_every_op_has_a_cuda_kernel():
    missing = sorted(op for op in fused_accum_ops()
                     if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"))
    assert missing == []


def test_cuda_build_matches_torch():
    # A CUDA torch with a toolkit present builds the CUDA kernels by default; a build that
    # claims CUDA must have a CUDA torch underneath.
    if fused_accum.build_info()["cuda"]:
        assert torch.version.cuda is not None
        assert fused_accum.build_info()["cuda_archs"]
