"""Allocates the params and gradients a benchmark steps."""

import math

import torch


def nbytes(tensors):
    """Bytes the tensors' elements occupy, together."""
    return sum(t.numel() * t.element_size() for t in tensors)


def set_bytes(shape_set, dtype):
    """Bytes of one tensor per shape (params, or grads, or one moment)."""
    return shape_set.numel * torch.empty((), dtype=dtype).element_size()


def make_params(shape_set, dtype, device, grads=True):
    """Parameters drawn like a freshly initialised model, grads drawn from randn.

    Seeded, so every run steps the same numbers.
    """
    torch.manual_seed(0)
    params = []
    for shape in shape_set.shapes:
        p = torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device).normal_(std=0.02))
        if grads:
            p.grad = torch.randn(shape, dtype=dtype, device=device)
        params.append(p)
    assert sum(math.prod(p.shape) for p in params) == shape_set.numel
    return params
