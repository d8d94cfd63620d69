"""Image folders: class subfolders (labels), a flat folder (unlabeled), or a root with train/ and val/ or test/.

Images are decoded once in a thread pool to square uint8 arrays and cached under
``$SELFSUP_CACHE`` (default ``~/.cache/selfsup``), keyed by the files' paths, sizes and mtimes.
Unreadable or truncated images are skipped, counted and reported once.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from selfsup.data.sources import Dataset, ImageSet, stratified_split
from selfsup.data.stream import FileImages
from selfsup.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
DEFAULT_FOLDER_SIZE = 64


def cache_dir() -> Path:
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _decode(path: Path, size: int | None) -> np.ndarray | None:
    """RGB uint8 (H, W, 3); shorter side resized to ``size`` then centre-cropped square. None if unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                w, h = im.size
                scale = size / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _common_size(files: list[Path]) -> int:
    """The side to decode to when the user gave none: the images' own if they are all one square size."""
    sizes = set()
    for p in files[:: max(1, len(files) // 64)]:
        try:
            with Image.open(p) as im:
                sizes.add(im.size)
        except OSError:
            continue
    if len(sizes) == 1:
        w, h = sizes.pop()
        if w == h:
            return w
    return DEFAULT_FOLDER_SIZE


def decode_files(files: list[Path], size: int, desc: str) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode ``files`` to ``(N, 3, size, size)`` uint8 (cached); returns images, kept positions, skipped paths."""
    key = hashlib.sha1(str(size).encode())
    for p in files:
        st = p.stat()
        key.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = cache_dir() / f"folder-{key.hexdigest()[:20]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            kept = z["kept"].tolist()
            skipped = [str(files[i]) for i in sorted(set(range(len(files))) - set(kept))]
            return torch.from_numpy(z["images"]), kept, skipped
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(tqdm(pool.map(lambda p: _decode(p, size), files), total=len(files), desc=desc,
                           unit="img", leave=False, mininterval=1.0, disable=len(files) < 2000))
    kept = [i for i, a in enumerate(arrays) if a is not None]
    skipped = [str(files[i]) for i, a in enumerate(arrays) if a is None]
    images = np.stack([arrays[i] for i in kept]).transpose(0, 3, 1, 2) if kept else np.zeros((0, 3, size, size),
                                                                                              np.uint8)
    images = np.ascontiguousarray(images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")  # one per process: ranks may decode at once
    np.savez(tmp, images=images, kept=np.asarray(kept, dtype=np.int64))
    os.replace(tmp, cache)
    return torch.from_numpy(images), kept, skipped


def _load_split(folder: Path, size: int | None, classes: list[str] | None = None,
                stream: bool = False) -> tuple[ImageSet, list[str], int]:
    """One folder: class subfolders give labels, images directly inside make it unlabeled."""
    if not folder.is_dir():
        raise UserError(f"data folder '{folder}' does not exist")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    flat = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if subdirs and not flat:
        classes = classes or [d.name for d in subdirs]
        files, labels = [], []
        for d in subdirs:
            if d.name not in classes:
                raise UserError(f"class folder '{d}' is not among the training classes")
            found = _images_in(d)
            files += found
            labels += [classes.index(d.name)] * len(found)
    else:
        files, labels, classes = _images_in(folder), None, None
    if not files:
        raise UserError(f"no images found in '{folder}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    size = size or _common_size(files)
    if stream or len(files) * 3 * size * size > max_decoded_bytes():
        label_t = None if labels is None else torch.tensor(labels, dtype=torch.long)
        return ImageSet(FileImages(files, size), label_t, classes, [str(f) for f in files]), [], size
    images, kept, skipped, size = _decode_found(files, folder, size)
    label_t = None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.long)
    return ImageSet(images, label_t, classes, [str(files[i]) for i in kept]), skipped, size


def _decode_found(files: list[Path], where: Path, size: int | None) -> tuple[torch.Tensor, list[int], list[str], int]:
    """:func:`decode_files` at ``size`` (default: the images' common size); no readable image is a user error."""
    if not files:
        raise UserError(f"no images found in '{where}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    size = size or _common_size(files)
    images, kept, skipped = decode_files(files, size, desc=f"decoding {where.name}")
    if not kept:
        raise UserError(f"none of the {len(files)} images in '{where}' could be read")
    return images, kept, skipped, size


def load_images(path: str | Path, size: int | None = None) -> ImageSet:
    """Every image under ``path`` (a folder of any layout, or one image file), sorted by path, with its path.

    When no image lies directly in ``path``, each is labeled by the name of the folder it is in
    (``root/cat/1.jpg`` and ``root/train/cat/2.jpg`` are both ``cat``). Unreadable files are skipped
    and listed on stderr.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"'{root}' does not exist")
    files = _images_in(root) if root.is_dir() else [root]
    images, kept, skipped, _ = _decode_found(files, root, size)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s) in '{root}':", *skipped, sep="\n  ",
              file=sys.stderr)
    files = [files[i] for i in kept]
    labels, classes = None, None
    if root.is_dir() and all(f.parent != root for f in files):
        classes = sorted({f.parent.name for f in files})
        ids = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([ids[f.parent.name] for f in files], dtype=torch.long)
    return ImageSet(images, labels, classes, [str(f) for f in files])


def max_decoded_bytes() -> int:
    """Folders larger than this once decoded are streamed (``$SELFSUP_MAX_MEMORY_GB``, default 16)."""
    return int(float(os.environ.get("SELFSUP_MAX_MEMORY_GB", 16)) * 2**30)


def load_folder_dataset(root: Path, image_size: int | None, stream: bool = False) -> Dataset:
    """Resolve a folder SPEC into pretraining images and labeled evaluation splits."""
    if not root.exists():
        raise UserError(f"data folder '{root}' does not exist")
    if not root.is_dir():
        raise UserError(f"'{root}' is not a folder")
    eval_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and eval_dir is not None:
        train, skipped, size = _load_split(root / "train", image_size, stream=stream)
        test, skipped2, _ = _load_split(eval_dir, size, train.classes, stream=stream)
        ds = Dataset(str(root), pretrain=train, train=train if train.labeled else None,
                     test=test if test.labeled else None, skipped=skipped + skipped2)
    else:
        full, skipped, _ = _load_split(root, image_size, stream=stream)
        if full.labeled and len(full) >= 10:
            tr, te = stratified_split(full.labels, 0.2)
            train = full.subset(tr)
            ds = Dataset(str(root), pretrain=train, train=train, test=full.subset(te), skipped=skipped)
        else:
            ds = Dataset(str(root), pretrain=full, skipped=skipped)
    if ds.skipped:
        print(f"warning: skipped {len(ds.skipped)} unreadable image(s) in '{root}', e.g. {ds.skipped[0]}",
              file=sys.stderr)
    return ds
