"""The CUDA launcher's chunk planner (csrc/cuda/launch_plan.h), run through the CPU build.

The kernels trust the plan blindly: a chunk planned twice is updated twice, a chunk never
planned is never updated, and a table larger than the kernel argument overflows it. So the
plan is checked against a plain Python model of which (tensor, chunk) pairs each launch
must cover, on machines without a GPU.
"""

import math

import pytest
import torch

import fused_accum  # noqa: F401  (registers torch.ops.fused_accum_testing)

plan_chunks = torch.ops.fused_accum_testing.plan_chunks
launch_capacity = torch.ops.fused_accum_testing.launch_capacity


def model_launches(numels, chunk_size, max_tensors, max_blocks):
    """Launches as lists of (tensor, chunk): every chunk of every tensor in order, a new
    launch whenever the next chunk would need a block or a tensor slot beyond the limits."""
    launches = [[]]
    for tensor, numel in enumerate(numels):
        for chunk in range(math.ceil(numel / chunk_size)):
            current = launches[-1]
            tensors = {t for t, _ in current}
            needs_slot = tensor not in tensors
            if len(current) == max_blocks or (needs_slot and len(tensors) == max_tensors):
                launches.append([])
            launches[-1].append((tensor, chunk))
    return [launch for launch in launches if launch]


def planned_launches(numels, chunk_size, max_tensors, max_blocks):
    rows = plan_chunks(numels, chunk_size, max_tensors, max_blocks)
    assert len(rows) % 5 == 0
    launches, global_blocks, slot_tables = [], [], []
    for i in range(0, len(rows), 5):
        launch, global_block, slot, tensor, chunk = rows[i:i + 5]
        if launch == len(launches):
            launches.append([])
            slot_tables.append({})
        assert launch == len(launches) - 1, "launches must come in order"
        launches[launch].append((tensor, chunk))
        global_blocks.append(global_block)
        # A slot names one tensor within a launch, and slots are numbered densely from 0.
        assert slot_tables[launch].setdefault(slot, tensor) == tensor
    for table in slot_tables:
        assert sorted(table) == list(range(len(table)))
        assert len(set(table.values())) == len(table)
    # The global block index addresses per-block partial sums: 0, 1, 2, ... over all launches.
    assert global_blocks == list(range(len(global_blocks)))
    return launches


CASES = {
    "no tensors": ([], 4, 3, 5),
    "empty tensors only": ([0, 0, 0], 4, 3, 5),
    "one element": ([1], 4, 3, 5),
    "odd sizes": ([7, 1, 13, 5], 4, 3, 5),
    "exactly one chunk each": ([4, 4, 4], 4, 3, 5),
    "empty between non-empty": ([5, 0, 9, 0, 0, 3], 4, 3, 5),
    "more tensors than slots": ([1] * 10, 4, 3, 100),
    "more blocks than fit": ([4 * 23], 4, 3, 5),
    "tensor spanning launches then slots full": ([17, 2, 2, 9, 30, 1, 1, 1], 4, 3, 5),
    "one slot per launch": ([9, 9, 1], 4, 1, 2),
}


@pytest.mark.parametrize("numels, chunk_size, max_tensors, max_blocks", CASES.values(),
                         ids=CASES.keys())
def test_plan_matches_model(numels, chunk_size, max_tensors, max_blocks):
    planned = planned_launches(numels, chunk_size, max_tensors, max_blocks)
    assert planned == model_launches(numels, chunk_size, max_tensors, max_blocks)
    for launch in planned:
        assert len(launch) <= max_blocks
        assert len({t for t, _ in launch}) <= max_tensors
    covered = [pair for launch in planned for pair in launch]
    expected = [(t, c) for t, n in enumerate(numels) for c in range(math.ceil(n / chunk_size))]
    assert covered == expected


def test_model_splits_where_expected():
    # The model itself, on a case small enough to write out by hand.
    # Launch 1 is full of blocks; launch 2 has its two tensor slots taken when tensor 3 comes.
    assert model_launches([5, 1, 1, 3], 2, 2, 3) == [[(0, 0), (0, 1), (0, 2)],
                                                     [(1, 0), (2, 0)],
                                                     [(3, 0), (3, 1)]]


@pytest.mark.parametrize("depth", [1, 2, 5, 6])
def test_real_capacities_cover_large_lists(depth):
    # The limits the CUDA launcher uses (depth 1: sums and step counts; 2: accumulation;
    # 5 and 6: Adam without and with amsgrad, plus the step pointers).
    max_tensors, max_blocks, chunk_size, meta_bytes = launch_capacity(depth)
    # The by-value metadata: addresses, numels, first block, one-byte slot + int32 chunk.
    assert 8 * depth * max_tensors + 8 * max_tensors + 16 + 5 * max_blocks <= meta_bytes
    assert meta_bytes < 4096
    assert 1 <= max_tensors <= 255
    numels = [0, 1, chunk_size, chunk_size + 1, 3] + [2] * (max_tensors + 7) + [
        chunk_size * (max_blocks + 3) - 1]
    planned = planned_launches(numels, chunk_size, max_tensors, max_blocks)
    assert planned == model_launches(numels, chunk_size, max_tensors, max_blocks)
    assert len(planned) >= 3


def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match="chunk_size must be positive"):
        plan_chunks([1], 0, 1, 1)
    with pytest.raises(RuntimeError, match=r"numels\[1\] must be >= 0"):
        plan_chunks([1, -2], 4, 1, 1)
    with pytest.raises(RuntimeError, match=r"max_tensors must be in \[1, 255\]"):
        plan_chunks([1], 4, 256, 1)
