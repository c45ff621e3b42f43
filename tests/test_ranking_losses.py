"""NumCLIP's ranking-weighted losses and L2RCLIP's pairwise loss (docs/methods.md, NumCLIP and L2RCLIP).

The faithful image->text CE is checked against the released `compute_ce_dis_loss` (seeds/000_*.txt,
kept verbatim in numclip.kernels.released); everything else against hand-worked numbers written out below.
"""

import math

import pytest
import torch

from numclip.kernels.released import released_ce_dis_loss  # the released code, verbatim but for its device
from numclip.losses.contrastive import text_to_image_kl
from numclip.losses.ranking import (
    ordinal_pairwise_loss,
    ranking_weighted_cross_entropy,
    ranking_weighted_kl,
    ranking_weights,
    ranking_weights_text,
    regression_l1,
)

TOL = dict(atol=1e-6, rtol=1e-6)


# --- 1. faithful CE == the released code -------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("d", [2, 3, 5, 10, 101])
def test_faithful_ce_matches_released_code_value_and_gradient(d, batch):
    gen = torch.Generator().manual_seed(1000 * d + batch)
    logits = torch.randn(batch, d, generator=gen, dtype=torch.float64) * 3
    assert (logits > 0).any() and (logits < 0).any()
    target = torch.randint(0, d, (batch,), generator=gen)
    if batch >= 2:
        target[0], target[-1] = 0, d - 1  # both ends of the range

    ours_in = logits.clone().requires_grad_()
    seed_in = logits.clone().requires_grad_()
    ours = ranking_weighted_cross_entropy(ours_in, target, mode="faithful")
    seed = released_ce_dis_loss(seed_in, target, d)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, seed, **TOL)

    (g_ours,) = torch.autograd.grad(ours, ours_in)
    (g_seed,) = torch.autograd.grad(seed, seed_in)
    assert g_seed.abs().sum() > 0
    torch.testing.assert_close(g_ours, g_seed, **TOL)


# --- 2. worked weight rows -----------------------------------------------------------------------------

def test_ranking_weights_worked_rows_d5():
    weights = ranking_weights(torch.tensor([0, 1, 2]), 5)
    expected = torch.tensor([
        [1.0, 0.4, 0.8, 1.2, 1.6],
        [4 / 7, 1.0, 4 / 7, 8 / 7, 12 / 7],      # .571, 1, .571, 1.143, 1.714
        [4 / 3, 2 / 3, 1.0, 2 / 3, 4 / 3],       # 1.333, .667, 1, .667, 1.333
    ])
    torch.testing.assert_close(weights, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(weights[1], torch.tensor([0.571, 1.0, 0.571, 1.143, 1.714]), atol=1e-3, rtol=0)
    torch.testing.assert_close(weights[2], torch.tensor([1.333, 0.667, 1.0, 0.667, 1.333]), atol=1e-3, rtol=0)


def test_ranking_weights_negatives_sum_to_d_minus_1():
    d = 7
    target = torch.arange(d)
    weights = ranking_weights(target, d, dtype=torch.float64)
    assert torch.equal(weights[target, target], torch.ones(d, dtype=torch.float64))
    negatives = weights.sum(dim=1) - 1.0
    torch.testing.assert_close(negatives, torch.full((d,), d - 1.0, dtype=torch.float64), **TOL)


# --- 3. errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_fn", [ranking_weighted_cross_entropy, ranking_weighted_kl])
@pytest.mark.parametrize("logits, target, mode, message", [
    (torch.zeros(2, 1), torch.tensor([0, 0]), "faithful", r"d >= 2"),
    (torch.zeros(2, 5), torch.tensor([0, -1]), "faithful", r"target values must be in \[0, 4\]"),
    (torch.zeros(2, 5), torch.tensor([5, 0]), "fixed", r"target values must be in \[0, 4\]"),
    (torch.zeros(2, 5), torch.tensor([0.0, 1.0]), "faithful", r"integer class indices"),
    (torch.zeros(2, 5), torch.tensor([0, 1, 2]), "faithful", r"target must be \[B\]=2"),
    (torch.zeros(5), torch.tensor([0, 1, 2, 3, 4]), "faithful", r"logits must be \[B, d\]"),
    (torch.zeros(2, 5), torch.tensor([0, 1]), "sign-safe", r"mode must be 'faithful' or 'fixed'"),
], ids=["d=1", "target=-1", "target=d", "float-target", "batch-mismatch", "1d-logits", "unknown-mode"])
def test_bad_inputs_raise_value_error(loss_fn, logits, target, mode, message):
    with pytest.raises(ValueError, match=message):
        loss_fn(logits, target, mode=mode)


# --- 4. the sign quirk and its repair -------------------------------------------------------------------

def _grad(logits, target, mode):
    x = torch.tensor([logits], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ranking_weighted_cross_entropy(x, torch.tensor([target]), mode=mode), x)
    return g[0]


NEAR, FAR = 1, 4  # d = 5, target 0: W = [1, .4, .8, 1.2, 1.6]


def test_faithful_quirk_and_fixed_repair_with_negative_logits():
    # Cosine logits times s ~ 100: a true class slightly positive, all negatives clearly negative.
    logits = [2.0, -3.0, -3.0, -3.0, -3.0]
    faithful, fixed = _grad(logits, 0, "faithful"), _grad(logits, 0, "fixed")
    # dL/dL_ij = softmax(L')_j * dL'_ij/dL_ij (B = 1).
    # Faithful: L' = [2, -1.2, -2.4, -3.6, -4.8], Z = e^2 + e^-1.2 + ... = 7.816:
    # far e^-4.8/Z * 1.6 = 0.00168 vs near e^-1.2/Z * 0.4 = 0.01541 -> the far class is pushed LESS.
    assert faithful[FAR] < faithful[NEAR]
    assert faithful[FAR].item() == pytest.approx(0.00168, abs=1e-5)
    assert faithful[NEAR].item() == pytest.approx(0.01541, abs=1e-5)
    assert torch.all(faithful[1:].diff() < 0)  # pushes fall off with rank distance
    # Fixed (margin 1): L' = L + (W - 1) = [2, -3.6, -3.2, -2.8, -2.4], Z = 7.6087; dL/dL_j = softmax(L')_j:
    # far e^-2.4/Z = 0.01192 vs near e^-3.6/Z = 0.00359 -> far pushed harder.
    assert fixed[FAR] > fixed[NEAR]
    assert fixed[FAR].item() == pytest.approx(0.01192, abs=1e-5)
    assert fixed[NEAR].item() == pytest.approx(0.00359, abs=1e-5)
    assert torch.all(fixed[1:].diff() > 0)  # pushes grow with rank distance


def test_all_positive_logits_both_modes_push_far_harder():
    logits = [2.0, 0.5, 0.5, 0.5, 0.5]
    faithful, fixed = _grad(logits, 0, "faithful"), _grad(logits, 0, "fixed")
    for g in (faithful, fixed):
        assert g[FAR] > g[NEAR]
        assert torch.all(g[1:].diff() > 0)
        assert g[0] < 0  # the true class is pulled up


def test_fixed_equals_faithful_when_all_weights_are_one():
    target = torch.tensor([1, 1])
    torch.testing.assert_close(ranking_weights(target, 3), torch.ones(2, 3), atol=0, rtol=0)
    logits = torch.tensor([[-1.5, 0.7, 2.0], [0.3, -2.2, -0.4]], dtype=torch.float64)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    faithful = ranking_weighted_cross_entropy(a, target, mode="faithful")
    fixed = ranking_weighted_cross_entropy(b, target, mode="fixed")
    torch.testing.assert_close(fixed, faithful, **TOL)
    torch.testing.assert_close(fixed, torch.nn.functional.cross_entropy(logits, target), **TOL)
    torch.testing.assert_close(torch.autograd.grad(fixed, b)[0], torch.autograd.grad(faithful, a)[0], **TOL)


def test_fixed_mode_pushes_far_harder_for_any_negative_logit():
    # docs/methods.md: the fixed mode "always strengthens the push of far classes regardless of sign".
    # (A multiplicative L * W^sign(L) variant failed this for small |L|: its gradient carries 1/W.)
    for negative in (-0.5, -0.001, -3.0, -30.0):
        fixed = _grad([0.2, negative, negative, negative, negative], 0, "fixed")
        assert fixed[FAR] > fixed[NEAR], (negative, fixed.tolist())
        assert torch.all(fixed[1:].diff() > 0)


# --- 5. text->image weights and KL ---------------------------------------------------------------------

# d = 4, targets [0, 0, 3]: |i - c_b| rows are [0,0,3], [1,1,2], [2,2,1], [3,3,0] (sums 3, 4, 5, 6).
# Negatives per class: B - m_i = 1, 3, 3, 2.
TEXT_TARGET = torch.tensor([0, 0, 3])
V_FAITHFUL = torch.tensor([        # scale d - 1 = 3
    [1.0, 1.0, 3 / 3 * 3],         # [1, 1, 3]
    [1 / 4 * 3, 1 / 4 * 3, 2 / 4 * 3],  # [.75, .75, 1.5]
    [2 / 5 * 3, 2 / 5 * 3, 1 / 5 * 3],  # [1.2, 1.2, .6]
    [3 / 6 * 3, 3 / 6 * 3, 1.0],   # [1.5, 1.5, 1]
], dtype=torch.float64)
V_FIXED = torch.tensor([           # scale B - m_i
    [1.0, 1.0, 3 / 3 * 1],         # [1, 1, 1]
    [1 / 4 * 3, 1 / 4 * 3, 2 / 4 * 3],
    [2 / 5 * 3, 2 / 5 * 3, 1 / 5 * 3],
    [3 / 6 * 2, 3 / 6 * 2, 1.0],   # [1, 1, 1] (2 negatives)
], dtype=torch.float64)
HAND_V = {"faithful": V_FAITHFUL, "fixed": V_FIXED}


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_ranking_weights_text_hand_worked(mode):
    v = ranking_weights_text(TEXT_TARGET, 4, mode, dtype=torch.float64)
    torch.testing.assert_close(v, HAND_V[mode], **TOL)
    if mode == "fixed":  # every row's negatives average exactly 1
        negatives = (v * (TEXT_TARGET[None, :] != torch.arange(4)[:, None])).sum(dim=1)
        torch.testing.assert_close(negatives, torch.tensor([1.0, 3.0, 3.0, 2.0], dtype=torch.float64), **TOL)


def test_ranking_weights_text_row_without_negatives_is_all_ones():
    # d = 3, every image has class 1: row 1 has no negatives (its distance sum is 0).
    target = torch.tensor([1, 1, 1])
    faithful = ranking_weights_text(target, 3, "faithful")
    fixed = ranking_weights_text(target, 3, "fixed")
    assert torch.isfinite(faithful).all() and torch.isfinite(fixed).all()
    torch.testing.assert_close(faithful[1], torch.ones(3), atol=0, rtol=0)
    torch.testing.assert_close(fixed[1], torch.ones(3), atol=0, rtol=0)
    # Rows 0 and 2: distances [1,1,1], sum 3 -> faithful 1/3 * 2 = 2/3, fixed 1/3 * 3 = 1.
    torch.testing.assert_close(faithful[[0, 2]], torch.full((2, 3), 2 / 3), **TOL)
    torch.testing.assert_close(fixed[[0, 2]], torch.ones(2, 3), **TOL)


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_ranking_weighted_kl_matches_hand_weights_and_gradcheck(mode):
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    got = ranking_weighted_kl(logits, TEXT_TARGET, mode=mode)
    expected = text_to_image_kl(logits, TEXT_TARGET, weights=HAND_V[mode])
    torch.testing.assert_close(got, expected, **TOL)
    if mode == "faithful":  # V differs from 1, so this is not the unweighted KL
        assert abs(got.item() - text_to_image_kl(logits, TEXT_TARGET).item()) > 1e-3
    assert torch.autograd.gradcheck(lambda x: ranking_weighted_kl(x, TEXT_TARGET, mode=mode), (logits,))


# --- 6. regression L1 ------------------------------------------------------------------------------------

def test_regression_l1_hand_computed_and_shape_check():
    prediction = torch.tensor([1.0, 2.5, -1.0])
    target = torch.tensor([2, 2, 1])  # integer labels are cast to the prediction's dtype
    # |1 - 2| + |2.5 - 2| + |-1 - 1| = 1 + .5 + 2 = 3.5, mean 3.5 / 3
    assert regression_l1(prediction, target).item() == pytest.approx(3.5 / 3, abs=1e-6)
    with pytest.raises(ValueError, match=r"differ"):
        regression_l1(prediction, torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match=r"differ"):
        regression_l1(prediction[:, None], target)


# --- 7. L2RCLIP ordinal pairwise loss -------------------------------------------------------------------

# Texts t0 = (0,0), t1 = (3,0), t2 = (3,4). Image 0 = (0,4) with rank 2, image 1 = (6,0) with rank 0.
TEXTS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
IMAGES = torch.tensor([[0.0, 4.0], [6.0, 0.0]], dtype=torch.float64)
RANKS = torch.tensor([2, 0])


def test_ordinal_pairwise_loss_hand_computed():
    # Distances: image 0 -> [4, 5, 3]; image 1 -> [6, 3, 5].
    # Label gaps [[2,1,0],[0,1,2]], min 0, max 2 -> w = [[1, .5, 0], [0, .5, 1]].
    # pull = mean(||f0 - t2||^2 = 9, ||f1 - t0||^2 = 36) = 22.5
    # push = (1*4 + .5*5 + 0*3 + 0*6 + .5*3 + 1*5) / 6 = 13 / 6
    expected = 22.5 - 13 / 6  # = 61/3 = 20.3333
    got = ordinal_pairwise_loss(IMAGES, TEXTS, RANKS)
    assert got.item() == pytest.approx(61 / 3, abs=1e-9)
    assert expected == pytest.approx(20.333333, abs=1e-6)


def test_ordinal_pairwise_loss_rewards_moving_to_own_rank_and_away_from_far_ones():
    base = ordinal_pairwise_loss(IMAGES, TEXTS, RANKS).item()
    # Image 1 (rank 0) from (6,0) to (4,-2): own text 6 -> sqrt(20), far text t2 5 -> sqrt(37).
    closer = IMAGES.clone()
    closer[1] = torch.tensor([4.0, -2.0])
    assert math.dist(closer[1].tolist(), TEXTS[0].tolist()) < 6 and math.dist(closer[1].tolist(), TEXTS[2].tolist()) > 5
    assert ordinal_pairwise_loss(closer, TEXTS, RANKS).item() < base
    # Same distance to its own text (6), farther from the far rank t2 (5 -> sqrt(109)): only the push changes.
    away = IMAGES.clone()
    away[1] = torch.tensor([0.0, -6.0])
    assert ordinal_pairwise_loss(away, TEXTS, RANKS).item() < base


def test_ordinal_pairwise_loss_gradients_reach_images_and_texts():
    images, texts = IMAGES.clone().requires_grad_(), TEXTS.clone().requires_grad_()
    g_images, g_texts = torch.autograd.grad(ordinal_pairwise_loss(images, texts, RANKS), (images, texts))
    assert torch.isfinite(g_images).all() and torch.isfinite(g_texts).all()
    assert (g_images.abs().sum(dim=1) > 0).all()  # every image gets a gradient
    assert (g_texts.abs().sum(dim=1) > 0).all()   # every text gets a gradient
    assert torch.autograd.gradcheck(lambda f, t: ordinal_pairwise_loss(f, t, RANKS), (images, texts))
