"""ReCo: regional contrastive loss (Liu et al., ICLR 2022), fully vectorised.

The reference implementation samples queries and negatives with a Python double loop (per class,
per query); here every random draw is one batched op, so the cost is a handful of gathers and one
matmul or einsum, with no Python loop over classes, queries or negatives. Peak extra memory is
A*Q*min(Nv, K*E) floats.

Shapes: N = B*h*w pixels, Nv valid pixels, E embedding channels, C classes, A classes that
contribute (present and with hard queries), Q = ``num_queries``, K = ``num_negatives``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from s4al_ray import IGNORE_INDEX


def _rng_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    # Random draws must happen on the generator's device (a CPU generator cannot feed CUDA ops).
    return generator.device if generator is not None else fallback


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    rng = _rng_device(generator, device)
    return torch.rand(shape, generator=generator, device=rng).to(device)


def _group_by_class(
    idx: Tensor, cls: Tensor, num_classes: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel indices sorted by class, in random order within each class.

    Returns (sorted indices, start offset per class, count per class), so pixel j of class c is
    ``sorted[start[c] + j]``: a ragged per-class list without a Python loop.
    """
    device = idx.device
    rng = _rng_device(generator, device)
    shuffle = torch.randperm(idx.numel(), generator=generator, device=rng).to(device)
    idx, cls = idx[shuffle], cls[shuffle]
    order = torch.argsort(cls, stable=True)  # stable: keeps the random order inside a class
    counts = torch.bincount(cls, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return idx[order], starts, counts


def _pick(sorted_idx: Tensor, starts: Tensor, counts: Tensor, positions: Tensor) -> Tensor:
    """Gather ``sorted_idx[starts + positions]`` with positions clamped into each class's range."""
    positions = torch.minimum(positions, (counts - 1).clamp_min(0))
    return sorted_idx[starts + positions]


def _query_positions(counts: Tensor, num_queries: int, generator: torch.Generator | None) -> Tensor:
    """(A, Q) positions into each class's shuffled hard-pixel list.

    The list is already a random permutation, so its first Q entries are a draw without
    replacement; classes with fewer than Q hard pixels draw uniformly with replacement instead.
    """
    device = counts.device
    first = torch.arange(num_queries, device=device).expand(counts.numel(), -1)
    u = _uniform((counts.numel(), num_queries), generator, device)
    with_repl = (u * counts[:, None]).long()
    return torch.where(counts[:, None] >= num_queries, first, with_repl)


def _negative_classes(
    proto_n: Tensor,
    active: Tensor,
    present: Tensor,
    temperature: float,
    n: int,
    generator: torch.Generator | None,
) -> Tensor:
    """(A, n) class ids of negatives: k != c drawn with p ∝ softmax(cos(proto_c, proto_k) / T)."""
    sim = proto_n[active] @ proto_n.T / temperature  # (A, C)
    allowed = present[None, :].expand_as(sim).clone()
    allowed[torch.arange(active.numel(), device=sim.device), active] = False
    weights = torch.softmax(sim.masked_fill(~allowed, float("-inf")), dim=1)
    rng = _rng_device(generator, sim.device)
    draws = torch.multinomial(weights.to(rng), n, replacement=True, generator=generator)
    return draws.to(sim.device)


def _pixels(flat: Tensor, idx: Tensor, hw: int) -> Tensor:
    """Rows of a (B, E, h*w) map at flat pixel indices ``b*h*w + p``: shape idx.shape + (E,)."""
    return flat[idx // hw, :, idx % hw]


class _GatheredScores(torch.autograd.Function):
    """``(queries @ keys.T).gather(1, neg)`` with a sparse backward.

    Autograd's backward of that gather builds the dense (M, Nv) gradient of the whole score
    matrix (zero fill, scatter) and multiplies it by ``keys``: as much arithmetic as the forward
    matmul, for a gradient with only K non-zeros per row. The query gradient is the per-row
    weighted sum of the K gathered keys, which ``F.embedding_bag`` computes directly (forward +
    backward 24.5 -> 19.2 ms for the default run's 1152 queries x 256 negatives on a 2-vCPU VM:
    BENCHMARKS.md, "Exact rewrites of the step"). Keys are constants here (ReCo's gradient
    reaches only the queries).
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, neg: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(keys, neg)
        return (queries @ keys.T).gather(1, neg)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        keys, neg = ctx.saved_tensors
        return F.embedding_bag(neg, keys, per_sample_weights=grad, mode="sum"), None, None


def gathered_scores(queries: Tensor, keys: Tensor, neg: Tensor) -> Tensor:
    """(M, K) ``(queries @ keys.T).gather(1, neg)``, with the sparse backward of _GatheredScores."""
    return _GatheredScores.apply(queries, keys, neg)


def negative_logits(queries: Tensor, keys: Tensor, neg: Tensor) -> Tensor:
    """(A, Q, K) cosines between each query and its K negative keys (``keys[neg]``).

    Two equivalent routes; take the one that materialises fewer floats. Scoring every query
    against all Nv valid pixels and gathering costs A*Q*Nv floats and is a fast matmul; gathering
    the keys first costs A*Q*K*E floats (the ReCo bound) but does not grow with the image.
    """
    n_active, q, k = neg.shape
    if keys.shape[0] <= k * keys.shape[1]:
        if keys.requires_grad:
            raise ValueError("ReCo's keys are targets: compute them without gradient")
        flat_queries = queries.reshape(n_active * q, -1)
        scores = gathered_scores(flat_queries, keys, neg.reshape(n_active * q, k))
        return scores.view(n_active, q, k)
    return torch.einsum("aqe,aqke->aqk", queries, keys[neg])


def reco_loss(
    embedding: Tensor,
    probs: Tensor,
    target: Tensor,
    *,
    strong_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Regional contrastive loss over valid pixels.

    Args:
        embedding: (B, E, h, w) raw representations; L2-normalised here.
        probs: (B, C, h, w) softmax probabilities; treated as constants.
        target: (B, h, w) long class ids, ``IGNORE_INDEX`` where a pixel is not valid (the caller
            has already turned low-confidence pseudo-labels into ignore).
        strong_threshold: pixels whose probability for their class is below this are hard queries.
        temperature: softmax temperature for the logits and for the negative-class distribution.
        num_queries: queries per class (Q).
        num_negatives: negatives per query (K).
        generator: source of all randomness; the result is deterministic given its state.

    Returns:
        0-dim loss, the mean over contributing classes of the cross-entropy with the prototype
        as the positive. Gradients reach only the query pixels. When fewer than two classes are
        valid or no class has a hard query, an exact zero still connected to ``embedding``.
    """
    if embedding.dim() != 4 or probs.dim() != 4 or target.dim() != 3:
        raise ValueError("expected embedding (B,E,h,w), probs (B,C,h,w), target (B,h,w)")
    if embedding.shape[-2:] != probs.shape[-2:] or probs.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"spatial sizes differ: {tuple(embedding.shape)}, {tuple(probs.shape)}, "
            f"{tuple(target.shape)}"
        )
    # Autocast off: prototype sums run over up to ~1e5 pixels, beyond what fp16 matmuls hold.
    with torch.autocast(device_type=embedding.device.type, enabled=False):
        return _reco(
            embedding,
            probs,
            target,
            strong_threshold,
            temperature,
            num_queries,
            num_negatives,
            generator,
        )


def _reco(
    embedding: Tensor,
    probs: Tensor,
    target: Tensor,
    strong_threshold: float,
    temperature: float,
    num_queries: int,
    num_negatives: int,
    generator: torch.Generator | None,
) -> Tensor:
    zero = embedding.sum() * 0.0
    num_classes, hw = probs.shape[1], target.shape[-2] * target.shape[-1]
    flat = embedding.flatten(2)  # (B, E, h*w) view: pixels are gathered, never copied wholesale
    tgt = target.reshape(-1)

    valid_idx = torch.nonzero(tgt != IGNORE_INDEX).squeeze(1)
    valid_cls = tgt[valid_idx]
    if valid_cls.numel() and (valid_cls.min() < 0 or valid_cls.max() >= num_classes):
        raise ValueError(f"target has ids outside [0, {num_classes}) other than {IGNORE_INDEX}")
    # Positions 0..Nv-1 into the valid-pixel list, grouped by class (negatives are drawn from it).
    positions = torch.arange(valid_idx.numel(), device=tgt.device)
    valid_sorted, valid_starts, valid_counts = _group_by_class(
        positions, valid_cls, num_classes, generator
    )
    present = valid_counts > 0
    if int(present.sum()) < 2:
        return zero

    # Prototypes, negatives and probabilities are targets, not parameters: no gradient.
    with torch.no_grad():
        keys = F.normalize(_pixels(flat, valid_idx, hw).float(), dim=-1)  # (Nv, E)
        # One-hot matmul rather than index_add_: same sums, much faster than a scatter on CPU.
        onehot = F.one_hot(valid_cls, num_classes).to(keys.dtype)  # (Nv, C)
        proto_n = F.normalize(onehot.T @ keys, dim=1)  # mean and sum share a direction
        own_prob = probs.flatten(2)[valid_idx // hw, valid_cls, valid_idx % hw].float()

    hard = own_prob < strong_threshold
    hard_sorted, hard_starts, hard_counts = _group_by_class(
        valid_idx[hard], valid_cls[hard], num_classes, generator
    )
    active = torch.nonzero(present & (hard_counts > 0)).squeeze(1)  # (A,)
    if active.numel() == 0:
        return zero
    n_active, q, k = active.numel(), num_queries, num_negatives

    # Queries: the only pixels that carry gradient.
    q_pos = _query_positions(hard_counts[active], q, generator)  # (A, Q)
    q_idx = _pick(hard_sorted, hard_starts[active, None], hard_counts[active, None], q_pos)
    queries = F.normalize(_pixels(flat, q_idx, hw).float(), dim=-1)  # (A, Q, E)

    # Negatives: a class per key from the prototype-similarity distribution, then a uniformly
    # random valid pixel of that class.
    neg_cls = _negative_classes(proto_n, active, present, temperature, q * k, generator)  # (A, Q*K)
    u = _uniform(tuple(neg_cls.shape), generator, tgt.device)
    neg_pos = (u * valid_counts[neg_cls]).long()
    neg = _pick(valid_sorted, valid_starts[neg_cls], valid_counts[neg_cls], neg_pos)  # (A, Q*K)

    pos_logit = (queries * proto_n[active, None, :]).sum(-1, keepdim=True)  # (A, Q, 1)
    neg_logit = negative_logits(queries, keys, neg.view(n_active, q, k))  # (A, Q, K)
    logits = torch.cat([pos_logit, neg_logit], dim=-1) / temperature
    labels = torch.zeros(n_active * q, dtype=torch.long, device=logits.device)
    # Every class has exactly Q queries, so the mean over all queries is the mean over classes.
    return F.cross_entropy(logits.reshape(n_active * q, k + 1), labels)
