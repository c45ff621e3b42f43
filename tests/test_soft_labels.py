"""Soft ordinal labels, DLDL and class weights: each formula against a direct one written here (python
loops over rows and classes), their edge cases, the objective's weighting, and one training step."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from numclip.config import LossWeights, load_params
from numclip.core.errors import NumclipError
from numclip.losses.contrastive import cross_entropy
from numclip.losses.soft_labels import (
    class_frequency_weights,
    gaussian_soft_labels,
    label_distribution_loss,
    soft_label_cross_entropy,
)

C, B = 7, 5  # odd on purpose: a class count and a batch size that match nothing else
TARGETS = [0, 3, 6, 2, 6]  # both ends, the middle, a repeated class; classes 1, 4, 5 absent


def _batch(seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(B, C, generator=g, dtype=dtype), torch.tensor(TARGETS)


def _q(y: int, sigma: float) -> list[float]:
    e = [math.exp(-((k - y) ** 2) / (2 * sigma**2)) for k in range(C)]
    return [v / sum(e) for v in e]


def _p(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _soft_ce(logits, targets, sigma, w=None) -> float:
    total = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        q, p = _q(y, sigma), _p(row)
        total += (1.0 if w is None else w[y]) * -sum(qk * math.log(pk) for qk, pk in zip(q, p))
    return total / len(targets)


def _dldl(logits, targets, sigma, lam) -> float:
    kl = l1 = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        q, p = _q(y, sigma), _p(row)
        kl += sum(qk * math.log(qk / pk) for qk, pk in zip(q, p) if qk > 0)
        l1 += abs(sum(k * pk for k, pk in enumerate(p)) - y)
    return kl / len(targets) + lam * l1 / len(targets)


def test_gaussian_soft_labels_match_the_formula():
    q = gaussian_soft_labels(torch.tensor(TARGETS), C, 1.3)
    assert q.shape == (B, C) and q.dtype == torch.float32
    expected = torch.tensor([_q(y, 1.3) for y in TARGETS])
    torch.testing.assert_close(q, expected.float())
    torch.testing.assert_close(q.sum(1), torch.ones(B))
    assert (q.argmax(1) == torch.tensor(TARGETS)).all()
    with pytest.raises(ValueError, match="sigma"):
        gaussian_soft_labels(torch.tensor(TARGETS), C, 0.0)


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5])
def test_soft_label_cross_entropy_matches_the_formula(sigma):
    logits, targets = _batch()
    got = soft_label_cross_entropy(logits, targets, sigma)
    assert got.item() == pytest.approx(_soft_ce(logits, targets, sigma), rel=1e-6)
    w = torch.tensor([0.5, 9.0, 1.5, 2.0, 7.0, 3.0, 0.25], dtype=torch.float64)  # absent classes' w unused
    got_w = soft_label_cross_entropy(logits, targets, sigma, class_weights=w)
    assert got_w.item() == pytest.approx(_soft_ce(logits, targets, sigma, w.tolist()), rel=1e-6)


def test_class_weighted_means_divide_by_the_batch_not_the_weights():
    logits, targets = _batch(1)
    w = torch.tensor([0.5, 9.0, 1.5, 2.0, 7.0, 3.0, 0.25], dtype=torch.float64)
    per_row = [-math.log(_p(r)[y]) for r, y in zip(logits.tolist(), TARGETS)]
    mean_w = sum(w[y].item() * ce for y, ce in zip(TARGETS, per_row)) / B
    assert cross_entropy(logits, targets, w).item() == pytest.approx(mean_w, rel=1e-9)
    torch_mean = torch.nn.functional.cross_entropy(logits, targets, weight=w).item()
    assert torch_mean != pytest.approx(mean_w, rel=1e-3), "not torch's sum w CE / sum w"
    assert cross_entropy(logits, targets).item() == pytest.approx(sum(per_row) / B, rel=1e-9)


def test_tiny_sigma_is_the_hard_cross_entropy():
    logits, targets = _batch(2)
    w = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    for weights in (None, w):
        hard = cross_entropy(logits, targets, weights)
        torch.testing.assert_close(soft_label_cross_entropy(logits, targets, 1e-3, weights), hard)
    assert torch.equal(gaussian_soft_labels(targets, C, 1e-3), torch.eye(C)[targets])


@pytest.mark.parametrize("sigma, lam", [(0.7, 0.0), (1.0, 1.0), (2.2, 0.3)])
def test_label_distribution_loss_matches_the_formula(sigma, lam):
    logits, targets = _batch(3)
    got = label_distribution_loss(logits, targets, sigma, lam)
    assert got.item() == pytest.approx(_dldl(logits, targets, sigma, lam), rel=1e-6, abs=1e-9)


def test_kl_is_zero_when_the_prediction_is_the_soft_label():
    targets = torch.tensor(TARGETS)
    log_q = torch.tensor([[math.log(v) for v in _q(y, 1.5)] for y in TARGETS], dtype=torch.float64)
    assert label_distribution_loss(log_q + 4.0, targets, 1.5, 0.0).item() == pytest.approx(0.0, abs=1e-12)
    # all mass on y (tiny sigma: 0 log 0 = 0 elsewhere) and logits peaked on y: KL and |E[k] - y| vanish
    peaked = 60.0 * torch.eye(C, dtype=torch.float64)[targets]
    assert label_distribution_loss(peaked, targets, 1e-3, 1.0).item() == pytest.approx(0.0, abs=1e-20)
    assert label_distribution_loss(torch.zeros(B, C), targets, 1e-3, 0.0).item() == pytest.approx(math.log(C))


def test_gradients_are_finite_and_low_precision_logits_are_upcast():
    targets = torch.tensor(TARGETS)
    extreme = torch.tensor([[1e4, -1e4, 0, 0, 0, 0, 0]] * B, dtype=torch.float32, requires_grad=True)
    w = class_frequency_weights(targets, C)
    for loss in (soft_label_cross_entropy(extreme, targets, 1e-3, w), soft_label_cross_entropy(extreme, targets, 3.0),
                 label_distribution_loss(extreme, targets, 1e-3, 1.0),
                 label_distribution_loss(extreme, targets, 2.0, 1.0)):
        (grad,) = torch.autograd.grad(loss, extreme)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    half = _batch(4, torch.bfloat16)[0].requires_grad_()
    for loss in (soft_label_cross_entropy(half, targets, 1.0), label_distribution_loss(half, targets, 1.0, 1.0)):
        assert loss.dtype == torch.float32
        loss.backward()
        assert torch.isfinite(half.grad).all()
    logits = _batch(5)[0].requires_grad_()
    assert torch.autograd.gradcheck(lambda x: soft_label_cross_entropy(x, targets, 1.1, w.double()), (logits,))
    assert torch.autograd.gradcheck(lambda x: label_distribution_loss(x, targets, 0.8, 0.5), (logits,))


def test_class_frequency_weights():
    balanced = torch.arange(C).repeat(3)
    assert torch.equal(class_frequency_weights(balanced, C), torch.ones(C))
    assert torch.equal(class_frequency_weights(balanced, C, 0.5), torch.ones(C))
    labels = [0, 0, 0, 0, 2, 2, 3, 6, 6, 6, 6, 6, 6, 6, 6, 6]  # n = 4, 0, 2, 1, 0, 0, 9: 1, 4, 5 absent
    n = [labels.count(k) for k in range(C)]
    for power in (1.0, 0.5, 0.0):
        w = class_frequency_weights(labels, C, power)
        raw = [c ** -power if c else 0.0 for c in n]
        scale = len(labels) / sum(c * r for c, r in zip(n, raw))
        torch.testing.assert_close(w, torch.tensor([scale * r for r in raw], dtype=torch.float32))
        assert w[[1, 4, 5]].tolist() == [0.0, 0.0, 0.0], "absent classes get 0"
        assert sum(c * wk for c, wk in zip(n, w.tolist())) == pytest.approx(len(labels), rel=1e-6)
    inverse = class_frequency_weights(labels, C)
    assert inverse[3] / inverse[6] == pytest.approx(9.0) and inverse[0] * 4 == pytest.approx(inverse[2] * 2)
    for bad in ([], [0, 7], [-1]):
        with pytest.raises(ValueError):
            class_frequency_weights(bad, C)


def test_the_objective_weights_the_new_terms():
    from numclip.training.objective import TERMS, training_loss

    assert list(TERMS)[-2:] == ["soft_ce", "dldl"]
    logits, labels = _batch(6, torch.float32)
    stub = SimpleNamespace(class_targets=lambda y: y)  # a rank head: the targets are the labels
    weights = LossWeights(ce=0, kl=0, soft_ce=2.0, soft_sigma=0.9)
    total, terms = training_loss(stub, None, None, logits, labels, weights)
    assert set(terms) == {"soft_ce"}
    torch.testing.assert_close(total, 2.0 * soft_label_cross_entropy(logits, labels, 0.9))
    w = torch.linspace(0.2, 3.0, C)
    weights = LossWeights(ce=0.5, kl=0, soft_ce=2.0, dldl=0.25, soft_sigma=1.7, dldl_expectation=0.4,
                          class_weights="inverse")
    total, terms = training_loss(stub, None, None, logits, labels, weights, class_weights=w)
    expected = {"ce": cross_entropy(logits, labels, w), "soft_ce": soft_label_cross_entropy(logits, labels, 1.7, w),
                "dldl": label_distribution_loss(logits, labels, 1.7, 0.4)}
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value)
    torch.testing.assert_close(total, 0.5 * expected["ce"] + 2.0 * expected["soft_ce"] + 0.25 * expected["dldl"])


def test_one_training_step_with_soft_labels_and_class_weights(tiny_backbone):
    from numclip.models.ordinal import build_model
    from numclip.stages.train import training_step
    from numclip.training.objective import training_class_weights, training_loss
    from numclip.training.schedules import make_optimizer, make_scheduler

    params = load_params(None, ["methods.coop.loss.soft_ce=1", "methods.coop.loss.dldl=0.5",
                                "methods.coop.loss.class_weights=inverse_sqrt"])
    weights = params.method("coop").loss
    torch.manual_seed(0)
    model = build_model(params, "coop", copy.deepcopy(tiny_backbone)).train()  # the session's backbone stays
    train_labels = [0, 0, 0, 0, 1, 3, 3, 9]
    w = training_class_weights(model, train_labels, weights, torch.device("cpu"))
    torch.testing.assert_close(w, class_frequency_weights(torch.tensor(train_labels), 10, 0.5))
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 3, 9])
    features, prototypes, logits = model.forward_parts(images)
    plain, _ = training_loss(model, features, prototypes, logits, labels, weights)
    weighted, terms = training_loss(model, features, prototypes, logits, labels, weights, class_weights=w)
    assert set(terms) == {"ce", "kl", "soft_ce", "dldl"} and not torch.isclose(plain, weighted)
    optimizer = make_optimizer(params, model.parameter_groups(params.train.lr))
    scheduler = make_scheduler(params, optimizer, 10)
    before = model.prompts.context.detach().clone()
    loss, terms = training_step(model, optimizer, scheduler, images, labels, weights, class_weights=w)
    assert torch.isfinite(loss) and not torch.equal(model.prompts.context, before)

    concepts = load_params(None, ["methods.numclip_fixed.loss.soft_ce=1",
                                  "methods.numclip_fixed.loss.class_weights=inverse"])
    concept_model = build_model(concepts, "numclip_fixed", copy.deepcopy(tiny_backbone))
    cw = training_class_weights(concept_model, list(range(10)), concepts.method("numclip_fixed").loss,
                                torch.device("cpu"))
    coarse = concept_model.class_targets(torch.arange(10))
    assert cw.shape == (5,), "over the head's classes: NumCLIP's 5 concepts, not the 10 ranks"
    torch.testing.assert_close(cw, class_frequency_weights(coarse, 5))
    assert training_class_weights(model, train_labels, LossWeights(), torch.device("cpu")) is None


@pytest.mark.parametrize("override, key", [
    ("methods.coop.loss.soft_sigma=0", "methods.coop.loss.soft_sigma"),
    ("methods.coop.loss.soft_sigma=-1", "methods.coop.loss.soft_sigma"),
    ("methods.coop.loss.class_weights=balanced", "methods.coop.loss.class_weights"),
    ("methods.coop.loss.dldl_expectation=-0.5", "methods.coop.loss.dldl_expectation"),
    ("methods.coop.loss.soft_ce=-1", "methods.coop.loss.soft_ce"),
])
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(NumclipError) as err:
        load_params(None, ["methods.coop.loss.soft_ce=1", "methods.coop.loss.dldl=1", override])
    assert key in str(err.value)


@pytest.mark.parametrize("override, match", [
    ("methods.coop.loss.soft_sigma=2", "soft_sigma only applies to soft_ce and dldl"),
    ("methods.coop.loss.dldl_expectation=0", "dldl_expectation only applies to dldl"),
    ("methods.numclip_fixed.loss.class_weights=inverse", "class_weights only applies to ce and soft_ce"),
])
def test_settings_of_terms_that_are_off_are_refused(override, match):
    with pytest.raises(NumclipError, match=match):
        load_params(None, [override])


def test_only_soft_terms_is_something_to_minimise():
    assert LossWeights(ce=0, kl=0, dldl=1.0).dldl == 1.0
    with pytest.raises(ValueError, match="soft_ce, dldl"):
        LossWeights(ce=0, kl=0)
