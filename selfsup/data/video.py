"""Video folders: clips in class subfolders (labels), flat (unlabeled), or under train/ and val/ or test/.

Each clip becomes ``T`` frames evenly spaced over it (the centres of ``T`` equal segments: frame
``floor((2i + 1) N / 2T)`` of ``N``, the sampling of Wang et al., "Temporal Segment Networks", ECCV 2016),
decoded with PyAV in one forward pass that keeps only those frames, each resized (shorter side) and centre-cropped
to a square. The set's ``images`` are the clips' middle frames (``frames[:, T // 2]``), so every image method trains
on videos, and ``fields["frames"]`` holds the clips ``(N, T, 3, S, S)`` uint8. A file that cannot be decoded, or
that has fewer decodable frames than ``T``, is skipped, counted in :attr:`Dataset.skipped` and reported once, with
the reason, as unreadable images are.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from selfsup.data.folder import DEFAULT_FOLDER_SIZE, IMAGE_EXTENSIONS, _threads, labeled_files, max_decoded_bytes
from selfsup.data.sources import Dataset, ImageSet, stratified_split
from selfsup.data.stream import printable
from selfsup.errors import UserError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".webm", ".mkv", ".mov"}
DEFAULT_FRAMES = 8  # frames per clip
PROGRESS_MIN = 20  # folders with fewer clips decode without a progress bar (a clip costs many images' decoding)


class UnreadableVideo(Exception):
    """A clip that cannot be decoded, or that is shorter than the frames asked for; the message says why."""


def _av():
    try:
        import av
    except ImportError:
        raise UserError('reading videos needs PyAV: pip install "selfsup[video]"') from None
    return av


def frame_indices(total: int, frames: int) -> list[int]:
    """``frames`` indices evenly spaced over ``total`` frames: the centre of each of ``frames`` equal segments."""
    return [(2 * i + 1) * total // (2 * frames) for i in range(frames)]


def _square(frame, size: int) -> np.ndarray:
    """``(3, size, size)`` uint8 RGB: shorter side resized to ``size`` (swscale, bilinear), centre crop."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=rw, height=rh, format="rgb24", threads=1).to_ndarray()
    left, top = (rw - size) // 2, (rh - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size].transpose(2, 0, 1))


def _pick(path: Path, wanted: list[int], size: int) -> tuple[list[np.ndarray], int]:
    """One forward pass over the first video stream keeping the ``wanted`` frames (sorted indices in presentation
    order); it stops after the last of them, or at the first error once a frame has decoded (a truncated or
    damaged file ends there). Returns the frames kept and how many frames were decoded."""
    av = _av()
    keep, seen, want = [], 0, set(wanted)
    with av.open(str(path)) as container:
        frames = container.decode(video=0)
        while seen <= wanted[-1]:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError:
                if not seen:
                    raise
                break
            if seen in want:
                keep.append(_square(frame, size))
            seen += 1
    return keep, seen


def _frame_count(path: Path) -> int:
    """Frames the container says its first video stream has; counted from its packets (no decoding) when the
    container does not say (WebM, Matroska)."""
    av = _av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UnreadableVideo("no video stream")
        stream = container.streams.video[0]
        return stream.frames or sum(1 for p in container.demux(stream) if p.size)


def read_clip(path: str | Path, frames: int, size: int) -> torch.Tensor:
    """``(frames, 3, size, size)`` uint8: frames evenly spaced over the clip (:func:`frame_indices`), each resized
    (shorter side) and centre-cropped to ``size``, decoded in one forward pass that keeps only those frames.

    When fewer frames decode than the container says (a truncated file), they are spaced again over those that do
    (a second pass). Raises :class:`UnreadableVideo` for a file that cannot be decoded or has fewer decodable frames
    than ``frames``, and :class:`~selfsup.errors.UserError` when PyAV is not installed.
    """
    av = _av()
    if frames < 1 or size < 1:
        raise UserError(f"a clip needs at least 1 frame of at least 1 pixel (asked for {frames} of {size} px)")
    try:
        total = _frame_count(Path(path))
        for _ in range(2):
            keep, seen = _pick(Path(path), frame_indices(max(total, frames), frames), size)
            if len(keep) == frames:
                return torch.from_numpy(np.stack(keep))
            if seen < frames:
                break
            total = seen  # the container promised more frames than decode: space the clip over those that do
    except av.FFmpegError as e:  # its strerror leaves out the errno and the FFmpeg function that failed
        raise UnreadableVideo(printable(e.strerror or str(e)) or type(e).__name__) from None
    except UnreadableVideo:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a decoder raises on a broken file means "unreadable"
        raise UnreadableVideo(printable(str(e)) or type(e).__name__) from None
    raise UnreadableVideo(f"only {seen} decodable frame(s), fewer than the {frames} a clip takes (too short)")


def _read_or_why(path: Path, frames: int, size: int) -> torch.Tensor | str:
    try:
        return read_clip(path, frames, size)
    except UnreadableVideo as e:
        return str(e)


def holds_videos(root: Path) -> bool:
    """A folder of videos: it holds video files and no images (a folder with images stays an image folder)."""
    found = False
    for p in root.rglob("*"):
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return False
        found = found or suffix in VIDEO_EXTENSIONS
    return found


def _decode_clips(files: list[Path], frames: int, size: int, where: Path) -> tuple[torch.Tensor, list[int], dict]:
    """Clips ``(K, T, 3, S, S)`` of the ``files`` that decode, their positions, and why each other one did not."""
    if len(files) * frames * 3 * size * size > max_decoded_bytes():
        raise UserError(f"{len(files)} clips of {frames} frames at {size} px do not fit in $SELFSUP_MAX_MEMORY_GB; "
                        "pass a smaller --image-size")
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        clips = list(tqdm(pool.map(lambda p: _read_or_why(p, frames, size), files), total=len(files),
                          desc=printable(f"decoding {where.name}"), unit="clip", leave=False, mininterval=1.0,
                          disable=len(files) < PROGRESS_MIN))
    kept = [i for i, c in enumerate(clips) if not isinstance(c, str)]
    why = {str(files[i]): c for i, c in enumerate(clips) if isinstance(c, str)}
    if not kept:
        first = next(iter(why))
        raise UserError(f"none of the {len(files)} videos in '{printable(where)}' could be read, e.g. "
                        f"{printable(first)}: {why[first]}")
    return torch.stack([clips[i] for i in kept]), kept, why


def _load_split(folder: Path, size: int, frames: int, classes: list[str] | None = None) -> tuple[ImageSet, dict]:
    """One folder of clips: class subfolders give labels, videos directly inside make it unlabeled."""
    files, labels, classes = labeled_files(folder, VIDEO_EXTENSIONS, "videos", classes)
    clips, kept, why = _decode_clips(files, frames, size, folder)
    label_t = None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.long)
    return ImageSet(clips[:, frames // 2].contiguous(), label_t, classes, [str(files[i]) for i in kept],
                    {"frames": clips}), why


def load_video_folder(root: str | Path, size: int | None = None, frames: int = DEFAULT_FRAMES) -> Dataset:
    """A folder of videos as a :class:`Dataset`, laid out and split as image folders are
    (:func:`selfsup.data.folder.load_folder_dataset`): class subfolders hold out 20% of every class for testing
    (when there are 10 clips or more), ``train/`` beside ``val/`` or ``test/`` is used as it is, and a flat folder
    pretrains without evaluation. ``size``: the side frames are decoded to (default as image folders of mixed
    sizes: :data:`~selfsup.data.folder.DEFAULT_FOLDER_SIZE`)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"video folder '{printable(root)}' does not exist")
    size = size or DEFAULT_FOLDER_SIZE
    eval_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and eval_dir is not None:
        train, why = _load_split(root / "train", size, frames)
        test, why2 = _load_split(eval_dir, size, frames, train.classes)
        why |= why2
        ds = Dataset(str(root), pretrain=train, train=train if train.labeled else None,
                     test=test if test.labeled else None, skipped=list(why))
    else:
        full, why = _load_split(root, size, frames)
        tr, te = stratified_split(full.labels, 0.2) if full.labeled and len(full) >= 10 else (None, None)
        if te is not None and len(te):
            train = full.subset(tr)
            ds = Dataset(str(root), pretrain=train, train=train, test=full.subset(te), skipped=list(why))
        else:
            if te is not None:
                print(f"note: no class in '{printable(root)}' has the 3 clips it takes to hold one out for testing, "
                      "so there is no evaluation (put test clips in val/ beside train/)", file=sys.stderr)
            ds = Dataset(str(root), pretrain=full, skipped=list(why))
    if why:
        first = next(iter(why))
        print(f"warning: skipped {len(why)} unreadable video(s) in '{printable(root)}', e.g. "
              f"{printable(first)}: {why[first]}", file=sys.stderr)
    return ds
