"""Losses and read-outs against hand-computed values."""

import math

import pytest
import torch

from numclip.losses import contrastive as losses
from numclip.models import readouts


def test_cross_entropy_hand_computed():
    # Row 0: uniform over 3 -> -log(1/3) = log 3.  Row 1: exp = [1, 3, 1], target 1 -> -log(3/5).
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0]])
    target = torch.tensor([1, 1])
    expected = (math.log(3.0) + math.log(5.0 / 3.0)) / 2  # = log(5) / 2 = 0.804719
    assert losses.cross_entropy(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.804719, abs=1e-6)


def test_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        losses.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        losses.cross_entropy(torch.zeros(6), torch.zeros(6, dtype=torch.long))


def _kl_example():
    # B = 3 images with labels [0, 0, 2] over K = 3 classes: class 1 is absent.
    # logits [B, K]; its transpose gives rows 0 and 2 all zero (uniform Q = 1/3), row 1 arbitrary.
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, -1.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 0, 2])
    return logits, target


def test_text_to_image_kl_hand_computed():
    logits, target = _kl_example()
    # Temperature log 2 makes exp(T) = 2.
    # Class 0: P = [2, 2, 1] / 5 -> KL(P || 1/3) = 2 * 0.4 * log(1.2) + 0.2 * log(0.6) = 0.0436922
    # Class 2: P = [1, 1, 2] / 4 -> KL(P || 1/3) = 2 * 0.25 * log(0.75) + 0.5 * log(1.5) = 0.0588915
    # Mean over the 2 present classes: 0.0512919
    loss = losses.text_to_image_kl(logits, target, target_temperature=math.log(2.0))
    assert loss.item() == pytest.approx(0.0512919, abs=1e-6)


def _naive_kl(logits, target, temperature, weights=None):
    per_text = logits.T if weights is None else logits.T * weights
    total, present = 0.0, 0
    for i in range(logits.shape[1]):
        members = [b for b in range(logits.shape[0]) if int(target[b]) == i]
        if not members:
            continue
        present += 1
        raw = [math.exp(temperature) if b in members else 1.0 for b in range(logits.shape[0])]
        p = [r / sum(raw) for r in raw]
        q_raw = [math.exp(float(v)) for v in per_text[i]]
        q = [r / sum(q_raw) for r in q_raw]
        total += sum(pb * (math.log(pb) - math.log(qb)) for pb, qb in zip(p, q))
    return total / present


def test_text_to_image_kl_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    target = torch.tensor([0, 3, 3, 1, 0, 3])
    for temperature in (10.0, 1.0):
        got = losses.text_to_image_kl(logits, target, target_temperature=temperature).item()
        assert got == pytest.approx(_naive_kl(logits, target, temperature), rel=1e-9)
    weights = torch.rand(5, 6, generator=gen, dtype=torch.float64) + 0.5
    got = losses.text_to_image_kl(logits, target, weights=weights).item()
    assert got == pytest.approx(_naive_kl(logits, target, 10.0, weights), rel=1e-9)


def test_text_to_image_kl_weights_scale_logits():
    logits, target = _kl_example()
    logits = logits + torch.arange(3.0, dtype=torch.float64)[:, None]  # make rows non-uniform
    scaled = losses.text_to_image_kl(logits, target, weights=torch.full((3, 3), 2.0, dtype=torch.float64))
    assert scaled.item() == pytest.approx(losses.text_to_image_kl(2 * logits, target).item(), rel=1e-12)
    with pytest.raises(ValueError):
        losses.text_to_image_kl(logits, target, weights=torch.ones(3, 4))


def test_text_to_image_kl_ignores_absent_classes():
    logits, target = _kl_example()
    logits.requires_grad_(True)
    losses.text_to_image_kl(logits, target).backward()
    assert torch.all(logits.grad[:, 1] == 0)  # column 1 = text row of the absent class
    assert torch.all(torch.isfinite(logits.grad))


def test_gradcheck_both_losses():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([2, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda x: losses.cross_entropy(x, target), (logits,))
    assert torch.autograd.gradcheck(lambda x: losses.text_to_image_kl(x, target), (logits,))
    weights = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: losses.text_to_image_kl(x, target, 2.0, weights), (logits,))


def test_readouts_on_known_logits():
    # Row 0: uniform over 3 -> expectation 1.  Row 1: probs [1/4, 1/4, 1/2] -> 0.25 + 2 * 0.5 = 1.25.
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]])
    probs = readouts.probabilities(logits)
    assert torch.allclose(probs[1], torch.tensor([0.25, 0.25, 0.5]))
    assert readouts.readout_argmax(logits[1:]).tolist() == [2]
    assert readouts.readout_argmax(logits).dtype == torch.long
    expectation = readouts.readout_expectation(logits)
    assert expectation.dtype == torch.float32
    assert torch.allclose(expectation, torch.tensor([1.0, 1.25]))


def test_clip_contrastive_loss_hand_computed():
    from numclip.losses.contrastive import clip_contrastive_loss

    # orthonormal features: logits = s * I with s = ln 3, so each row is softmax([ln3*1, 0]) -> p = 3/4
    f = torch.eye(2)
    loss = clip_contrastive_loss(f, f, math.log(3.0))
    assert loss.item() == pytest.approx(-math.log(3 / 4), abs=1e-6)
    # two identical captions in one group: targets [1/2, 1/2]; logits rows [ln3, 0] -> log p = [ln3/4, ln1/4]
    grouped = clip_contrastive_loss(f, f, math.log(3.0), caption_group=torch.tensor([0, 0]))
    assert grouped.item() == pytest.approx(-(0.5 * math.log(3 / 4) + 0.5 * math.log(1 / 4)), abs=1e-6)
    # distinct groups equal plain CLIP
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    torch.testing.assert_close(clip_contrastive_loss(a, b, 10.0, torch.arange(4)), clip_contrastive_loss(a, b, 10.0))
    with pytest.raises(ValueError):
        clip_contrastive_loss(a, b[:3], 10.0)
