"""Baseline: throughput of lightly's SimCLR augmentation alone, on one CPU thread.

What it measures
    How many augmented views per second lightly's ``SimCLRTransform`` produces from PIL images that
    are already decoded and in memory: no JPEG decoding, no DataLoader, no worker processes, no model.
    ``torch.set_num_threads(1)``. The transform is the one of lightly's CIFAR-10 benchmark
    (``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``, other arguments at
    lightly's defaults; see ``benchmarks/lightly_simclr.py``). Each call returns two views, so
    ``views_per_second = 2 * images_per_second``. This bounds what one DataLoader worker can feed the
    training loop of ``lightly_simclr.py`` (decoding the JPEG comes on top).

How
    ``--num-images`` (default 2,000) train JPEGs are drawn at random (seed 0) from the class folders
    under ``<data>/train``, opened with PIL, converted to RGB and fully decoded. The transform is then
    applied to them in a loop for ``--warmup`` seconds (not counted) and then for ``--duration``
    seconds (counted), cycling over the images.

lightly is not a dependency of selfsup: run this with the side virtualenv that has lightly, e.g.
from the repository root::

    /work/lightly-env/bin/python benchmarks/lightly_transform_speed.py \\
        --data data/cifar10 --out benchmarks/results/lightly_transform_speed.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import lightly
import PIL
import torch
import torchvision
from lightly.transforms import SimCLRTransform
from PIL import Image
from torchvision.datasets import ImageFolder

# Same arguments as benchmarks/lightly_simclr.py (lightly's CIFAR-10 benchmark, simclr_transform).
TRANSFORM_KWARGS: dict[str, float | int] = {"input_size": 32, "cj_strength": 0.5, "gaussian_blur": 0.0}
SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset root holding train/<class>/*.jpg")
    p.add_argument("--num-images", type=int, default=2000, help="images loaded into memory (default: 2000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds timed (default: 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed warm-up (default: 1)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the result (default: print only)")
    return p.parse_args(argv)


def load_images(train_dir: Path, n: int, seed: int) -> list[Image.Image]:
    """Decode ``n`` randomly chosen images of an ImageFolder tree into memory as RGB PIL images."""
    samples = ImageFolder(str(train_dir)).samples
    chosen = random.Random(seed).sample(samples, min(n, len(samples)))
    images = []
    for path, _ in chosen:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))  # convert() decodes and returns an in-memory copy
    return images


def run_for(transform: SimCLRTransform, images: list[Image.Image], seconds: float) -> tuple[int, float]:
    """Apply ``transform`` cycling over ``images`` for at least ``seconds``; return (calls, elapsed)."""
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        views = transform(images[calls % len(images)])
        if len(views) != 2:
            raise RuntimeError(f"expected 2 views, got {len(views)}")
        calls += 1
        elapsed = time.perf_counter() - start
    return calls, elapsed


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    random.seed(SEED)

    train_dir = args.data / "train"
    if not train_dir.is_dir():
        raise SystemExit(f"no train/ folder under {args.data}")
    images = load_images(train_dir, args.num_images, SEED)
    if not images:
        raise SystemExit(f"no images under {train_dir}")
    transform = SimCLRTransform(**TRANSFORM_KWARGS)

    run_for(transform, images, args.warmup)
    calls, elapsed = run_for(transform, images, args.duration)
    images_per_second = calls / elapsed
    result: dict[str, object] = {
        "views_per_second": 2 * images_per_second,
        "images_per_second": images_per_second,
        "images_transformed": calls,
        "seconds": elapsed,
        "images_in_memory": len(images),
        "threads": torch.get_num_threads(),
        "transform": {"name": "lightly.transforms.SimCLRTransform", **TRANSFORM_KWARGS},
        "lightly_version": lightly.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "pillow_version": PIL.__version__,
    }
    print(
        f"lightly {lightly.__version__} SimCLRTransform, 1 thread: {result['views_per_second']:.1f} views/s "
        f"({images_per_second:.1f} images/s, {calls} images in {elapsed:.1f} s)"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
