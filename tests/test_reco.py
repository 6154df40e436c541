"""ReCo loss: edge cases, closed form, gradient routing, learning signal, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s4al_ray import IGNORE_INDEX
from s4al_ray.losses import reco_loss
from s4al_ray.losses.reco import negative_logits


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _toy_map(batch: int = 2, size: int = 16, classes: int = 3) -> torch.Tensor:
    """Target made of vertical stripes, one class per stripe."""
    cols = torch.arange(size) * classes // size
    return cols.expand(batch, size, size).clone()


def _probs_for(target: torch.Tensor, classes: int, confidence: float) -> torch.Tensor:
    """Probabilities giving each pixel's own class ``confidence`` and sharing the rest."""
    rest = (1.0 - confidence) / (classes - 1)
    probs = torch.full((target.shape[0], classes, *target.shape[1:]), rest)
    own = target.clamp_max(classes - 1).unsqueeze(1)
    return probs.scatter(1, own, confidence)


def _random_inputs(seed: int, b: int = 2, e: int = 16, c: int = 4, s: int = 32):
    g = _gen(seed)
    emb = torch.randn(b, e, s, s, generator=g, requires_grad=True)
    probs = torch.softmax(torch.randn(b, c, s, s, generator=g) * 2, dim=1)
    target = probs.argmax(1)
    return emb, probs, target


@pytest.mark.parametrize("classes_present", [0, 1])
def test_zero_with_fewer_than_two_classes(classes_present: int) -> None:
    target = torch.full((2, 8, 8), IGNORE_INDEX)
    if classes_present:
        target[:, :4] = 2
    emb = torch.randn(2, 8, 8, 8, requires_grad=True)
    probs = _probs_for(target, 4, 0.5)
    loss = reco_loss(emb, probs, target, generator=_gen())
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and torch.count_nonzero(emb.grad) == 0


def test_zero_without_hard_queries() -> None:
    target = _toy_map()
    emb = torch.randn(2, 8, 16, 16, requires_grad=True)
    probs = _probs_for(target, 3, 0.99)
    loss = reco_loss(emb, probs, target, strong_threshold=0.97, generator=_gen())
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(emb.grad) == 0


def test_finite_positive_on_random_input() -> None:
    emb, probs, target = _random_inputs(1)
    target[:, :4] = IGNORE_INDEX
    loss = reco_loss(emb, probs, target, num_queries=32, num_negatives=64, generator=_gen())
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_matches_closed_form_for_constant_class_embeddings() -> None:
    """Two classes, each pixel of a class holding the same vector: every draw gives the same
    logits, so the loss is -log softmax of [1, cos, ..., cos] / T at index 0."""
    target = _toy_map(classes=2)
    v = F.normalize(torch.randn(2, 8, generator=_gen(3)), dim=1)
    emb = v[target].permute(0, 3, 1, 2).contiguous() * 5.0  # raw scale must not matter
    k, t = 64, 0.5
    loss = reco_loss(
        emb,
        _probs_for(target, 2, 0.6),
        target,
        temperature=t,
        num_queries=16,
        num_negatives=k,
        generator=_gen(),
    )
    cos = float(v[0] @ v[1])
    expected = -(1 / t) + math.log(math.exp(1 / t) + k * math.exp(cos / t))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_negative_logit_routes_agree() -> None:
    g = _gen(4)
    queries = F.normalize(torch.randn(3, 5, 8, generator=g), dim=-1)
    keys = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    neg = torch.randint(0, 40, (3, 5, 7), generator=g)
    direct = torch.einsum("aqe,aqke->aqk", queries, keys[neg])
    # 40 keys <= 7 * 8: the matmul route; a 2-dim embedding forces the gather route.
    assert torch.allclose(negative_logits(queries, keys, neg), direct, atol=1e-6)
    wide = torch.cat([keys, keys], 0)[:, :2]
    direct2 = torch.einsum("aqe,aqke->aqk", queries[..., :2], wide[neg])
    assert torch.allclose(negative_logits(queries[..., :2], wide, neg), direct2, atol=1e-6)


def test_negative_logits_sparse_backward_matches_autograd() -> None:
    # The matmul route's hand-written backward (embedding_bag over the gathered keys) against
    # autograd through the explicit gather, in float64.
    g = _gen(5)
    queries = torch.randn(3, 5, 8, generator=g, dtype=torch.double, requires_grad=True)
    keys = torch.randn(40, 8, generator=g, dtype=torch.double)
    neg = torch.randint(0, 40, (3, 5, 7), generator=g)
    grad_out = torch.randn(3, 5, 7, generator=g, dtype=torch.double)
    (mine,) = torch.autograd.grad((negative_logits(queries, keys, neg) * grad_out).sum(), queries)
    direct = torch.einsum("aqe,aqke->aqk", queries, keys[neg])
    (ref,) = torch.autograd.grad((direct * grad_out).sum(), queries)
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="keys are targets"):
        negative_logits(queries, keys.requires_grad_(), neg)


def test_loss_decreases_when_classes_are_pulled_together() -> None:
    target = _toy_map(batch=2, size=16, classes=3)
    probs = _probs_for(target, 3, 0.6)  # every valid pixel is a hard query
    emb = torch.randn(2, 8, 16, 16, generator=_gen(5)).requires_grad_()
    # Large lr: the loss is a mean over 3*64 queries, so each pixel's gradient is tiny.
    opt = torch.optim.SGD([emb], lr=200.0)
    losses = []
    for step in range(30):
        opt.zero_grad()
        loss = reco_loss(emb, probs, target, num_queries=64, num_negatives=64, generator=_gen(step))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Best possible here (3 classes at 120 degrees): log(1 + 64 exp(-3)) ~ 1.43; start ~ 4.3.
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_only_through_hard_pixels() -> None:
    target = _toy_map(batch=1, size=16, classes=3)
    probs = _probs_for(target, 3, 0.99)
    hard = torch.zeros_like(target, dtype=torch.bool)
    hard[:, ::2] = True  # every other row is hard, in every class
    probs = torch.where(hard.unsqueeze(1), _probs_for(target, 3, 0.5), probs)
    emb = torch.randn(1, 8, 16, 16, requires_grad=True)
    # Enough queries to cover every hard pixel: 40-48 hard pixels per class.
    loss = reco_loss(
        emb,
        probs,
        target,
        strong_threshold=0.97,
        num_queries=512,
        num_negatives=32,
        generator=_gen(),
    )
    loss.backward()
    grad_norm = emb.grad.norm(dim=1)  # (1, 16, 16)
    assert torch.count_nonzero(grad_norm[~hard]) == 0
    assert (grad_norm[hard] > 0).float().mean() > 0.95


def test_ignored_pixels_get_no_gradient_and_full_size_smoke() -> None:
    emb, probs, target = _random_inputs(6, b=2, e=16, c=5, s=32)
    target[:, :, :8] = IGNORE_INDEX
    # Smoke check of the vectorised path at reference sizes (no timing assertion).
    loss = reco_loss(emb, probs, target, num_queries=256, num_negatives=512, generator=_gen())
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.count_nonzero(emb.grad[:, :, :, :8]) == 0


def test_deterministic_with_seeded_generator() -> None:
    emb, probs, target = _random_inputs(7)
    a = reco_loss(emb, probs, target, num_queries=32, num_negatives=64, generator=_gen(11))
    b = reco_loss(emb, probs, target, num_queries=32, num_negatives=64, generator=_gen(11))
    c = reco_loss(emb, probs, target, num_queries=32, num_negatives=64, generator=_gen(12))
    assert a.item() == b.item()
    assert a.item() != c.item()


def test_rejects_out_of_range_class_ids() -> None:
    emb, probs, target = _random_inputs(8, c=4)
    target[0, 0, 0] = 7
    with pytest.raises(ValueError):
        reco_loss(emb, probs, target, generator=_gen())


def test_autocast_does_not_change_the_result() -> None:
    emb, probs, target = _random_inputs(9)
    plain = reco_loss(emb, probs, target, num_queries=32, num_negatives=64, generator=_gen(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = reco_loss(emb, probs, target, num_queries=32, num_negatives=64, generator=_gen(1))
    assert cast.dtype == torch.float32
    assert cast.item() == pytest.approx(plain.item(), rel=1e-5)


def test_warmup_ramps_the_weight_over_the_run_and_the_loss_uses_it() -> None:
    from dataclasses import replace

    from s4al_ray.config import RecoConfig, TrainConfig
    from s4al_ray.losses.joint import joint_losses, reco_weight_at
    from s4al_ray.student import run_step

    train, reco = TrainConfig(reco_weight=0.2), RecoConfig(warmup_steps=100)
    weights = [reco_weight_at(train, reco, s) for s in (0, 49, 99, 500)]
    assert weights == pytest.approx([0.002, 0.1, 0.2, 0.2])
    assert reco_weight_at(train, RecoConfig(), 0) == 0.2  # no warm-up: full weight at once

    class Job:  # the fields run_step reads
        round = 2
        train = TrainConfig(epochs=3, steps_per_epoch=50, fresh_student=False)

    assert run_step(Job, epoch=1, step=7) == 2 * 150 + 50 + 7  # a continued student's run
    Job.train = replace(Job.train, fresh_student=True)
    assert run_step(Job, epoch=1, step=7) == 57  # a fresh student starts its ramp again

    emb, probs, target = _random_inputs(3)
    out = {"logits": torch.log(probs), "logits_s4": torch.log(probs), "embedding": emb}
    parts = [
        joint_losses(out, target, 1, train, reco, _gen(0), w)
        for w in (0.05, 0.2)  # the same ReCo draw (same generator seed), two weights
    ]
    assert parts[0]["reco"] > 0
    for p, w in zip(parts, (0.05, 0.2)):
        expected = p["sup"] + train.unsup_weight * p["unsup"] + w * p["reco"]
        assert torch.allclose(p["total"], expected)
