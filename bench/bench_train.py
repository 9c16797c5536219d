"""Training-step throughput of the MIL engine, in patches per second.

Three figures:

- ``step``: one training step alone on random uint8 patches already on the device: uint8 ->
  float, augmentation (dihedral + colour jitter) and standardisation on the device, forward,
  proxy labels, masked BCE, backward, Adam step;
- ``inference``: forward only (eval mode, ``torch.inference_mode``), for reference;
- ``end-to-end``: ``train_one_epoch`` over a ``SlideBagDataset`` of a real slide read through
  ``slides.wsi.sampler.PatchSampler`` and the DataLoader (``--num-workers`` processes), i.e. what
  a training run achieves per step, slide reading included.

CPU (small settings, the defaults)::

    .venv/bin/python bench/bench_train.py

GPU (the paper's settings)::

    .venv/bin/python bench/bench_train.py --device cuda --arch resnet50 --patches 150 \\
        --amp --channels-last --compile --num-workers 8
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from slides.wsi.reader import open_slide  # noqa: E402
from slides.wsi.tissue import slide_tissue_mask  # noqa: E402
from training.mil.config import RunConfig  # noqa: E402
from training.mil.dataset import SlideBagDataset, SlideEntry  # noqa: E402
from training.mil.device import (  # noqa: E402
    autocast,
    configure_backends,
    prepare_model,
    resolve_device,
    uses_channels_last,
)
from training.mil.loop import StepInfo, augmentation_generator, make_loader, train_one_epoch  # noqa: E402
from training.mil.model import build_model, freeze_batchnorm  # noqa: E402
from training.mil.presets import IMAGENET_NORMALISATION, AugmentSettings, prepare_batch  # noqa: E402
from training.mil.proxy_labels import slide_loss  # noqa: E402

REAL_SLIDE = PROJECT_ROOT.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--patches", type=int, default=16, help="B, patches per slide (step)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--output-stride", type=int, default=32, choices=[16, 32])
    parser.add_argument("--instance", default="patch", choices=["patch", "pixel"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per figure")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="CUDA only")
    parser.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    parser.add_argument(
        "--num-workers",
        type=int,
        nargs="+",
        default=[2],
        help="DataLoader workers for the end-to-end figure; several values: one run each",
    )
    parser.add_argument(
        "--e2e-steps",
        type=int,
        default=0,
        help="timed end-to-end steps (0: max(--steps, 4 x prefetched bags), so that the "
        "loader's prefetch cannot flatter the figure)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--slide", type=Path, default=REAL_SLIDE)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()), help="for the stored mask"
    )
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument(
        "--recompute-tissue",
        action="store_true",
        help="end-to-end: compute each bag's tissue mask from the slide instead of loading the "
        "mask stored at import (what a run did before masks were passed to the loader)",
    )
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def bench_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    settings = AugmentSettings.from_config(config)
    channels_last = uses_channels_last(device, config.channels_last)
    size = config.patch_size
    patches = torch.randint(
        0, 256, (config.patches_per_slide, size, size, 3), dtype=torch.uint8
    ).to(device)

    def train_step(step: int) -> None:
        model.train()
        freeze_batchnorm(model)
        x = prepare_batch(
            patches,
            device=device,
            normalisation=IMAGENET_NORMALISATION,
            settings=settings,
            generator=augmentation_generator(0, 0, step),
            channels_last=channels_last,
        )
        with autocast(device, config.amp):
            logits = model(x)
        loss = slide_loss(
            logits,
            step % 2,
            alpha=config.alpha,
            beta=config.beta,
            instance=config.instance,
            c0=config.c0,
            c1=config.c1,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step(step: int) -> None:
        model.eval()
        with torch.inference_mode(), autocast(device, config.amp):
            x = prepare_batch(
                patches,
                device=device,
                normalisation=IMAGENET_NORMALISATION,
                channels_last=channels_last,
            )
            model(x)

    for name, fn in (
        ("step (train, random input)", train_step),
        ("inference (forward only)", infer_step),
    ):
        for i in range(args.warmup):
            fn(i)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for i in range(args.steps):
            fn(args.warmup + i)
        sync(device)
        elapsed = time.perf_counter() - start
        rate = args.steps * config.patches_per_slide / elapsed
        extra = ""
        if device.type == "cuda":
            extra = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        print(f"{name}: {rate:.1f} patches/s ({elapsed / args.steps * 1000:.0f} ms/step){extra}")


def e2e_steps(args: argparse.Namespace, workers: int) -> int:
    if args.e2e_steps:
        return int(args.e2e_steps)
    # Each worker holds up to two finished bags (prefetch_factor=2): time many more steps
    # than that, so the figure is the loader's steady rate, not a burst from its buffer.
    return max(args.steps, 4 * 2 * max(workers, 1))


def stored_tissue_mask(slide: Path, target: Path) -> float:
    """Write the slide's tissue mask as the import stores it; its level-0 pixels per pixel."""
    with open_slide(slide) as reader:
        tissue = slide_tissue_mask(reader)
    Image.fromarray(tissue.mask.astype(np.uint8) * 255).save(target)
    return tissue.l0_per_px


def bench_end_to_end(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    if not args.slide.is_file():
        print(f"end-to-end: skipped, slide {args.slide} not found")
        return
    steps = e2e_steps(args, config.num_workers)
    total = args.warmup + steps
    # The same real slide repeated, labels alternating: each step reads B fresh patches of it.
    # Each entry is a distinct dataset item, so every bag opens the slide afresh, as the bags
    # of a cohort's distinct slides do; its tissue mask is loaded from the image the import
    # stored (as a run's slides are), unless --recompute-tissue.
    mask = {}
    if not args.recompute_tissue:
        mask = {
            "tissue_mask_path": str(args.workdir / "tissue_mask.png"),
            "tissue_l0_per_px": stored_tissue_mask(args.slide, args.workdir / "tissue_mask.png"),
        }
    entries = [SlideEntry(path=str(args.slide), label=i % 2, **mask) for i in range(total)]
    dataset = SlideBagDataset.from_config(entries, config)
    loader = make_loader(
        dataset, config, device, generator=torch.Generator().manual_seed(0), shuffle=True
    )
    times: list[float] = []

    def on_step(info: StepInfo) -> None:
        times.append(time.perf_counter())

    start = time.perf_counter()
    train_one_epoch(
        model,
        optimizer,
        loader,
        config,
        device,
        epoch=0,
        normalisation=IMAGENET_NORMALISATION,
        on_step=on_step,
    )
    sync(device)
    # Timed from the end of the last warm-up step: includes waiting for the loader (each
    # step ends with the loss on the host, so the step times are synchronised).
    first = times[args.warmup - 1] if args.warmup else start
    elapsed = times[-1] - first
    rate = steps * config.patches_per_slide / elapsed
    half = steps // 2
    late = (times[-1] - times[-1 - half]) if half else elapsed
    late_rate = half * config.patches_per_slide / late if half else rate
    print(
        f"end-to-end ({args.slide.name}, {config.num_workers} loader workers, {steps} steps, "
        f"{'tissue recomputed per bag' if args.recompute_tissue else 'stored tissue mask'}): "
        f"{rate:.1f} patches/s ({elapsed / steps * 1000:.0f} ms/step); "
        f"last {half} steps {late_rate:.1f} patches/s"
    )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = RunConfig(
        alpha=0.2,
        beta=0.0,
        arch=args.arch,
        output_stride=args.output_stride,
        instance=args.instance,
        patches_per_slide=args.patches,
        patch_size=args.patch_size,
        pretrained="none",  # timing does not depend on the weights' values
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        num_workers=args.num_workers[0],
    )
    configure_backends(device)
    print(f"machine: {machine(device)}")
    print(
        f"settings: {config.arch}, B={config.patches_per_slide}, {config.patch_size} px, "
        f"output stride {config.output_stride}, {config.instance} instances, amp={config.amp}, "
        f"channels_last={config.channels_last}, compile={config.compile}, "
        f"{args.warmup} warm-up + {args.steps} timed steps"
    )
    # One model and optimizer for every figure: with --compile the graphs are built once.
    torch.manual_seed(0)
    model = prepare_model(
        build_model(config),
        device,
        channels_last=config.channels_last,
        compile_model=config.compile,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = time.perf_counter()
    bench_step(model, optimizer, config, device, args)
    print(
        f"(step and inference figures, warm-ups and compilation included: "
        f"{time.perf_counter() - start:.0f} s)"
    )
    if not args.skip_e2e:
        for workers in args.num_workers:
            bench_end_to_end(model, optimizer, replace(config, num_workers=workers), device, args)


if __name__ == "__main__":
    main()
