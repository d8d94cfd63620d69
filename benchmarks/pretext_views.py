"""Pretext views (``pretext-views``): the batched views of jigsaw and context prediction against a per-image
reference, on one CPU thread.

What it measures
    Images per second turned into network inputs, from images already decoded in memory: no decoding, no
    DataLoader, no model. ``torch.set_num_threads(1)``. Ours: a uint8 batch ``(B, 3, S, S)`` through the
    method's own input path: for jigsaw ``Jigsaw.puzzle`` (a random resized crop and flip composed with every
    tile's cell and offset into one sampling grid: one ``grid_sample`` of the 9 tiles, already shuffled by a
    permutation of 100, straight from the images; grayscale with p = 0.3 on the tiles; per-tile normalisation); for
    context prediction ``ContextPrediction.patch_pairs`` (the same, for the pair of patches; colour dropping with
    Gaussian noise; per-patch standardising).
    The reference: what lightly's ``Jigsaw`` transform and VISSL's patch transforms do, image by image with PIL
    and torchvision on a list of PIL images: torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip`` (and
    ``RandomGrayscale``), then the tiles (or the pair) cut from the numpy array with random offsets, each made a
    tensor with ``to_tensor`` and normalised on its own (colour dropping on each patch of the pair), stacked and
    shuffled by a permutation. Both sides make the same tensors (shapes, statistics); the time to collate the
    reference's per-image outputs into a batch is not counted.

How
    ``B`` (``--batch-size``, 256) seeded random images at 32 px (CIFAR) and at 96 px; each side runs in 3
    alternating rounds of at least ``--seconds`` / 3 seconds (default 3; machine drift hits both alike), and the
    median round is reported. The permutation set is 100 random permutations (its content does not change the
    cost; the maximal-Hamming set takes tens of seconds to build).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from benchmarks.common import environment, median, save
from selfsup.backbones import build_backbone
from selfsup.data.ops.patches import OFFSETS
from selfsup.evaluate.report import format_table
from selfsup.methods.context import ContextPrediction
from selfsup.methods.jigsaw import Jigsaw

SIZES = (32, 96)
PERMUTATIONS = 100


def _ours_jigsaw(size: int, perms: torch.Tensor) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Jigsaw's puzzles as its training step makes them (up to the trunk): ``(B, 9, 3, s, s)``, from ``perms``."""
    method = Jigsaw(build_backbone("small"), 256, size, permutations=2)  # 2: quick to build, replaced by perms
    method.permutations = perms
    return lambda images, g: method.puzzle(images, g)[0]


def _reference_jigsaw(size: int, perms: list[list[int]]) -> Callable[[Image.Image], torch.Tensor]:
    """One image at a time: PIL augmentation, then lightly's ``Jigsaw`` cut (numpy slices at random offsets in
    each cell, ``to_tensor`` per tile), each tile normalised per channel, a random permutation of the set."""
    pre = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.RandomGrayscale(0.3)])
    cell = size // 3
    side, corner = round(cell * 64 / 85), (size - 3 * cell) // 2

    def views(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(pre(img))
        tiles = []
        for i in range(9):
            top = corner + i // 3 * cell + random.randint(0, cell - side)
            left = corner + i % 3 * cell + random.randint(0, cell - side)
            tile = TF.to_tensor(Image.fromarray(arr[top:top + side, left:left + side]))
            mean, std = tile.mean((1, 2), keepdim=True), tile.std((1, 2), unbiased=False, keepdim=True)
            tiles.append((tile - mean) / (std + 1e-5))
        return torch.stack([tiles[i] for i in random.choice(perms)])

    return views


def _ours_context(size: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Context prediction's pairs as its training step makes them: ``(B, 2, 3, p, p)`` and the labels."""
    method = ContextPrediction(build_backbone("small"), 256, size)
    return lambda images, g: method.patch_pairs(images, g)[0]


def _reference_context(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """One image at a time: PIL augmentation, a random neighbour position, jitter and placement, the two patches
    cut from the numpy array, ``to_tensor``, colour dropping (one kept channel, Gaussian noise of 1/100 its
    standard deviation in the others) and standardising, patch by patch."""
    method = ContextPrediction(build_backbone("small"), 256, size)
    p, gap, jit = method.patch, method.gap, method.jitter
    pre = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip()])

    def patch(arr: np.ndarray, top: int, left: int) -> torch.Tensor:
        t = TF.to_tensor(Image.fromarray(arr[top:top + p, left:left + p]))
        keep = random.randrange(3)
        out = torch.randn(3, p, p) * (0.01 * t[keep].std(unbiased=False))
        out[keep] = t[keep]
        out = out - out.mean((1, 2), keepdim=True)
        return out / (out.pow(2).mean() + 1e-10).sqrt()

    def views(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(pre(img))
        steps = OFFSETS[random.randrange(8)]
        corners = []
        for step in steps:
            offset = step * (p + gap) + random.randint(-jit, jit) - random.randint(-jit, jit)
            start = random.randint(0, size - p - abs(offset))
            corners.append((start + max(0, -offset), start + max(0, offset)))
        return torch.stack([patch(arr, corners[0][k], corners[1][k]) for k in range(2)])

    return views


def _rate(fn: Callable[[], object], images: int, seconds: float) -> float:
    """Images/s of ``fn`` (which turns ``images`` images into views), run for at least ``seconds``."""
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * images / (time.perf_counter() - start)


def _compare(ours: Callable[[], object], reference: Callable[[], object], batch: int, seconds: float) -> dict:
    ours(), reference()  # warm-up
    rates: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(3):
        rates["ours"].append(_rate(ours, batch, seconds / 3))
        rates["reference"].append(_rate(reference, batch, seconds / 3))
    o, r = median(rates["ours"]), median(rates["reference"])
    return dict(ours_images_per_second=round(o), reference_images_per_second=round(r), ratio=round(o / r, 1))


def _cases(size: int, batch: int, perms: torch.Tensor, g: torch.Generator) -> dict[str, tuple[Callable, Callable]]:
    """Per method: (ours on a uint8 batch, the reference on the same images as PIL), for ``batch`` random images."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    jigsaw, ref_jigsaw = _ours_jigsaw(size, perms), _reference_jigsaw(size, perms.tolist())
    context, ref_context = _ours_context(size), _reference_context(size)
    return {"jigsaw": (lambda: jigsaw(images, g), lambda: [ref_jigsaw(im) for im in pil]),
            "context": (lambda: context(images, g), lambda: [ref_context(im) for im in pil])}


def markdown(result: dict) -> str:
    """The result as a Markdown section (title, setting, table)."""
    rows = [[name, r["image_size"], r["views"], f"{r['ours_images_per_second']:,}",
             f"{r['reference_images_per_second']:,}", f"**{r['ratio']}x**"] for name, r in result["runs"].items()]
    table = format_table(["method", "image px", "views per image", "ours images/s", "per-image reference images/s",
                          "ratio"], [[str(c) for c in row] for row in rows], markdown=True)
    return (f"## Pretext views on one CPU thread: batched vs per-image\n\n{result['cpu']}, torch {result['torch']}, "
            f"commit {result['commit']}, {result['date']}; `python benchmarks/run.py pretext-views`. Batch "
            f"{result['batch_size']}, median of 3 alternating rounds; {result['reference']}.\n\n{table}\n")


def pretext_views(args: argparse.Namespace) -> None:
    """Jigsaw and context-prediction views, batched vs per image, at 32 and 96 px: ``results/pretext_views.json``."""
    batch, seconds = getattr(args, "batch_size", 256), getattr(args, "seconds", 3.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        random.seed(0)
        g = torch.Generator().manual_seed(0)
        perms = torch.stack([torch.randperm(9, generator=g) for _ in range(PERMUTATIONS)])
        runs = {}
        for size in SIZES:
            for name, (ours, reference) in _cases(size, batch, perms, g).items():
                shape = tuple(ours().shape[1:])
                assert tuple(reference()[0].shape) == shape, (name, size)
                runs[f"{name}-{size}px"] = dict(method=name, image_size=size,
                                                views=f"{shape[0]} x {shape[2]} px", **_compare(
                                                    ours, reference, batch, seconds))
                print(f"{name} {size} px: {runs[f'{name}-{size}px']}", flush=True)
    finally:
        torch.set_num_threads(threads)
    result = dict(name="pretext-views", **environment(), batch_size=batch, threads=1, seconds=seconds, runs=runs,
                  reference="per image with PIL + torchvision as lightly's Jigsaw transform and VISSL's patch "
                            "transforms do, from decoded PIL images, outputs not collated")
    save(result, "pretext_views")
    print(markdown(result))
