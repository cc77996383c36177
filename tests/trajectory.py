"""Runs an optimizer over a fixed sequence of gradients so two optimizers can be compared.

Gradients are generated up front and handed to every optimizer as fresh copies, so a
difference in the results can only come from the step itself.
"""

import torch


def make_tensors(shapes, dtype, seed):
    """Initial param values, contiguous."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        real_dtype = dtype.to_real() if dtype.is_complex else dtype
        t = torch.randn(shape, generator=gen, dtype=torch.float64).to(real_dtype)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(shape, generator=gen, dtype=torch.float64).to(real_dtype))
        out.append(t)
    return out


def make_grad_sequence(params, steps, seed, zero_grad_every=0):
    """One list of grads per step, laid out like the params (as autograd lays them out)."""
    gen = torch.Generator().manual_seed(seed)
    seq = []
    for step in range(steps):
        grads = []
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.is_complex():
                g = torch.complex(g, torch.randn(p.shape, generator=gen, dtype=torch.float64))
            g = g.to(p.dtype)
            if zero_grad_every and step % zero_grad_every == 0:
                g = torch.zeros_like(g)
            grads.append(torch.empty_like(p).copy_(g))
        seq.append(grads)
    return seq


def clone_params(params, layout=None):
    """Fresh params; `layout(t)` may give each a non-contiguous or channels_last layout."""
    layout = layout or (lambda t: t)
    return [torch.nn.Parameter(layout(p.clone())) for p in params]


def run(make_optimizer, init, grad_seq, cast=None, layout=None):
    """Steps a fresh optimizer over grad_seq; returns (params, optimizer).

    Grads are laid out as autograd lays them out: like a dense param, contiguous otherwise.
    """
    params = clone_params(init if cast is None else [p.to(cast) for p in init], layout)
    opt = make_optimizer(params)
    for grads in grad_seq:
        for p, g in zip(params, grads):
            p.grad = torch.empty_like(p).copy_(g if cast is None else g.to(cast))
        opt.step()
    return params, opt


STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def assert_same_trajectory(ours, ref, atol=None, rtol=None):
    """Params and every state tensor agree (torch's default tolerances unless given)."""
    (our_params, our_opt), (ref_params, ref_opt) = ours, ref
    for i, (a, b) in enumerate(zip(our_params, ref_params)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"param {i}: {m}")
        sa, sb = our_opt.state[a], ref_opt.state[b]
        assert set(sa) == set(sb), f"param {i}: state keys {set(sa)} != {set(sb)}"
        for key in STATE_KEYS:
            if key in sb:
                torch.testing.assert_close(
                    sa[key].cpu().to(sb[key].dtype), sb[key].cpu(), atol=atol, rtol=rtol,
                    msg=lambda m: f"param {i} state {key}: {m}")


def max_ulp_float32(a, b):
    """Largest distance in float32 units in the last place between two float32 tensors."""
    assert a.dtype == b.dtype == torch.float32
    ia = a.contiguous().view(torch.int32).to(torch.int64)
    ib = b.contiguous().view(torch.int32).to(torch.int64)
    # Map the sign-magnitude bit patterns onto a monotonic integer line.
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int((ia - ib).abs().max()) if a.numel() else 0
