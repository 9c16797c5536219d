"""The (alpha, beta) proxy-label rule of Lerousseau et al. (MICCAI 2020) and its masked loss.

For one slide's n instances with scores s (the model's own detached predictions):

- normal slide (label 0): every instance gets label 0, none is masked (the R_FP term);
- tumor slide (label 1): the floor(n * alpha) highest-scored instances get label 1 (R_alpha),
  the floor(n * beta) lowest-scored get label 0 (R_beta), all others are masked out.

Ties: instances are ranked by a *stable ascending* sort of their scores, so among equal scores
the lower index ranks lower (it counts as the smaller score). The top floor(n * alpha) of that
ranking get 1 and the bottom floor(n * beta) get 0; one ranking serves both ends, so no
instance can receive both labels. The stable sort makes the result identical on every device.

Instances: in ``"patch"`` mode an instance is a patch and its score is the mean *probability*
(sigmoid) over its logit map, the paper's "predicted probability" of a patch; its label is
broadcast to all its cells, so the loss averages the BCE of the cells of unmasked patches (every
patch has the same number of cells, so this equals the mean of per-patch mean BCEs). In
``"pixel"`` mode every cell of every map is an instance, ranked on its logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from training.mil.config import FRACTION_TOLERANCE

# floor(150 * 0.6) must be 90, yet 150 * 0.6 == 89.99999999999999 in floating point: the
# product is nudged up by this much before flooring. n * alpha is never legitimately within
# 1e-9 below an integer for n <= 2**20 and alpha given to a few decimals.
FLOOR_TOLERANCE = 1e-9


def proxy_counts(n: int, alpha: float, beta: float) -> tuple[int, int]:
    """(floor(n * alpha), floor(n * beta)), exact for decimal alpha and beta.

    Raises ValueError for n < 0 or an (alpha, beta) outside alpha > 0, beta >= 0,
    alpha + beta <= 1.
    """
    _check_fractions(alpha, beta)
    if n < 0:
        raise ValueError(f"the number of instances must be >= 0, got {n}")
    n_top = min(n, math.floor(n * alpha + FLOOR_TOLERANCE))
    n_bottom = min(n - n_top, math.floor(n * beta + FLOOR_TOLERANCE))
    return n_top, n_bottom


def _check_fractions(alpha: float, beta: float) -> None:
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"alpha and beta must be finite, got ({alpha}, {beta})")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if alpha > 1 + FRACTION_TOLERANCE:
        raise ValueError(f"alpha must be <= 1, got {alpha}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if alpha + beta > 1 + FRACTION_TOLERANCE:
        raise ValueError(f"alpha + beta must be <= 1, got {alpha} + {beta}")


def proxy_labels(
    scores: Tensor, slide_label: int, alpha: float, beta: float
) -> tuple[Tensor, Tensor]:
    """Proxy labels and loss mask for one slide's instances.

    ``scores``: 1-D tensor of n instance scores (logits or probabilities; only their order
    matters). They are detached and compared in float32, so no gradient flows through the
    choice of labels and bf16 rounding does not create spurious ties.
    Returns ``(labels, mask)``: float32 0/1 labels and a bool mask (True = in the loss), both
    of shape (n,) on ``scores``' device. Raises ValueError for a ``slide_label`` not in {0, 1},
    a non 1-D ``scores`` or an invalid (alpha, beta).
    """
    if isinstance(slide_label, bool) or slide_label not in (0, 1):
        raise ValueError(f"slide_label must be 0 or 1, got {slide_label!r}")
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    n_top, n_bottom = proxy_counts(n, alpha, beta)
    labels = torch.zeros(n, dtype=torch.float32, device=scores.device)
    if slide_label == 0:
        return labels, torch.ones(n, dtype=torch.bool, device=scores.device)
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.detach().float(), stable=True).indices
    if n_top:
        top = order[n - n_top :]
        labels[top] = 1.0
        mask[top] = True
    if n_bottom:
        mask[order[:n_bottom]] = True
    return labels, mask


def mil_loss(
    logits_per_instance: Tensor, labels: Tensor, mask: Tensor, weight: float = 1.0
) -> Tensor:
    """``weight`` x BCE-with-logits averaged over the unmasked instances.

    All three tensors share one shape. When nothing is unmasked the result is a 0 that is still
    connected to the graph (backward works, gradients are 0), never NaN. Computed in float32.
    """
    if not (logits_per_instance.shape == labels.shape == mask.shape):
        raise ValueError(
            f"logits, labels and mask must share a shape, got {tuple(logits_per_instance.shape)},"
            f" {tuple(labels.shape)}, {tuple(mask.shape)}"
        )
    per_instance = F.binary_cross_entropy_with_logits(
        logits_per_instance.float(), labels.float(), reduction="none"
    )
    # where(), not multiplication by the mask, so that a non-finite BCE of a masked instance
    # cannot leak NaN into the sum.
    kept = torch.where(mask, per_instance, torch.zeros_like(per_instance))
    count = mask.sum().clamp_min(1)
    return kept.sum() / count * weight


def patch_scores(logits: Tensor) -> Tensor:
    """Per-patch score: mean probability over each (N, 1, h, w) map, (N,) float32, detached."""
    return torch.sigmoid(logits.detach().float()).mean(dim=(1, 2, 3))


def instance_targets(
    logits: Tensor, slide_label: int, alpha: float, beta: float, instance: str
) -> tuple[Tensor, Tensor]:
    """Proxy labels and mask shaped like ``logits`` (N, 1, h, w), for ``instance`` mode."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, 1, h, w), got shape {tuple(logits.shape)}")
    if instance == "patch":
        labels, mask = proxy_labels(patch_scores(logits), slide_label, alpha, beta)
        shape = (-1, 1, 1, 1)
        return labels.view(shape).expand_as(logits), mask.view(shape).expand_as(logits)
    if instance == "pixel":
        labels, mask = proxy_labels(logits.detach().reshape(-1), slide_label, alpha, beta)
        return labels.view(logits.shape), mask.view(logits.shape)
    raise ValueError(f"instance must be 'patch' or 'pixel', got {instance!r}")


def slide_loss(
    logits: Tensor,
    slide_label: int,
    *,
    alpha: float,
    beta: float,
    instance: str,
    c0: float = 1.0,
    c1: float = 1.0,
) -> Tensor:
    """The loss of one slide's bag: proxy labels from ``logits`` (detached), weighted c0 / c1.

    ``logits``: (N, 1, h, w), the model's output on the slide's N patches.
    """
    labels, mask = instance_targets(logits, slide_label, alpha, beta, instance)
    weight = c1 if slide_label == 1 else c0
    return mil_loss(logits, labels, mask, weight)
