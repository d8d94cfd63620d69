"""Baseline: lightly's SimCLR recipe for CIFAR-10, with selfsup's backbones, on CPU or one GPU.

What it measures
    End-to-end CPU training throughput of a SimCLR step built from the ``lightly`` package
    (transform, projection head, loss), so that selfsup's own SimCLR can be compared with it
    side by side. ``train_seconds`` is the wall time of the training loop, data loading included
    (the DataLoader workers decode JPEGs and apply lightly's per-image PIL transforms); building the
    model and scanning the dataset folder are not timed. One sample is one image with both of its
    views, so ``samples_per_second = steps * batch_size / train_seconds``.

Settings, mirroring lightly's CIFAR-10 benchmark
(``docs/source/getting_started/benchmarks/cifar10_benchmark.py`` in the lightly repository,
``SimCLRModel`` and ``simclr_transform`` there, unchanged from v1.5.26 to the 1.6 line):

* transform: ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``; every other
  argument is lightly's default: ``min_scale=0.08``, ``cj_prob=0.8``, jitter 0.8/0.8/0.8/0.2 (times
  ``cj_strength``), ``random_gray_scale=0.2``, ``hf_prob=0.5``, no vertical flip or rotation,
  ImageNet normalisation;
* projection head: lightly uses ``SimCLRProjectionHead(512, 512, 128)`` on its 512-d ResNet-18; here
  the input is our 256-d backbone, so ``SimCLRProjectionHead(256, 512, 128)`` (2 layers, batch norm);
* loss: ``NTXentLoss()``, whose default temperature is 0.5 (written out explicitly below);
* optimiser: ``SGD(lr=0.06 * batch_size / 128, momentum=0.9, weight_decay=5e-4)``; lightly anneals
  the lr with ``CosineAnnealingLR`` over its epochs, here it is annealed over the ``--steps``
  optimisation steps (stepped once per step);
* data: ``ImageFolder`` over ``<data>/train`` (class folders of JPEGs), ``shuffle=True``,
  ``drop_last=True``; lightly uses ``LightlyDataset``, which loads images the same way (PIL, RGB).

On a GPU (``--device cuda --backbone resnet18 --workers 16``) the model gets selfsup's fast path too
(bf16 autocast, channels_last, cuDNN autotuning, pinned memory and non-blocking copies), so the side by
side isolates the data pipeline: lightly's per-image PIL transforms in DataLoader workers against
selfsup's batched on-GPU augmentation. ``--warmup-steps`` leaves worker start-up out of the timing.

Differences from lightly's run, all deliberate: on CPU the backbone (selfsup's ``SmallConvNet`` instead
of ResNet-18) in plain fp32; a fixed number of steps instead of 200 epochs, no kNN callback and
no PyTorch Lightning (a plain loop, so only the training step is timed). Seed 0.

Outputs ``<out>/backbone.pt`` (the backbone's ``state_dict``) and ``<out>/timing.json``.

lightly is not a dependency of selfsup: run this from a separate virtualenv that has lightly and an
editable install of selfsup (``pip install --no-deps -e .``), e.g. from the repository root::

    /work/lightly-env/bin/python benchmarks/lightly_simclr.py \\
        --data data/cifar10 --steps 1000 --batch-size 256 --workers 1 \\
        --out benchmarks/results/lightly_simclr
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import lightly
import numpy as np
import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

try:
    from selfsup.backbones import build_backbone
except ImportError:  # selfsup not installed in this environment: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from selfsup.backbones import build_backbone

# lightly's CIFAR-10 benchmark: simclr_transform, SimCLRModel.
TRANSFORM_KWARGS: dict[str, float | int] = {"input_size": 32, "cj_strength": 0.5, "gaussian_blur": 0.0}
HEAD_DIMS: tuple[int, int, int] = (256, 512, 128)  # lightly: (512, 512, 128) for a 512-d ResNet-18
TEMPERATURE = 0.5
BASE_LR = 0.06  # per 128 images, scaled linearly with the batch size
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
SEED = 0
LOG_EVERY = 50


class SimCLR(nn.Module):
    """Backbone followed by lightly's SimCLR projection head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset root holding train/<class>/*.jpg")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (default: 1000)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default: 256)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (default: 1)")
    p.add_argument("--out", type=Path, required=True, help="directory for backbone.pt and timing.json")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--backbone", default="small", help="selfsup backbone name: small or resnet18 (CIFAR stem)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="steps left out of the timing (worker start-up, cuDNN autotuning); default 0")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.steps < 1 or args.batch_size < 2:
        raise SystemExit("--steps must be >= 1 and --batch-size >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(SEED)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.warmup_steps >= args.steps:
        raise SystemExit("--warmup-steps must be smaller than --steps")

    train_dir = args.data / "train"
    if not train_dir.is_dir():
        raise SystemExit(f"no train/ folder under {args.data}")
    dataset = ImageFolder(str(train_dir), transform=SimCLRTransform(**TRANSFORM_KWARGS))
    if len(dataset) < args.batch_size:
        raise SystemExit(f"{len(dataset)} images in {train_dir}, fewer than one batch of {args.batch_size}")
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=cuda,
        generator=torch.Generator().manual_seed(SEED),
    )

    backbone = build_backbone(args.backbone)
    head_dims = (512, *HEAD_DIMS[1:]) if args.backbone == "resnet18" else HEAD_DIMS
    model = SimCLR(backbone, SimCLRProjectionHead(*head_dims)).to(device)
    if cuda:  # the same GPU fast path selfsup uses, so the comparison isolates the data pipeline
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    criterion = NTXentLoss(temperature=TEMPERATURE)
    lr = BASE_LR * args.batch_size / 128
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)

    print(
        f"lightly {lightly.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"workers {args.workers}, {len(dataset)} images, batch {args.batch_size}, {args.steps} steps, "
        f"lr {lr:g}",
        flush=True,
    )
    model.train()
    step = 0
    loss_value = float("nan")
    start = time.perf_counter()
    timed_from = 0
    while step < args.steps:
        for (x0, x1), _ in loader:
            if step == args.warmup_steps and step > 0:
                if cuda:
                    torch.cuda.synchronize()
                start, timed_from = time.perf_counter(), step
            x0 = x0.to(device, non_blocking=True)
            x1 = x1.to(device, non_blocking=True)
            if cuda:
                x0 = x0.contiguous(memory_format=torch.channels_last)
                x1 = x1.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = criterion(model(x0), model(x1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % LOG_EVERY == 0 or step == args.steps:
                loss_value = loss.item()
                elapsed = time.perf_counter() - start
                print(
                    f"step {step}/{args.steps}  loss {loss_value:.4f}  "
                    f"lr {scheduler.get_last_lr()[0]:.4f}  "
                    f"{(step - timed_from) * args.batch_size / elapsed:.1f} samples/s",
                    flush=True,
                )
            if step >= args.steps:
                break
    if cuda:
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start
    timed_steps = args.steps - timed_from
    del loader  # stop persistent workers

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), args.out / "backbone.pt")
    timing: dict[str, object] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_seconds": train_seconds,
        "timed_steps": timed_steps,
        "samples_per_second": timed_steps * args.batch_size / train_seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "lightly_version": lightly.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "final_loss": loss_value,
        "settings": {
            "transform": {"name": "lightly.transforms.SimCLRTransform", **TRANSFORM_KWARGS},
            "projection_head": {"name": "lightly.models.modules.SimCLRProjectionHead", "dims": head_dims},
            "loss": {"name": "lightly.loss.NTXentLoss", "temperature": TEMPERATURE},
            "optimizer": {"name": "SGD", "lr": lr, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
            "schedule": f"cosine over {args.steps} steps",
            "backbone": f"selfsup {args.backbone}",
            "seed": SEED,
            "device": str(device),
            "dtype": "bfloat16 autocast, channels_last" if cuda else "float32",
        },
    }
    (args.out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(f"{timing['samples_per_second']:.1f} samples/s over {train_seconds:.1f} s -> {args.out}")
    return timing


if __name__ == "__main__":
    main()
