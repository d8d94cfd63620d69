"""Image folders: class subfolders (labels), a flat folder (unlabeled), or a root with train/ and val/ or test/.

Images are decoded once in a thread pool to square uint8 arrays (8-bit RGB by scaling: 16-bit values / 257)
and cached under ``$SELFSUP_CACHE`` (default ``~/.cache/selfsup``), keyed by a hash of the files' bytes, so a
changed image is decoded again even when its size and modification time are unchanged. Cache entries are written
atomically; one that is corrupt or does not fit is decoded again, and a cache that cannot be written is skipped
with a one-line warning. Unreadable or truncated images, and images with more pixels than
``PIL.Image.MAX_IMAGE_PIXELS`` (decompression bombs), are skipped, counted and reported once, with the reason.
File names that are not UTF-8 are read: paths keep them as Python does (surrogate escapes, so that they
open), class names and messages show their odd bytes as ``\\xff``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from selfsup.data.sidecars import sidecar_fields
from selfsup.data.sources import DEFAULT_STREAM_SIZE, Dataset, ImageSet, stratified_split
from selfsup.data.stream import FileImages, UnreadableImage, decode_square, printable
from selfsup.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
DEFAULT_FOLDER_SIZE = DEFAULT_STREAM_SIZE  # folders of mixed sizes: the side shards get by default too
CACHE_VERSION = 2  # part of every cache key: bump it when decoding changes, so that no old pixels are reused
PROGRESS_MIN = 2000  # folders with fewer images decode without a progress bar


def cache_dir() -> Path:
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


def _images_in(folder: Path, extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def labeled_files(folder: Path, extensions: frozenset[str] | set[str], kind: str, classes: list[str] | None = None
                  ) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """The files of one split (image or video folders alike): class subfolders give labels (``classes``: the
    training split's names, which another split's folders must be among), files directly inside make it unlabeled.
    Returns files, labels and class names (None and None unlabeled); no file of ``kind`` is an error."""
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    flat = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions]
    if subdirs and not flat:
        classes = classes or [printable(d.name) for d in subdirs]  # names to show: no undecodable bytes
        files, labels = [], []
        for d in subdirs:
            if printable(d.name) not in classes:
                raise UserError(f"class folder '{printable(d)}' is not among the training classes")
            found = _images_in(d, extensions)
            files += found
            labels += [classes.index(printable(d.name))] * len(found)
    else:
        files, labels, classes = _images_in(folder, extensions), None, None
    if not files:
        raise UserError(f"no {kind} found in '{printable(folder)}' (looked for {', '.join(sorted(extensions))})")
    return files, labels, classes


def _threads() -> int:
    return min(8, (os.cpu_count() or 1) * 2)


def _decode(path: Path, size: int) -> np.ndarray | str:
    """``(3, size, size)`` uint8 as :func:`~selfsup.data.stream.decode_square` gives it without JPEG draft
    mode, or why the file cannot be read."""
    try:
        return decode_square(path, size, draft=False)
    except UnreadableImage as e:
        return str(e)


def _common_size(files: list[Path]) -> int:
    """The side to decode to when the user gave none: the images' own if they are all one square size."""
    sizes = set()
    for p in files[:: max(1, len(files) // 64)]:
        try:
            with Image.open(p) as im:
                sizes.add(im.size)
        except Exception:  # noqa: BLE001 - unreadable files (bombs too) are skipped when decoded
            continue
    if len(sizes) == 1:
        w, h = sizes.pop()
        if w == h:
            return w
    return DEFAULT_FOLDER_SIZE


def _file_hashes(files: list[Path]) -> list[bytes]:
    """SHA-1 of each file's bytes (read in 1 MiB pieces), or of why it cannot be read."""
    out = []
    for path in files:
        h = hashlib.sha1()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as e:
            h.update(f"unreadable {e.errno}".encode())
        out.append(h.digest())
    return out


def _cache_file(files: list[Path], size: int) -> Path:
    """The cache entry of ``files`` decoded at ``size``: named by a hash of every file's bytes, in order (a
    renamed or moved folder keeps its entry, a changed image makes a new one). Each thread hashes one slice
    of the files: a task per file would cost more than hashing a small one."""
    key = hashlib.sha1(f"{CACHE_VERSION}|{size}|{len(files)}".encode())
    step = max(1, -(-len(files) // _threads()))
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        for digests in pool.map(_file_hashes, [files[i : i + step] for i in range(0, len(files), step)]):
            key.update(b"".join(digests))
    return cache_dir() / f"folder-{key.hexdigest()[:20]}.npz"


def _read_cache(path: Path, n: int, size: int) -> tuple[np.ndarray, list[int]] | None:
    """A cache entry for ``n`` files at ``size``, or None when it is missing, unreadable or does not fit them."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images, kept = z["images"], z["kept"]
    except Exception:  # noqa: BLE001 - missing, truncated or corrupt (np.load raises many kinds): decode again
        return None
    fits = (images.dtype == np.uint8 and images.shape == (len(kept), 3, size, size) and kept.ndim == 1
            and kept.dtype.kind in "iu" and bool(np.all(np.diff(kept) > 0))
            and (len(kept) == 0 or (kept[0] >= 0 and kept[-1] < n)))
    return (images, kept.tolist()) if fits else None


def _write_cache(path: Path, images: np.ndarray, kept: list[int]) -> None:
    """Write a cache entry atomically (a temporary file, then a rename: a killed run leaves no half-written
    entry); a cache that cannot be written is skipped with a one-line warning."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # one per process: ranks may decode at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, kept=np.asarray(kept, dtype=np.int64))
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot write the decode cache in '{printable(path.parent)}' ({e.strerror or e}), so these "
              "images are decoded again next time; set SELFSUP_CACHE to a writable folder", file=sys.stderr)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def decode_files(files: list[Path], size: int, desc: str) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode ``files`` to ``(N, 3, size, size)`` uint8 (cached); returns images, kept positions, skipped paths."""
    cache = _cache_file(files, size)
    found = _read_cache(cache, len(files), size)
    if found is not None:
        images, kept = found
    else:
        with ThreadPoolExecutor(max_workers=_threads()) as pool:
            arrays = list(tqdm(pool.map(lambda p: _decode(p, size), files), total=len(files), desc=printable(desc),
                               unit="img", leave=False, mininterval=1.0, disable=len(files) < PROGRESS_MIN))
        kept = [i for i, a in enumerate(arrays) if not isinstance(a, str)]
        images = np.stack([arrays[i] for i in kept]) if kept else np.zeros((0, 3, size, size), np.uint8)
        _write_cache(cache, images, kept)
    skipped = [str(files[i]) for i in sorted(set(range(len(files))) - set(kept))]
    return torch.from_numpy(images), kept, skipped


def _why(path: str, size: int) -> str:
    """Why an image was skipped (decoded once more: entries of the cache keep no reasons)."""
    reason = _decode(Path(path), size)
    return reason if isinstance(reason, str) else "unreadable when first decoded"


def _load_split(folder: Path, size: int | None, classes: list[str] | None = None,
                stream: bool = False) -> tuple[ImageSet, list[str], int]:
    """One folder: class subfolders give labels, images directly inside make it unlabeled."""
    if not folder.is_dir():
        raise UserError(f"data folder '{printable(folder)}' does not exist")
    files, labels, classes = labeled_files(folder, IMAGE_EXTENSIONS, "images", classes)
    size = size or _common_size(files)
    if stream or len(files) * 3 * size * size > max_decoded_bytes():
        label_t = None if labels is None else torch.tensor(labels, dtype=torch.long)
        fields = sidecar_fields(files, files, folder)  # captions (.txt) and vectors (.npy) beside the images
        return ImageSet(FileImages(files, size, fields), label_t, classes, [str(f) for f in files], fields), [], size
    images, kept, skipped, size = _decode_found(files, folder, size)
    label_t = None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.long)
    return ImageSet(images, label_t, classes, [str(files[i]) for i in kept],
                    sidecar_fields([files[i] for i in kept], files, folder)), skipped, size


def _decode_found(files: list[Path], where: Path, size: int | None) -> tuple[torch.Tensor, list[int], list[str], int]:
    """:func:`decode_files` at ``size`` (default: the images' common size); no readable image is a user error."""
    if not files:
        raise UserError(f"no images found in '{printable(where)}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    size = size or _common_size(files)
    images, kept, skipped = decode_files(files, size, desc=f"decoding {where.name}")
    if not kept:
        raise UserError(f"none of the {len(files)} images in '{printable(where)}' could be read, e.g. "
                        f"{printable(files[0])}: {_why(str(files[0]), size)}")
    return images, kept, skipped, size


def load_images(path: str | Path, size: int | None = None) -> ImageSet:
    """Every image under ``path`` (a folder of any layout, or one image file), sorted by path, with its path.

    When no image lies directly in ``path``, each is labeled by the name of the folder it is in
    (``root/cat/1.jpg`` and ``root/train/cat/2.jpg`` are both ``cat``). Unreadable files are skipped
    and listed on stderr, each with the reason.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"'{printable(root)}' does not exist")
    files = _images_in(root) if root.is_dir() else [root]
    images, kept, skipped, size = _decode_found(files, root, size)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s) in '{printable(root)}':",
              *(f"{printable(f)}: {_why(f, size)}" for f in skipped), sep="\n  ", file=sys.stderr)
    files = [files[i] for i in kept]
    labels, classes = None, None
    if root.is_dir() and all(f.parent != root for f in files):
        classes = sorted({printable(f.parent.name) for f in files})
        ids = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([ids[printable(f.parent.name)] for f in files], dtype=torch.long)
    return ImageSet(images, labels, classes, [str(f) for f in files])


def max_decoded_bytes() -> int:
    """Folders larger than this once decoded are streamed (``$SELFSUP_MAX_MEMORY_GB``, default 16)."""
    return int(float(os.environ.get("SELFSUP_MAX_MEMORY_GB", 16)) * 2**30)


def load_folder_dataset(root: Path, image_size: int | None, stream: bool = False) -> Dataset:
    """Resolve a folder SPEC into pretraining images and labeled evaluation splits.

    Class subfolders without train/ and val/ hold out 20% of every class (rounded) for testing. When that
    leaves no test image at all (every class has fewer than 3 images), all images pretrain and there is no
    evaluation, said in one line on stderr: a researcher gets the run, and knows why it has no scores.
    """
    if not root.exists():
        raise UserError(f"data folder '{printable(root)}' does not exist")
    if not root.is_dir():
        raise UserError(f"'{printable(root)}' is not a folder")
    from selfsup.data.video import holds_videos, load_video_folder

    if holds_videos(root):  # clips: frames evenly spaced over each, its middle frame as the image
        return load_video_folder(root, image_size)
    eval_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and eval_dir is not None:
        train, skipped, size = _load_split(root / "train", image_size, stream=stream)
        test, skipped2, _ = _load_split(eval_dir, size, train.classes, stream=stream)
        ds = Dataset(str(root), pretrain=train, train=train if train.labeled else None,
                     test=test if test.labeled else None, skipped=skipped + skipped2)
    else:
        full, skipped, size = _load_split(root, image_size, stream=stream)
        tr, te = stratified_split(full.labels, 0.2) if full.labeled and len(full) >= 10 else (None, None)
        if te is not None and len(te):
            train = full.subset(tr)
            ds = Dataset(str(root), pretrain=train, train=train, test=full.subset(te), skipped=skipped)
        else:
            if te is not None:
                print(f"note: no class in '{printable(root)}' has the 3 images it takes to hold one out for testing, "
                      "so there is no evaluation (put test images in val/ beside train/)", file=sys.stderr)
            ds = Dataset(str(root), pretrain=full, skipped=skipped)
    if ds.skipped:
        print(f"warning: skipped {len(ds.skipped)} unreadable image(s) in '{printable(root)}', e.g. "
              f"{printable(ds.skipped[0])}: {_why(ds.skipped[0], size)}", file=sys.stderr)
    return ds
