"""The tensor sets the benchmarks step: model parameter shapes and synthetic sets."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSet:
    name: str
    shapes: tuple  # tuple of shape tuples, one per tensor

    @property
    def numel(self):
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self):
        return len(self.shapes)


def gpt2_shapes(n_layer, d_model, vocab=50257, n_ctx=1024):
    """Parameter shapes of a GPT-2 style model (HF GPT2Model, lm_head tied to wte)."""
    d, d_ff = d_model, 4 * d_model
    layer = [(d,), (d,),                      # ln_1 weight, bias
             (d, 3 * d), (3 * d,),            # attn.c_attn
             (d, d), (d,),                    # attn.c_proj
             (d,), (d,),                      # ln_2
             (d, d_ff), (d_ff,),              # mlp.c_fc
             (d_ff, d), (d,)]                 # mlp.c_proj
    return tuple([(vocab, d), (n_ctx, d)] + layer * n_layer + [(d,), (d,)])


# 124,439,808 params in 148 tensors: GPT-2 small (12 layers, d_model 768, 50257 tokens).
GPT2_SMALL = ShapeSet("gpt2-small", gpt2_shapes(n_layer=12, d_model=768))
# The same layout widened to about one billion params (1,011,476,480 in 220 tensors).
GPT_1B = ShapeSet("gpt-1b", gpt2_shapes(n_layer=18, d_model=2048))
# A GPT-2 layout small enough for --quick smoke runs (about 0.6M params).
GPT_TINY = ShapeSet("gpt-tiny", gpt2_shapes(n_layer=2, d_model=128, vocab=2048, n_ctx=256))


def uniform(count, numel):
    """`count` tensors of `numel` elements: per-tensor overhead dominates when small."""
    return ShapeSet(f"{count}x{numel}", ((numel,),) * count)


# Large sets are cut into tensors of at most this many elements, about the size of
# the biggest weight matrices of a 1B model, so a step walks many tensors as in training.
_SCALING_CHUNK = 1 << 24


def flat(numel):
    """`numel` params as equal-size tensors of at most _SCALING_CHUNK elements."""
    count = max(1, math.ceil(numel / _SCALING_CHUNK))
    base, extra = divmod(numel, count)
    shapes = tuple((base + (1 if i < extra else 0),) for i in range(count))
    return ShapeSet(f"flat-{human_count(numel)}", shapes)


def log_spaced(low, high, points):
    """`points` integers from low to high, evenly spaced on a log scale."""
    if points == 1:
        return [low]
    ratio = (high / low) ** (1 / (points - 1))
    return [int(round(low * ratio ** i)) for i in range(points)]


def human_count(n):
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
