"""Training and validation loops, and ``fit`` which ties a whole run together.

One step = one slide: its B patches are forwarded together, proxy labels are chosen from the
model's own detached predictions (``proxy_labels``), the masked BCE is weighted by c0 (normal
slides) or c1 (tumor slides) and Adam takes a step. One epoch visits every training slide once,
in an order shuffled by a seeded generator that is saved in every checkpoint.

Randomness is derived, not accumulated, wherever possible: the patches of a slide in an epoch
come from (seed, epoch, slide index) in the dataset and their augmentation from the same triple
here, so a run is reproducible whatever the number of loader workers and across resumption.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import random
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, Sampler

from common.errors import InvalidInputError, TumorMapError
from training.mil.checkpoint import (
    BEST_NAME,
    LATEST_NAME,
    check_resumable,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.mil.config import RunConfig
from training.mil.dataset import (
    STREAM_NORMALISATION,
    STREAM_TRAIN,
    STREAM_VAL,
    SamplerFactory,
    SlideBagDataset,
    SlideEntry,
    TruthFn,
)
from training.mil.device import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_mean,
    autocast,
    barrier,
    broadcast_object,
    configure_backends,
    distributed_sampler,
    prepare_model,
    resolve_device,
    unwrap_model,
    uses_channels_last,
    wrap_ddp,
)
from training.mil.model import build_model, freeze_batchnorm
from training.mil.presets import (
    AugmentSettings,
    Normalisation,
    compute_normalisation,
    prepare_batch,
)
from training.mil.proxy_labels import patch_scores, slide_loss

logger = logging.getLogger(__name__)

# Normalisation statistics are measured on at most this many training slides: opening a slide
# costs a second or so, and the stain statistics of a few dozen slides are stable.
NORMALISATION_MAX_SLIDES = 64
# One slide's normalisation sample is read in one go; this bounds its memory (about 150 MB of
# uint8 at 224 px).
NORMALISATION_MAX_PER_SLIDE = 1024
# A map cell counts as tumor when at least this fraction of its area is tumor in the truth.
TRUTH_CELL_THRESHOLD = 0.5
# Seed stream of the per-step augmentation generator (distinct from the dataset's streams).
AUGMENT_STREAM = 100


class RunCancelled(TumorMapError):
    """``should_stop()`` returned True: the run stopped cooperatively at a step boundary."""

    code = "run_cancelled"
    http_status = 409

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(
            f"training cancelled at epoch {epoch}, step {step}",
            details={"epoch": epoch, "step": step},
        )
        self.epoch = epoch
        self.step = step


class TrainingDivergedError(TumorMapError):
    """The loss became NaN or infinite; continuing would only spread NaN into the weights."""

    code = "training_diverged"
    http_status = 422


@dataclass(frozen=True)
class StepInfo:
    """Progress of one training step (one slide)."""

    epoch: int
    step: int  # 0-based within the epoch
    steps: int  # steps in this epoch (this rank's share under DDP)
    loss: float
    patches_per_s: float  # end to end: includes waiting for the loader


@dataclass(frozen=True)
class EpochInfo:
    """What ``fit`` reports after each epoch."""

    epoch: int  # 0-based
    epochs: int
    metrics: dict[str, float]
    improved: bool
    best_epoch: int | None
    best_metric: float | None
    checkpoint: Path | None


@dataclass
class FitResult:
    """The outcome of ``fit``: best epoch and metric, history, checkpoints, final model."""

    metric_name: str
    best_epoch: int | None
    best_metric: float | None
    epochs_completed: int
    history: list[dict[str, float]]
    normalisation: Normalisation
    latest_checkpoint: Path
    best_checkpoint: Path | None
    model: nn.Module = field(repr=False)


def augmentation_generator(seed: int, epoch: int, slide_index: int) -> torch.Generator:
    """The CPU generator of one slide's augmentation in one epoch."""
    sequence = np.random.SeedSequence([seed, AUGMENT_STREAM, epoch, slide_index])
    generator = torch.Generator()
    generator.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0]))
    return generator


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def usable_workers(requested: int) -> int:
    """``requested`` worker processes, or 0 where none may be started.

    Daemonic processes (e.g. Celery prefork children) may not have children: slides are then
    read in the calling process (by its threads, where the caller has them).
    """
    if requested and multiprocessing.current_process().daemon:
        logger.warning(
            "running in a daemonic process: reading slides without worker processes "
            "(in this process and its threads)"
        )
        return 0
    return requested


def make_loader(
    dataset: SlideBagDataset,
    config: RunConfig,
    device: torch.device,
    *,
    generator: torch.Generator,
    shuffle: bool,
    sampler: Sampler[Any] | None = None,
) -> DataLoader[dict[str, Any]]:
    """A loader yielding one slide (one dataset item, uncollated) per step.

    ``generator`` drives the shuffling (and the loader's worker seeds); pass a dedicated one
    so that loading never touches the global RNG.
    """
    if sampler is None and shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    workers = usable_workers(config.num_workers)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        # Fresh workers each epoch receive the dataset's current epoch.
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[dict[str, Any]],
    config: RunConfig,
    device: torch.device,
    *,
    epoch: int,
    normalisation: Normalisation,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """One pass over the loader's slides, one optimizer step per slide.

    ``should_stop()`` is polled before every step; when it returns True, RunCancelled is
    raised (the model holds the weights of the last completed step). Raises
    TrainingDivergedError on a non-finite loss. Returns ``train_loss`` (mean over steps),
    ``train_steps``, ``train_patches`` and ``train_patches_per_s``.
    """
    model.train()
    if config.batchnorm == "frozen":
        freeze_batchnorm(model)
    settings = AugmentSettings.from_config(config)
    channels_last = uses_channels_last(device, config.channels_last)
    steps = len(loader) if isinstance(loader, Sized) else -1
    total_loss = 0.0
    total_patches = 0
    done = 0
    start = last = time.perf_counter()
    iterator = iter(loader)
    step = 0
    # The loss of a step is read back (a host-device synchronisation) only once the next step
    # has been queued, so the GPU never idles while the host fetches and prepares a batch.
    # A non-finite loss is therefore reported one optimizer step late, with its own step number.
    unsettled: tuple[int, int, Tensor, int] | None = None

    def settle() -> None:
        nonlocal unsettled, total_loss, total_patches, done, last
        if unsettled is None:
            return
        done_step, done_slide, loss_tensor, batch_size = unsettled
        unsettled = None
        loss_value = float(loss_tensor)
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"non-finite training loss {loss_value} at epoch {epoch}, step {done_step}",
                details={"epoch": epoch, "step": done_step, "slide_index": done_slide},
            )
        now = time.perf_counter()
        total_loss += loss_value
        total_patches += batch_size
        done += 1
        if on_step is not None:
            on_step(
                StepInfo(
                    epoch=epoch,
                    step=done_step,
                    steps=steps,
                    loss=loss_value,
                    patches_per_s=batch_size / max(now - last, 1e-9),
                )
            )
        last = now

    while True:
        if should_stop is not None and should_stop():
            settle()
            raise RunCancelled(epoch, step)
        try:
            item = next(iterator)
        except StopIteration:
            break
        slide_index = int(item["slide_index"])
        label = int(item["label"])
        x = prepare_batch(
            item["patches"],
            device=device,
            normalisation=normalisation,
            settings=settings,
            generator=augmentation_generator(config.seed, epoch, slide_index),
            channels_last=channels_last,
        )
        with autocast(device, config.amp):
            logits = model(x)
        loss = slide_loss(
            logits,
            label,
            alpha=config.alpha,
            beta=config.beta,
            instance=config.instance,
            c0=config.c0,
            c1=config.c1,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        settle()
        unsettled = (step, slide_index, loss.detach(), int(x.shape[0]))
        step += 1
    settle()
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {
        "train_loss": total_loss / done if done else math.nan,
        "train_steps": float(done),
        "train_patches": float(total_patches),
        "train_patches_per_s": total_patches / elapsed,
    }


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present (AUC is undefined then)."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0 or np.unique(labels).size < 2:
        return math.nan
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def slide_score(scores: torch.Tensor, method: str, k: int) -> float:
    """A slide's score from its patch scores: their max, or the mean of the top k."""
    if scores.numel() == 0:
        return math.nan
    if method == "max":
        return float(scores.max())
    if method == "topk_mean":
        return float(torch.topk(scores, min(k, scores.numel())).values.mean())
    raise ValueError(f"slide_score must be 'max' or 'topk_mean', got {method!r}")


def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    config: RunConfig,
    device: torch.device,
    normalisation: Normalisation,
) -> dict[str, float]:
    """Validation metrics under ``torch.inference_mode()``, without augmentation.

    ``val_loss``: the mean over slides of the training loss (same proxy rule, c0/c1).
    ``val_slide_auc``: slide AUC, slide score = max or top-k mean of patch scores (a patch's
    score is its mean probability). ``val_pixel_auc``: AUC over every map cell of every
    sampled patch against items' ``truth`` maps (pooled to the map grid, a cell is tumor when
    at least half of it is), NaN when the loader provides no truth. AUCs are NaN when only one
    class is present. Restores the model's training mode afterwards.
    """
    was_training = model.training
    model.eval()
    channels_last = uses_channels_last(device, config.channels_last)
    losses: list[float] = []
    slide_labels: list[int] = []
    slide_scores: list[float] = []
    cell_scores: list[np.ndarray] = []
    cell_truth: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for item in loader:
                label = int(item["label"])
                x = prepare_batch(
                    item["patches"],
                    device=device,
                    normalisation=normalisation,
                    channels_last=channels_last,
                )
                with autocast(device, config.amp):
                    logits = model(x)
                logits = logits.float()
                loss = slide_loss(
                    logits,
                    label,
                    alpha=config.alpha,
                    beta=config.beta,
                    instance=config.instance,
                    c0=config.c0,
                    c1=config.c1,
                )
                losses.append(float(loss))
                slide_labels.append(label)
                slide_scores.append(
                    slide_score(patch_scores(logits), config.slide_score, config.slide_score_k)
                )
                if "truth" in item:
                    truth = item["truth"].to(device).float().unsqueeze(1)
                    pooled = F.adaptive_avg_pool2d(truth, logits.shape[-2:])
                    cell_truth.append((pooled >= TRUTH_CELL_THRESHOLD).flatten().cpu().numpy())
                    cell_scores.append(torch.sigmoid(logits).flatten().cpu().numpy())
    finally:
        model.train(was_training)
    pixel_auc = (
        safe_auc(np.concatenate(cell_truth), np.concatenate(cell_scores))
        if cell_truth
        else math.nan
    )
    return {
        "val_loss": float(np.mean(losses)) if losses else math.nan,
        "val_slide_auc": safe_auc(np.asarray(slide_labels), np.asarray(slide_scores)),
        "val_pixel_auc": pixel_auc,
        "val_slides": float(len(losses)),
    }


def measure_normalisation(dataset: SlideBagDataset, config: RunConfig) -> Normalisation:
    """Channel statistics of ``config.normalisation_patches`` training patches.

    Drawn from up to NORMALISATION_MAX_SLIDES slides chosen with the run's seed, from a random
    stream of their own (so they do not depend on, nor disturb, training sampling).
    """
    n_slides = min(len(dataset), NORMALISATION_MAX_SLIDES)
    if n_slides == 0:
        raise InvalidInputError("cannot measure normalisation statistics without slides")
    rng = np.random.default_rng([config.seed, STREAM_NORMALISATION])
    indices = sorted(int(i) for i in rng.choice(len(dataset), size=n_slides, replace=False))
    per_slide = min(
        NORMALISATION_MAX_PER_SLIDE, max(1, math.ceil(config.normalisation_patches / n_slides))
    )
    batches = (
        dataset.sample_patches(index, per_slide, stream=STREAM_NORMALISATION)[0]
        for index in indices
    )
    try:
        return compute_normalisation(batches)
    finally:
        # The main process does not keep slides open that only the loader workers will read.
        dataset.close()


def selection_metric_name(config: RunConfig, *, has_truth: bool) -> str:
    """The metric that picks the best epoch: ``auto`` means the pixel AUC when the validation
    slides have truth maps, else the slide-level AUC."""
    if config.selection_metric != "auto":
        return config.selection_metric
    return "val_pixel_auc" if has_truth else "val_slide_auc"


def _improves(value: float, best: float | None, mode: str, first: bool) -> bool:
    if first:
        return True
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    # A tie goes to the later epoch: it has trained longer for the same validation score.
    return value >= best if mode == "max" else value <= best


def fit(
    config: RunConfig,
    train_entries: Sequence[SlideEntry],
    val_entries: Sequence[SlideEntry],
    *,
    workdir: Path,
    device: str | torch.device = "auto",
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    sampler_factory: SamplerFactory | None = None,
    truth_fn: TruthFn | None = None,
    distributed: DistributedContext | None = None,
) -> FitResult:
    """Train ``config.epochs`` epochs, validating and checkpointing after each.

    ``workdir`` receives ``latest.pt`` every epoch and ``best.pt`` whenever the selection metric
    (``config.selection_metric``) improves; the first epoch always counts as an improvement, a
    NaN metric never does afterwards. With ``resume`` and an existing ``latest.pt`` the run
    continues from it exactly (its config must match ``config`` except for epochs,
    num_workers and compile). ``sampler_factory`` replaces the real PatchSampler (tests);
    ``truth_fn`` provides validation truth maps for ``val_pixel_auc``. ``distributed``: this
    process's DDP context (from ``device.init_distributed``); rank 0 validates and writes.
    Raises RunCancelled when ``should_stop()`` turns True (``latest.pt`` then holds the last
    completed epoch), TrainingDivergedError on a non-finite loss.
    """
    if not train_entries:
        raise InvalidInputError("a training run needs at least one training slide")
    ctx = distributed or SINGLE_PROCESS
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device, local_rank=ctx.local_rank if ctx.is_distributed else None)
    configure_backends(dev, deterministic=config.deterministic)
    seed_everything(config.seed)

    train_ds = SlideBagDataset.from_config(
        train_entries, config, stream=STREAM_TRAIN, sampler_factory=sampler_factory
    )
    val_ds = SlideBagDataset.from_config(
        val_entries, config, stream=STREAM_VAL, sampler_factory=sampler_factory, truth_fn=truth_fn
    )
    metric_name = selection_metric_name(
        config, has_truth=truth_fn is not None and bool(val_entries)
    )
    latest_path = workdir / LATEST_NAME
    best_path = workdir / BEST_NAME
    checkpoint = load_checkpoint(latest_path) if resume and latest_path.is_file() else None
    if checkpoint is not None:
        check_resumable(checkpoint.config, config)
        normalisation = checkpoint.normalisation
    else:
        normalisation = measure_normalisation(train_ds, config)

    model = build_model(config, load_pretrained=checkpoint is None)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state, strict=True)
    model.to(dev)
    # Adam is built on the moved parameters so its state lives on the device.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader_generator = torch.Generator()
    loader_generator.manual_seed(config.seed)
    history: list[dict[str, float]] = []
    best_metric: float | None = None
    best_epoch: int | None = None
    start_epoch = 0
    if checkpoint is not None:
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        if checkpoint.rng_state is not None:
            restore_rng_state(checkpoint.rng_state, loader_generator)
        history = [dict(entry) for entry in checkpoint.history]
        best_metric, best_epoch = checkpoint.best_metric, checkpoint.best_epoch
        start_epoch = checkpoint.epoch
        logger.info("resuming %s after epoch %d", workdir, start_epoch)

    net = prepare_model(
        model, dev, channels_last=config.channels_last, compile_model=config.compile
    )
    net = wrap_ddp(net, ctx, dev)
    train_sampler = distributed_sampler(train_ds, ctx, shuffle=True, seed=config.seed)
    train_loader = make_loader(
        train_ds, config, dev, generator=loader_generator, shuffle=True, sampler=train_sampler
    )
    val_generator = torch.Generator()
    val_generator.manual_seed(config.seed)
    val_loader = make_loader(val_ds, config, dev, generator=val_generator, shuffle=False)

    for epoch in range(start_epoch, config.epochs):
        train_ds.set_epoch(epoch)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        train_metrics = train_one_epoch(
            net,
            optimizer,
            train_loader,
            config,
            dev,
            epoch=epoch,
            normalisation=normalisation,
            on_step=on_step if ctx.is_main else None,
            should_stop=should_stop,
        )
        train_metrics = all_reduce_mean(train_metrics, ctx)
        val_metrics: dict[str, float] = {}
        if ctx.is_main and len(val_ds):
            # The plain module: a DDP forward on one rank alone would wait for the others.
            val_metrics = evaluate(unwrap_model(net), val_loader, config, dev, normalisation)
        val_metrics = broadcast_object(val_metrics, ctx)
        metrics = {"epoch": float(epoch), **train_metrics, **val_metrics}
        history.append(metrics)
        value = metrics.get(metric_name, math.nan)
        improved = _improves(value, best_metric, config.selection_mode, best_epoch is None)
        if improved:
            best_metric, best_epoch = value, epoch
        if ctx.is_main:
            common: dict[str, Any] = {
                "model": net,
                "epoch": epoch + 1,
                "config": config,
                "normalisation": normalisation,
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "history": history,
            }
            if improved:
                save_checkpoint(best_path, include_rng=False, **common)
            save_checkpoint(
                latest_path, optimizer=optimizer, loader_generator=loader_generator, **common
            )
        barrier()
        if on_epoch is not None and ctx.is_main:
            on_epoch(
                EpochInfo(
                    epoch=epoch,
                    epochs=config.epochs,
                    metrics=dict(metrics),
                    improved=improved,
                    best_epoch=best_epoch,
                    best_metric=best_metric,
                    checkpoint=latest_path,
                )
            )
    return FitResult(
        metric_name=metric_name,
        best_epoch=best_epoch,
        best_metric=best_metric,
        epochs_completed=max(start_epoch, config.epochs),
        history=history,
        normalisation=normalisation,
        latest_checkpoint=latest_path,
        best_checkpoint=best_path if best_path.is_file() else None,
        model=unwrap_model(net),
    )
