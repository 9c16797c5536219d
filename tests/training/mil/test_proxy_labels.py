"""The proxy-label rule, checked against an independent plain-Python implementation."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from training.mil.config import paper_grid
from training.mil.proxy_labels import (
    instance_targets,
    mil_loss,
    patch_scores,
    proxy_counts,
    proxy_labels,
    slide_loss,
)

BAG_SIZES = (150, 1, 2, 7, 149)
GRID = paper_grid()


def reference_rule(
    scores: list[float], slide_label: int, alpha: float, beta: float
) -> tuple[list[float], list[bool]]:
    """The rule as the paper states it, with exact decimal arithmetic and the documented
    tie-break: rank ascending by (score, index); top floor(n a) -> 1, bottom floor(n b) -> 0."""
    n = len(scores)
    if slide_label == 0:
        return [0.0] * n, [True] * n
    n_top = math.floor(Fraction(repr(alpha)) * n)
    n_bottom = math.floor(Fraction(repr(beta)) * n)
    order = sorted(range(n), key=lambda i: (scores[i], i))
    labels = [0.0] * n
    mask = [False] * n
    for i in order[n - n_top :] if n_top else []:
        labels[i] = 1.0
        mask[i] = True
    for i in order[:n_bottom]:
        mask[i] = True
    return labels, mask


def make_scores(kind: str, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    if kind == "random":
        return [rng.uniform(-5, 5) for _ in range(n)]
    if kind == "tied":  # only 3 distinct values: most of the order is decided by the tie-break
        return [float(rng.choice((-1.0, 0.25, 3.0))) for _ in range(n)]
    if kind == "constant":
        return [0.5] * n
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "tied", "constant"])
@pytest.mark.parametrize("n", BAG_SIZES)
def test_matches_reference_on_every_paper_configuration(kind: str, n: int) -> None:
    for index, (alpha, beta) in enumerate(GRID):
        for seed in range(3):
            scores = make_scores(kind, n, seed * 100 + index)
            labels, mask = proxy_labels(torch.tensor(scores), 1, alpha, beta)
            expected_labels, expected_mask = reference_rule(scores, 1, alpha, beta)
            assert labels.tolist() == expected_labels, (alpha, beta, n, kind)
            assert mask.tolist() == expected_mask, (alpha, beta, n, kind)
            assert labels.dtype == torch.float32 and mask.dtype == torch.bool


@pytest.mark.parametrize("n", BAG_SIZES)
def test_counts_and_order_invariants(n: int) -> None:
    for alpha, beta in GRID:
        scores = torch.tensor(make_scores("random", n, 1))
        labels, mask = proxy_labels(scores, 1, alpha, beta)
        n_top = math.floor(Fraction(repr(alpha)) * n)
        n_bottom = math.floor(Fraction(repr(beta)) * n)
        assert int(labels.sum()) == n_top
        assert int(mask.sum()) == n_top + n_bottom
        assert not bool((labels.bool() & ~mask).any())  # a 1 is always in the loss
        ones = scores[labels.bool()]
        zeros = scores[mask & ~labels.bool()]
        ignored = scores[~mask]
        if ones.numel() and (zeros.numel() or ignored.numel()):
            assert ones.min() >= torch.cat([zeros, ignored]).max()
        if zeros.numel() and ignored.numel():
            assert zeros.max() <= ignored.min()


def test_floors_are_exact_for_decimal_fractions() -> None:
    # The traps: products and differences of decimals that land just below an integer.
    assert 100 * 0.29 < 29 and 5 * (1 - 0.8) < 1
    assert proxy_counts(5, 1 - 0.8, 0.8) == (1, 4)
    assert proxy_counts(150, 0.6, 0.4) == (90, 60)
    assert proxy_counts(150, 0.2, 0.8) == (30, 120)
    assert proxy_counts(10, 0.3, 0.7) == (3, 7)
    assert proxy_counts(100, 0.29, 0.0) == (29, 0)
    assert proxy_counts(149, 0.2, 0.2) == (29, 29)
    assert proxy_counts(1, 1.0, 0.0) == (1, 0)
    assert proxy_counts(0, 0.5, 0.5) == (0, 0)


@pytest.mark.parametrize("n", BAG_SIZES)
def test_normal_slides_are_all_zero_and_unmasked(n: int) -> None:
    for alpha, beta in GRID:
        labels, mask = proxy_labels(torch.randn(n), 0, alpha, beta)
        assert labels.tolist() == [0.0] * n
        assert mask.tolist() == [True] * n


def test_small_alpha_times_bag_gives_no_positive_but_finite_loss() -> None:
    # floor(2 * 0.2) == 0 tumor instances, floor(2 * 0.4) == 0 normal ones: nothing in the loss.
    logits = torch.randn(2, requires_grad=True)
    labels, mask = proxy_labels(logits, 1, 0.2, 0.4)
    assert not mask.any()
    loss = mil_loss(logits, labels, mask)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # floor(3 * 0.2) == 0 but floor(3 * 0.4) == 1: only the R_beta term remains.
    logits3 = torch.tensor([0.3, -2.0, 1.0], requires_grad=True)
    labels3, mask3 = proxy_labels(logits3, 1, 0.2, 0.4)
    assert mask3.tolist() == [False, True, False] and labels3.sum() == 0
    loss3 = mil_loss(logits3, labels3, mask3)
    loss3.backward()
    assert math.isclose(loss3.item(), float(F.softplus(torch.tensor(-2.0))), rel_tol=1e-6)
    assert logits3.grad is not None and torch.isfinite(logits3.grad).all()


def test_single_instance_bag() -> None:
    labels, mask = proxy_labels(torch.tensor([0.7]), 1, 1.0, 0.0)
    assert labels.tolist() == [1.0] and mask.tolist() == [True]
    labels, mask = proxy_labels(torch.tensor([0.7]), 1, 0.6, 0.4)
    assert mask.tolist() == [False]


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [
        (0.0, 0.0),
        (-0.2, 0.2),
        (1.2, 0.0),
        (0.2, -0.2),
        (0.6, 0.6),
        (float("nan"), 0.0),
        (0.5, float("inf")),
    ],
)
def test_invalid_fractions_raise(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError):
        proxy_labels(torch.zeros(5), 1, alpha, beta)
    with pytest.raises(ValueError):
        proxy_labels(torch.zeros(5), 0, alpha, beta)


@pytest.mark.parametrize("label", [2, -1, True, 0.5])
def test_invalid_slide_label_raises(label: object) -> None:
    with pytest.raises(ValueError, match="slide_label"):
        proxy_labels(torch.zeros(5), label, 0.2, 0.2)  # type: ignore[arg-type]


def test_scores_must_be_one_dimensional() -> None:
    with pytest.raises(ValueError, match="1-D"):
        proxy_labels(torch.zeros(2, 3), 1, 0.2, 0.2)


def test_ties_are_broken_deterministically_and_by_index() -> None:
    scores = torch.zeros(10)
    first = proxy_labels(scores, 1, 0.3, 0.2)
    second = proxy_labels(scores.clone(), 1, 0.3, 0.2)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # Among equal scores the lower index ranks lower: the last indices get 1, the first 0.
    assert first[0].tolist() == [0.0] * 7 + [1.0] * 3
    assert first[1].tolist() == [True, True] + [False] * 5 + [True] * 3


def test_result_does_not_depend_on_dtype() -> None:
    scores = make_scores("tied", 149, 5)
    for alpha, beta in GRID:
        a = proxy_labels(torch.tensor(scores, dtype=torch.float32), 1, alpha, beta)
        b = proxy_labels(torch.tensor(scores, dtype=torch.float64), 1, alpha, beta)
        c = proxy_labels(torch.tensor(scores, dtype=torch.bfloat16), 1, alpha, beta)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])  # values exact in bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_result_does_not_depend_on_device() -> None:
    for kind in ("random", "tied", "constant"):
        scores = torch.tensor(make_scores(kind, 150, 2))
        for alpha, beta in GRID:
            cpu = proxy_labels(scores, 1, alpha, beta)
            gpu = proxy_labels(scores.cuda(), 1, alpha, beta)
            assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


def test_labels_carry_no_gradient() -> None:
    logits = torch.randn(20, requires_grad=True)
    labels, mask = proxy_labels(logits, 1, 0.4, 0.4)
    assert not labels.requires_grad and not mask.requires_grad


def test_mil_loss_is_mean_bce_over_unmasked_times_weight() -> None:
    torch.manual_seed(0)
    logits = torch.randn(30, requires_grad=True)
    labels, mask = proxy_labels(logits, 1, 0.4, 0.2)
    loss = mil_loss(logits, labels, mask, weight=2.5)
    kept = [i for i in range(30) if mask[i]]
    manual = sum(
        F.binary_cross_entropy_with_logits(logits[i], labels[i]).item() for i in kept
    ) / len(kept)
    assert math.isclose(loss.item(), 2.5 * manual, rel_tol=1e-5)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[~mask] == 0)
    assert torch.all(logits.grad[mask] != 0)


def test_mil_loss_ignores_non_finite_masked_logits() -> None:
    logits = torch.tensor([float("inf"), 0.0, -float("inf")], requires_grad=True)
    labels = torch.tensor([0.0, 1.0, 1.0])
    mask = torch.tensor([False, True, False])
    loss = mil_loss(logits, labels, mask)
    loss.backward()
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mil_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="share a shape"):
        mil_loss(torch.zeros(3), torch.zeros(4), torch.ones(3, dtype=torch.bool))


def test_patch_mode_ranks_by_mean_probability_and_broadcasts() -> None:
    # Patch 0 has the higher mean logit (2.0 vs 1.5) but the lower mean probability
    # (0.63 vs 0.82): the documented patch score is the mean probability.
    logits = torch.tensor([[5.0, -1.0], [1.5, 1.5]]).view(2, 1, 1, 2)
    scores = patch_scores(logits)
    assert scores[1] > scores[0]
    labels, mask = instance_targets(logits, 1, 0.5, 0.0, "patch")
    assert labels.shape == mask.shape == logits.shape
    assert labels[1].eq(1).all() and labels[0].eq(0).all()
    assert mask[1].all() and not mask[0].any()


def test_pixel_mode_ranks_every_cell() -> None:
    logits = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    labels, mask = instance_targets(logits, 1, 0.2, 0.2, "pixel")
    flat_labels, flat_mask = labels.flatten(), mask.flatten()
    # 18 cells: the 3 highest -> 1, the 3 lowest -> 0.
    assert flat_labels.tolist() == [0.0] * 15 + [1.0] * 3
    assert flat_mask.tolist() == [True] * 3 + [False] * 12 + [True] * 3


def test_instance_targets_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="instance"):
        instance_targets(torch.zeros(2, 1, 2, 2), 1, 0.2, 0.2, "cell")
    with pytest.raises(ValueError, match="N, 1, h, w"):
        instance_targets(torch.zeros(2, 2), 1, 0.2, 0.2, "patch")


def test_slide_loss_weights_normal_and_tumor_slides() -> None:
    logits = torch.randn(6, 1, 2, 2)
    normal = slide_loss(logits, 0, alpha=0.5, beta=0.0, instance="patch", c0=3.0, c1=1.0)
    normal_ref = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    assert math.isclose(float(normal), 3.0 * float(normal_ref), rel_tol=1e-5)
    tumor = slide_loss(logits, 1, alpha=1.0, beta=0.0, instance="pixel", c0=3.0, c1=0.5)
    tumor_ref = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    assert math.isclose(float(tumor), 0.5 * float(tumor_ref), rel_tol=1e-5)
