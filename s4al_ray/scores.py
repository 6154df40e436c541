"""Acquisition scores: the registry that ``acquisition.function`` chooses from.

A score turns one image's softmax (C, H, W) into an uncertainty per pixel (H, W); higher means
more worth labeling. The teacher averages it per region (``acquisition.region_scores``), hands
over each block's candidates, and the driver selects regions under the budget
(``acquisition.select``).

Adding a score is one function here::

    @register("least_confidence")
    def least_confidence(probs: Tensor, ctx: ScoreContext) -> Tensor:
        return 1.0 - probs.max(0).values

It is then valid as ``acquisition.function=least_confidence`` everywhere (config, sweeps). A
score that needs more than the probabilities declares it with ``needs=``: ``"class_weights"``
(inverse labeled-class frequency, mean 1), ``"generator"`` (a ``torch.Generator`` seeded per
image from the experiment seed and the sample id, so scores do not depend on batching) or
``"ground_truth"`` (the image's true label map: diagnostic scores of benchmarks with the
simulated oracle, never a real method).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

NEEDS = ("class_weights", "generator", "ground_truth")


@dataclass(frozen=True)
class ScoreContext:
    """What a score may use besides the probabilities; only what it declared is filled."""

    class_weights: Tensor | None = None
    generator: torch.Generator | None = None
    ground_truth: Tensor | None = None  # (H, W) class ids, IGNORE_INDEX where unlabeled


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[Tensor, ScoreContext], Tensor]
    needs: frozenset[str]
    doc: str

    def __call__(self, probs: Tensor, ctx: ScoreContext = ScoreContext()) -> Tensor:
        return self.fn(probs, ctx)

    def context(
        self,
        seed: int,
        sample_id: str,
        class_weights: Tensor | None,
        ground_truth: Tensor | None = None,
    ) -> ScoreContext:
        """The context for one image: a generator only when the score draws random numbers."""
        generator = None
        if "generator" in self.needs:
            key = f"{seed}/{sample_id}".encode()
            generator = torch.Generator().manual_seed(zlib.crc32(key))
        return ScoreContext(
            class_weights if "class_weights" in self.needs else None,
            generator,
            ground_truth if "ground_truth" in self.needs else None,
        )


SCORES: dict[str, Score] = {}


def register(name: str, *, needs: tuple[str, ...] = ()):
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"score {name!r}: unknown needs {sorted(unknown)}; one of {NEEDS}")

    def add(fn: Callable[[Tensor, ScoreContext], Tensor]):
        SCORES[name] = Score(name, fn, frozenset(needs), (fn.__doc__ or "").strip())
        return fn

    return add


def get_score(name: str) -> Score:
    if name not in SCORES:
        raise ValueError(f"unknown acquisition function {name!r}; one of {', '.join(SCORES)}")
    return SCORES[name]


# ``torch.special.entr`` is 0 at p = 0, so exact zeros in a softmax never give NaN.


@register("entropy")
def entropy(probs: Tensor, ctx: ScoreContext) -> Tensor:
    """Shannon entropy of the predicted distribution (S4AL+)."""
    return torch.special.entr(probs.clamp(0.0, 1.0)).sum(0)


@register("class_weighted_entropy", needs=("class_weights",))
def class_weighted_entropy(probs: Tensor, ctx: ScoreContext) -> Tensor:
    """Entropy times the inverse labeled frequency of the predicted class: rare classes first."""
    return entropy(probs, ctx) * ctx.class_weights.to(probs.dtype)[probs.argmax(0)]


@register("margin")
def margin(probs: Tensor, ctx: ScoreContext) -> Tensor:
    """One minus the gap between the two most likely classes."""
    top2 = probs.topk(2, dim=0).values
    return 1.0 - (top2[0] - top2[1])


@register("oracle_error", needs=("ground_truth",))
def oracle_error(probs: Tensor, ctx: ScoreContext) -> Tensor:
    """1 where the teacher's arg-max is wrong by the ground truth: the best an error-seeking
    score could do (a benchmark's upper bound; needs the simulated oracle)."""
    truth = ctx.ground_truth.to(probs.device)
    return ((probs.argmax(0) != truth) & (truth < probs.shape[0])).to(probs.dtype)


@register("random", needs=("generator",))
def random(probs: Tensor, ctx: ScoreContext) -> Tensor:
    """Uniform noise: the random-acquisition baseline."""
    return torch.rand(probs.shape[1:], generator=ctx.generator)
