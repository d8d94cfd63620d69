"""Small shared test utilities: tiny image folders made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
