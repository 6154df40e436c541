"""The selection order: one deterministic ranking of candidate regions, by descending score,
ties broken by image position (the sorted pool ids), then region index.

Every selection rule fills its budget in this order, and the cut-off's score bins
(``acquisition_cutoff``) are the top bits of its score key, so both agree on NaN and -0.0.
"""

from __future__ import annotations

import numpy as np

_LOW = np.uint64(0xFFFFFFFF)


def score_order_key(score: np.ndarray) -> np.ndarray:
    """uint32 keys that order float32 scores as numbers: a higher score never gets a lower key.
    NaN gets 0, below every number (the ranking puts it last), and -0.0 the key of 0.0."""
    score = np.ascontiguousarray(score, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = 0.0
    bits = score.view(np.uint32)
    key = np.where(bits >> 31 != 0, ~bits, bits | np.uint32(0x80000000))
    return np.where(np.isnan(score), np.uint32(0), key).astype(np.uint32)


def selection_order(score: np.ndarray, image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Indices by descending ``score``, ties by ``image`` position, then ``region``."""
    if score.size == 0:
        return np.empty(0, np.int64)
    span = int(region.max()) + 1
    if int(image.max()) * span + span <= 2**32 and score.size <= 2**32:
        return _packed_order(score, image, region, span)
    return np.lexsort((region, image, -score))


def _packed_order(score, image, region, span: int) -> np.ndarray:
    """``selection_order`` by sorting 64-bit words (score high, 32 bits of order low) and
    reading the indices back from the low bits: np.sort is several times faster than argsort
    (6M candidates on the 2-vCPU VM of 2026-12-04: 0.3 s against 1.25 s for the argsort of one
    key). The tie (image, region) orders the entries first, unless they come in that order
    already, as the round loop's merged blocks do."""
    tie = image.astype(np.uint64)
    tie *= np.uint64(span)
    tie += region.astype(np.uint64)
    index = np.arange(score.size, dtype=np.uint64)
    by_tie = None
    if not (tie[1:] > tie[:-1]).all():
        tie <<= np.uint64(32)
        tie |= index
        tie.sort()  # (tie, index): a strict order, equal ties kept in index order
        tie &= _LOW
        by_tie = tie.astype(np.int64)
    del tie
    key = (~score_order_key(score if by_tie is None else score[by_tie])).astype(np.uint64)
    key <<= np.uint64(32)
    key |= index  # the entry's place in tie order breaks equal scores
    key.sort()
    key &= _LOW
    order = key.astype(np.int64)
    return order if by_tie is None else by_tie[order]


def ranked(score, image, region, mode: str, top_k: int) -> np.ndarray:
    """Indices in selection order (``selection_order``); ``topk`` keeps only each image's
    ``top_k`` best."""
    order = selection_order(score, image, region)
    if mode == "topk":
        # rank of each entry within its image, in selection order (a stable sort by image)
        images = image[order]
        by_image = np.argsort(images, kind="stable")
        sorted_images = images[by_image]
        starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
        counts = np.diff(np.r_[starts, sorted_images.size])
        rank = np.empty(order.size, dtype=np.int64)
        rank[by_image] = np.arange(order.size) - np.repeat(starts, counts)
        order = order[rank < top_k]
    elif mode != "budget":
        raise ValueError(f"unknown acquisition mode {mode!r}; budget or topk")
    return order
