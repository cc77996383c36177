"""BatchNorm running-statistics momentum for gradient accumulation.

torch updates a running statistic r with a batch statistic x as
    r = (1 - m) * r + m * x.
With accumulation, one large batch becomes N micro-batches, so BatchNorm updates N
times where the large-batch run updated once: with the same momentum the old
statistics fade N times faster. Using
    m' = 1 - (1 - m) ** (1 / N)
for every micro-batch gives (1 - m') ** N = 1 - m: after one window the old statistics
keep exactly the weight one large-batch update would leave them.

Limits: this matches how fast old statistics decay, not the statistics themselves.
The N micro-batch statistics are weighted unequally (the latest most) and each is a
small-batch estimate (a noisier mean, and torch's unbiased variance of a small batch is
not the large batch's variance), so the running stats are close to, not equal to, the
large-batch ones. The normalisation in the forward pass still uses micro-batch
statistics. Layers with momentum=None (cumulative moving average) are left unchanged:
they already weight every update equally.
"""

from torch.nn.modules.batchnorm import _BatchNorm


def accumulation_momentum(momentum, steps):
    """The per-micro-batch momentum equivalent to `momentum` over `steps` updates."""
    return 1.0 - (1.0 - momentum) ** (1.0 / steps)


class BatchNormMomentum:
    """The originals of the layers changed by scale_batchnorm_momentum; restore()
    puts them back. Also a context manager that restores on exit."""

    def __init__(self, originals):
        self._originals = originals  # [(layer, momentum)]

    def restore(self):
        for layer, momentum in self._originals:
            layer.momentum = momentum
        self._originals = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def scale_batchnorm_momentum(model, steps):
    """Sets every BatchNorm layer of `model` (including SyncBatchNorm) to the momentum
    that makes `steps` micro-batch updates decay old statistics as one update of the
    original momentum would. Returns a handle whose restore() undoes it."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    originals = []
    for layer in model.modules():
        if isinstance(layer, _BatchNorm) and layer.momentum is not None:
            originals.append((layer, layer.momentum))
            layer.momentum = accumulation_momentum(layer.momentum, steps)
    return BatchNormMomentum(originals)
