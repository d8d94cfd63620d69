"""The CIFAR-10 folder the benchmarks read, and moving it between machines as one file.

The benchmarks read CIFAR-10 as JPEG class folders (``train/<class>/NNNN.jpg``, ``test/<class>/...``). Build that
folder from torchvision's download (JPEG quality 75, 4:2:0 chroma, as the copy the published CPU numbers used)::

    python benchmarks/pack_images.py cifar10 data/cifar10

A machine without the folder (a lent GPU) gets the 60,000 JPEGs as one file of their concatenated bytes (about
55 MB), unpacked there into the same tree::

    python benchmarks/pack_images.py pack data/cifar10 carry/cifar10.pack
    python benchmarks/pack_images.py unpack carry/cifar10.pack /tmp/cifar10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def pack(root: Path, dest: Path) -> int:
    """Write every file under ``root`` (relative paths and bytes) into ``dest``; returns the file count."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    blobs = [p.read_bytes() for p in files]
    names = "\n".join(str(p.relative_to(root)) for p in files).encode()
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, names=np.frombuffer(names, np.uint8), offsets=offsets,
                 data=np.frombuffer(b"".join(blobs), np.uint8))
    tmp.replace(dest)
    return len(files)


def unpack(src: Path, root: Path) -> int:
    """Recreate the packed tree under ``root``; returns the file count."""
    z = np.load(src)
    names = z["names"].tobytes().decode().split("\n")
    offsets, data = z["offsets"], z["data"]
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[offsets[i]:offsets[i + 1]].tobytes())
    return len(names)


def cifar10(root: Path, quality: int = 75) -> int:
    """Download CIFAR-10 with torchvision and write it as JPEG class folders under ``root``; returns the count."""
    import torchvision
    from PIL import Image

    n = 0
    for split, train in (("train", True), ("test", False)):
        ds = torchvision.datasets.CIFAR10(str(root / ".download"), train=train, download=True)
        for i, (image, label) in enumerate(zip(ds.data, ds.targets, strict=True)):
            folder = root / split / ds.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=quality, subsampling=2)
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("root", type=Path)
    a.add_argument("dest", type=Path)
    b = sub.add_parser("unpack")
    b.add_argument("src", type=Path)
    b.add_argument("root", type=Path)
    c = sub.add_parser("cifar10", help="download CIFAR-10 (torchvision) and write it as JPEG class folders")
    c.add_argument("root", type=Path)
    args = p.parse_args()
    if args.cmd == "cifar10":
        print(f"wrote {cifar10(args.root)} images under {args.root}")
        return
    n = pack(args.root, args.dest) if args.cmd == "pack" else unpack(args.src, args.root)
    print(f"{args.cmd}ed {n} files")


if __name__ == "__main__":
    main()
