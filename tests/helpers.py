"""Small shared test utilities: tiny image folders made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, size: int = 12, seed: int = 0, color: int | None = None) -> list[Path]:
    """``n`` random RGB PNGs (optionally tinted by ``color`` so classes differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        if color is not None:
            arr[..., color % 3] = 255
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def class_folder(root: Path, classes: int = 2, per_class: int = 8, size: int = 12) -> Path:
    for c in range(classes):
        write_images(root / f"class{c}", per_class, size, seed=c, color=c)
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    import os

    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args) -> None:
    """Run ``fn(rank, *args)`` in ``world`` gloo processes on this machine (CPU)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_entry, args=(fn, world, free_port(), args), nprocs=world, join=True)


def colour_shapes(n: int = 600, size: int = 16, seed: int = 0):
    """A labeled colour data set: 4 classes of shapes (disk, square, cross, ring) of random size and place, each
    class in its own hue (with some spread) on a noisy grey background. Colour follows from shape, so methods
    that predict colour from lightness (colourisation) learn the shapes. Split 2:1 into train and test."""
    import torch

    from selfsup.data.sources import Dataset, ImageSet

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = (torch.rand(2, n, 1, 1, generator=g) * 0.4 + 0.3) * size
    r = (torch.rand(n, 1, 1, generator=g) * 0.15 + 0.2) * size
    dy, dx = (yy - cy).abs(), (xx - cx).abs()
    dist = (dy**2 + dx**2).sqrt()
    shapes = torch.stack([dist < r, (dy < r) & (dx < r), ((dy < r / 3) & (dx < r)) | ((dx < r / 3) & (dy < r)),
                          (dist < r) & (dist > r / 2)], 1)
    mask = shapes[torch.arange(n), labels].float().unsqueeze(1)  # (n, 1, H, W)
    hues = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.8, 0.1]])
    colour = (hues[labels] + 0.1 * torch.randn(n, 3, generator=g)).clamp(0, 1).view(n, 3, 1, 1)
    background = 0.4 + 0.1 * torch.randn(n, 1, size, size, generator=g)
    images = (mask * colour + (1 - mask) * background).clamp(0, 1).mul(255).round().to(torch.uint8)
    cut = 2 * n // 3
    train = ImageSet(images[:cut], labels[:cut], ["disk", "square", "cross", "ring"])
    test = ImageSet(images[cut:], labels[cut:], ["disk", "square", "cross", "ring"])
    return Dataset("colour-shapes", pretrain=train, train=train, test=test, augment={"crop_scale": (0.6, 1.0)})


def _dataset(name: str):
    from selfsup.data import load_data

    if name == "captioned-digits":  # tests/captioned.py: digits with a caption each
        from tests.captioned import captioned_digits

        return captioned_digits()
    return colour_shapes() if name == "colour-shapes" else load_data(name)


def _train_rank(rank: int, cfg, out: Path, data: str) -> None:
    import selfsup

    selfsup.train(cfg, out, evaluate=False, show_progress=False, data=_dataset(data))


def assert_two_ranks_train_like_one(tmp_path: Path, cfg, data: str = "digits", atol: float = 2e-5) -> dict:
    """Train ``cfg`` in one process and in 2 gloo processes (each with half the global batch); every parameter
    and buffer of the two checkpoints must agree. Returns the single process's final state."""
    import torch

    import selfsup
    from selfsup.engine.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    selfsup.train(cfg, tmp_path / "one", evaluate=False, show_progress=False, data=_dataset(data))
    run_ranks(_train_rank, 2, cfg, tmp_path / "two", data)
    one, two = (load_checkpoint(tmp_path / d)["state"] for d in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        if one[k].is_floating_point():
            torch.testing.assert_close(one[k], two[k], atol=atol, rtol=1e-4, msg=k)
        else:
            assert torch.equal(one[k], two[k]), k
    return one


def assert_same_state(a: dict, b: dict) -> None:
    """Two state dicts equal bit for bit (exact resume)."""
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def corner_shapes(n: int = 900, size: int = 24, seed: int = 0):
    """A labeled grey data set where the class is an arrangement, not a texture: an L-shaped corner (one horizontal
    and one vertical stroke, of random place and arm length) in its 4 orientations. Every class has the same
    strokes, so random convolutional features tell them apart less well than ones that learnt where parts sit
    (jigsaw). Split 2:1 into train and test."""
    import torch

    from selfsup.data.sources import Dataset, ImageSet

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centre = (torch.rand(n, 2, 1, 1, generator=g) * 0.3 + 0.35) * size
    arm = (torch.rand(n, 1, 1, generator=g) * 0.15 + 0.25) * size
    width = size * 0.08
    sign_y = torch.tensor([1.0, 1.0, -1.0, -1.0])[labels].view(n, 1, 1)
    sign_x = torch.tensor([1.0, -1.0, 1.0, -1.0])[labels].view(n, 1, 1)
    dy, dx = (yy - centre[:, 0]) * sign_y, (xx - centre[:, 1]) * sign_x
    strokes = ((dy.abs() < width) & (dx > -width) & (dx < arm)) | ((dx.abs() < width) & (dy > -width) & (dy < arm))
    grey = 0.2 + 0.05 * torch.randn(n, 1, size, size, generator=g) + 0.6 * strokes.float().unsqueeze(1)
    images = grey.clamp(0, 1).expand(-1, 3, -1, -1).mul(255).round().to(torch.uint8).contiguous()
    cut = 2 * n // 3
    train, test = ImageSet(images[:cut], labels[:cut]), ImageSet(images[cut:], labels[cut:])
    return Dataset("corners", pretrain=train, train=train, test=test, augment={"flip_p": 0.0, "crop_scale": (0.8, 1.0)})


def breaks_after(n: int, where: str):
    """A tiny backbone that, after ``n`` training passes, returns NaN (``where="output"``: the loss turns NaN) or
    sets a running statistic to infinity while its output stays finite (``where="statistics"``)."""
    import torch
    from torch import nn

    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3)
            self.register_buffer("running", torch.zeros(16))
            self.calls = 0

        def forward(self, x):
            y = self.conv(x).mean(dim=(2, 3))
            if self.training:
                self.calls += 1
                if self.calls > n and where == "output":
                    y = y * float("nan")
                elif self.calls > n:
                    self.running.fill_(float("inf"))
            return y

    return Breaks()


class Recorder(torch.nn.Module):
    """A backbone that remembers its input (``seen``) and returns a fixed linear function of its channels pooled by
    ``pool`` (``mean``; ``amax`` where the inputs are standardised, so that their means are all zero)."""

    def __init__(self, dim: int = 8, pool: str = "mean") -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, dim)
        self.pool = pool

    def forward(self, x):
        self.seen = x
        return self.proj(x.mean((2, 3)) if self.pool == "mean" else x.amax((2, 3)))
