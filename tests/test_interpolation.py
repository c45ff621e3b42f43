"""OrdinalCLIP interpolation weights against hand-computed rows."""

import pytest
import torch

from numclip.core.errors import NumclipError
from numclip.models.interpolation import anchors, interpolation_weights


def test_anchors():
    assert anchors(5, 3).tolist() == [0.0, 2.0, 4.0]
    assert anchors(10, 1).tolist() == [4.5]


def test_linear_is_the_released_global_blend():
    # K=5, L=3, anchors 0,2,4; phi(d) = 1 - d/4, rows normalised
    w = interpolation_weights(5, 3, "linear")
    expected = torch.tensor([
        [1.0, 0.5, 0.0],        # d = 0,2,4 -> sum 1.5
        [0.75, 0.75, 0.25],     # d = 1,1,3 -> sum 1.75
        [0.5, 1.0, 0.5],        # d = 2,0,2 -> sum 2
        [0.25, 0.75, 0.75],
        [0.0, 0.5, 1.0],
    ], dtype=torch.float64)
    expected = expected / expected.sum(1, keepdim=True)
    torch.testing.assert_close(w, expected)
    # with L >= 3 the end ranks are NOT the end anchors (documented quirk)
    assert w[0, 0] < 1.0


def test_inv_prop_passes_through_anchors():
    w = interpolation_weights(5, 3, "inv_prop")
    assert w[0, 0] > 0.99999 and w[2, 1] > 0.99999 and w[4, 2] > 0.99999
    raw = torch.tensor([1 / (1 + 1e-5), 1 / (1 + 1e-5), 1 / (3 + 1e-5)], dtype=torch.float64)
    torch.testing.assert_close(w[1], raw / raw.sum())


def test_piecewise_interpolates_between_neighbours():
    w = interpolation_weights(7, 3, "piecewise")  # anchors 0, 3, 6
    torch.testing.assert_close(w[1], torch.tensor([2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(w[5], torch.tensor([0.0, 1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(w[3], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_linear_equals_piecewise_for_two_anchors():
    torch.testing.assert_close(interpolation_weights(9, 2, "linear"), interpolation_weights(9, 2, "piecewise"))


def test_gaussian_has_no_nan_where_released_normal_does():
    # the released exp(-d^2) kernel underflows to 0/0 for K=101, L=3; ours works in log space
    d = (torch.arange(101.0)[:, None] - anchors(101, 3).float()[None]).abs()
    released = torch.exp(-d * d)
    assert torch.isnan(released / released.sum(1, keepdim=True)).any()
    w = interpolation_weights(101, 3, "gaussian")
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(1), torch.ones(101, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["linear", "inv_prop", "piecewise", "gaussian"])
def test_rows_sum_to_one(kind):
    torch.testing.assert_close(interpolation_weights(11, 4, kind).sum(1), torch.ones(11, dtype=torch.float64))


def test_bad_arguments():
    with pytest.raises(NumclipError, match="num_base_ranks"):
        interpolation_weights(5, 6)
    with pytest.raises(NumclipError, match="interpolation"):
        interpolation_weights(5, 2, "cubic")
