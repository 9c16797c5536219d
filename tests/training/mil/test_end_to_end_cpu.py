"""End to end on CPU: train on synthetic slides from slide labels only, then map held-out
slides and score the maps against the generator's exact truth."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from training.mil.config import RunConfig
from training.mil.dataset import SlideEntry
from training.mil.loop import fit, seed_everything
from training.mil.model import build_model
from training.mil.presets import Normalisation, prepare_batch

NEEDED = ("slides.wsi.synthetic", "slides.wsi.sampler")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None for name in NEEDED),
        reason="slides.wsi.synthetic / slides.wsi.sampler cannot be imported",
    ),
]

# 12 slides of 2048 x 1536 px at 0.5 um/px: 8 to train (4 tumor, 4 normal), 4 held out.
N_SLIDES = 12
N_HELD_OUT = 4
# 64 px patches at 2 um/px (128 um of tissue each): big enough for the nuclei texture that marks
# tumor, small enough for a from-scratch resnet18 on two CPU cores.
CONFIG = RunConfig(
    alpha=0.2,
    beta=0.0,
    arch="resnet18",
    pretrained="none",
    patch_size=64,
    target_mpp=2.0,
    patches_per_slide=32,
    epochs=8,
    num_workers=0,
    normalisation_patches=256,
    amp=False,
    channels_last=False,
    seed=0,
)
INFERENCE_BATCH = 64


def slide_map_auc_inputs(
    model: nn.Module, slide: object, config: RunConfig, normalisation: Normalisation
) -> tuple[np.ndarray, np.ndarray]:
    """(truth, probability) of every map cell of the slide's tissue grid."""
    from slides.wsi.sampler import PatchSampler
    from slides.wsi.synthetic import truth_mask

    sampler = PatchSampler(
        slide.path,  # type: ignore[attr-defined]
        patch_size=config.patch_size,
        target_mpp=config.target_mpp,
    )
    grid = sampler.grid()
    patches = sampler.read(grid.l0_xy)
    model.eval()
    with torch.inference_mode():
        logits = torch.cat(
            [
                model(
                    prepare_batch(
                        patches[i : i + INFERENCE_BATCH],
                        device=torch.device("cpu"),
                        normalisation=normalisation,
                    )
                )
                for i in range(0, len(patches), INFERENCE_BATCH)
            ]
        )
    m_h, m_w = logits.shape[-2:]
    probs = torch.sigmoid(logits[:, 0]).numpy()
    rows, cols = grid.shape
    m_map = np.full((rows * m_h, cols * m_w), np.nan)
    for (row, col), patch_probs in zip(grid.index.tolist(), probs, strict=True):
        m_map[row * m_h : (row + 1) * m_h, col * m_w : (col + 1) * m_w] = patch_probs
    # One map cell spans this many level-0 pixels; the truth is resampled to the same cells.
    truth = truth_mask(slide, grid.l0_stride / m_h)  # type: ignore[arg-type]
    m_rows = min(m_map.shape[0], truth.shape[0])
    m_cols = min(m_map.shape[1], truth.shape[1])
    m_map, truth = m_map[:m_rows, :m_cols], truth[:m_rows, :m_cols]
    covered = ~np.isnan(m_map)
    return truth[covered], m_map[covered]


def held_out_pixel_auc(
    model: nn.Module, slides: list[object], normalisation: Normalisation
) -> float:
    truths, scores = zip(
        *(slide_map_auc_inputs(model, s, CONFIG, normalisation) for s in slides), strict=True
    )
    return float(roc_auc_score(np.concatenate(truths), np.concatenate(scores)))


def test_trained_maps_match_the_truth_on_held_out_slides(tmp_path: Path) -> None:
    from slides.wsi.synthetic import write_demo_cohort

    slides = write_demo_cohort(
        tmp_path / "cohort", n_slides=N_SLIDES, seed=0, width=2048, height=1536
    )
    entries = [
        SlideEntry(path=str(s.path), label=1 if s.label == "tumor" else 0, slide_id=s.path.name)
        for s in slides
    ]
    train, held_out = entries[:-N_HELD_OUT], entries[-N_HELD_OUT:]
    assert {e.label for e in train} == {0, 1} and {e.label for e in held_out} == {0, 1}

    result = fit(CONFIG, train, held_out, workdir=tmp_path / "run", device="cpu", resume=False)
    assert result.history[-1]["val_slide_auc"] == 1.0
    trained = held_out_pixel_auc(result.model, list(slides[-N_HELD_OUT:]), result.normalisation)

    seed_everything(CONFIG.seed)
    untrained = held_out_pixel_auc(
        build_model(CONFIG), list(slides[-N_HELD_OUT:]), result.normalisation
    )
    assert trained >= 0.9, (trained, untrained)
    assert untrained < 0.8 and trained - untrained > 0.15, (trained, untrained)
