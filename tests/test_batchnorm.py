"""The BatchNorm momentum helper: N micro-batch updates decay old stats like one update."""

import pytest
import torch

from fused_accum import scale_batchnorm_momentum
from fused_accum.batchnorm import accumulation_momentum


@pytest.mark.parametrize("momentum,steps", [(0.1, 4), (0.01, 8), (0.5, 3)])
def test_old_statistics_keep_weight_one_minus_momentum_after_a_window(momentum, steps):
    bn = torch.nn.BatchNorm1d(3, momentum=momentum)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(2.0)
    scale_batchnorm_momentum(bn, steps)
    # All-zero micro-batches have mean 0 and variance 0: whatever remains of the running
    # stats after the window is exactly the weight left on the old statistics.
    for _ in range(steps):
        bn(torch.zeros(5, 3))
    torch.testing.assert_close(bn.running_mean, torch.full((3,), 1.0 - momentum))
    torch.testing.assert_close(bn.running_var, torch.full((3,), 2.0 * (1.0 - momentum)))
    assert bn.num_batches_tracked.item() == steps


def test_restore_and_context_manager_put_the_momenta_back():
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2, momentum=0.2), torch.nn.Linear(2, 2),
                                torch.nn.BatchNorm2d(2), torch.nn.BatchNorm1d(2, momentum=None))
    with scale_batchnorm_momentum(model, 4):
        assert model[0].momentum == pytest.approx(accumulation_momentum(0.2, 4))
        assert model[2].momentum == pytest.approx(1 - 0.9 ** 0.25)
        assert model[3].momentum is None  # cumulative average: left alone
    assert (model[0].momentum, model[2].momentum, model[3].momentum) == (0.2, 0.1, None)
    handle = scale_batchnorm_momentum(model, 2)
    handle.restore()
    assert model[0].momentum == 0.2


def test_one_step_is_the_identity_and_bad_steps_are_refused():
    assert accumulation_momentum(0.1, 1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        scale_batchnorm_momentum(torch.nn.BatchNorm1d(2), 0)
