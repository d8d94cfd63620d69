"""Point tracks through video clips, the positives of Wang & Gupta ("Unsupervised Learning of Visual Representations
using Videos", ICCV 2015): a moving corner of a clip's first frame followed to its last frame with OpenCV's pyramidal
Lucas-Kanade tracker, and the square patch boxes around tracked points.

The paper finds moving regions with improved dense trajectories and SURF points and follows a box with the KCF
tracker; here the moving region is where a frame differs from the first, the point is the strongest Shi-Tomasi
corner inside it (``cv2.goodFeaturesToTrack``) and it is followed frame to frame by ``cv2.calcOpticalFlowPyrLK``,
keeping only tracks that the tracker reports found and that the backward pass brings back within ``fb_max`` px
(the forward-backward check of Kalal, Mikolajczyk, Matas, ICPR 2010). OpenCV is optional:
``pip install "selfsup[video]"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import UserError

PYRAMID_LEVELS = 2  # levels above the full frame: motions of a few window sizes between frames


def opencv() -> Any:
    """The cv2 module, or a UserError naming the extra that installs it."""
    try:
        import cv2
    except ImportError:
        raise UserError('tracking needs OpenCV: pip install "selfsup[video]"') from None
    return cv2


def _window(height: int, width: int) -> int:
    """The KLT window side: about half the frame, odd, between 5 and 21 px (measured on moving-objects at 32 px: 15
    keeps 87% of the moving clips' tracks, 5 only 62%)."""
    return int(np.clip((min(height, width) // 2 - 1) | 1, 5, 21))


def _track_one(cv2: Any, gray: list[np.ndarray], motion_threshold: float, fb_max: float) -> np.ndarray | None:
    """The (T, 2) xy track of the strongest moving corner of the first frame, or None where there is none or the
    tracker loses it."""
    height, width = gray[0].shape
    motion = np.max(np.stack([cv2.absdiff(g, gray[0]) for g in gray[1:]]), axis=0)
    mask = cv2.dilate((motion > motion_threshold).astype(np.uint8), np.ones((3, 3), np.uint8))
    point = cv2.goodFeaturesToTrack(gray[0], maxCorners=1, qualityLevel=0.01, minDistance=1, mask=mask, blockSize=3)
    if point is None:
        return None
    lk = dict(winSize=(_window(height, width),) * 2, maxLevel=PYRAMID_LEVELS,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    track = [point.reshape(1, 1, 2).astype(np.float32)]
    for before, after in zip(gray[:-1], gray[1:], strict=True):
        ahead, found, _ = cv2.calcOpticalFlowPyrLK(before, after, track[-1], None, **lk)
        back, found_back, _ = cv2.calcOpticalFlowPyrLK(after, before, ahead, None, **lk)
        x, y = ahead.reshape(2)
        if not (found[0, 0] and found_back[0, 0] and np.linalg.norm(back - track[-1]) <= fb_max
                and 0 <= x <= width - 1 and 0 <= y <= height - 1):
            return None
        track.append(ahead)
    return np.concatenate(track).reshape(-1, 2)


def track_clips(frames: Tensor, motion_threshold: float = 20.0, fb_max: float = 1.0) -> tuple[Tensor, Tensor]:
    """Tracks of every clip of ``frames`` uint8 (N, T, 3, H, W): ``(tracks (N, T, 2) float32, valid (N,) bool)``.

    A track is the (x, y) pixel position (OpenCV's convention: x the column, pixel centres at integers) of one
    point in each frame. Its start is the strongest Shi-Tomasi corner of the first frame (grey) among the pixels
    where some later frame differs from it by more than ``motion_threshold`` grey levels (dilated by one pixel);
    it is followed frame to frame by pyramidal KLT (window about an eighth of the frame, 2 pyramid levels). A clip
    with no moving corner, or whose point the tracker loses (not found, leaves the frame, or its backward track
    ends more than ``fb_max`` px from where it started), gets the clip centre in every frame and ``valid`` False.
    One-off work before training: a loop over the clips on the CPU.
    """
    cv2 = opencv()
    if frames.dim() != 5 or frames.shape[2] != 3 or frames.dtype != torch.uint8:
        raise UserError(f"clips must be uint8 (N, T, 3, H, W) frames, got {tuple(frames.shape)} {frames.dtype}")
    n, length, _, height, width = frames.shape
    if length < 2:
        raise UserError(f"tracking needs clips of at least 2 frames, got {length}")
    clips = frames.permute(0, 1, 3, 4, 2).cpu().numpy()
    tracks = np.empty((n, length, 2), np.float32)
    tracks[:] = ((width - 1) / 2, (height - 1) / 2)
    valid = np.zeros(n, bool)
    for i, clip in enumerate(clips):
        track = _track_one(cv2, [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip], motion_threshold, fb_max)
        if track is not None:
            tracks[i], valid[i] = track, True
    return torch.from_numpy(tracks), torch.from_numpy(valid)


def patch_boxes(centres: Tensor, side: int, height: int, width: int) -> Tensor:
    """Boxes (B, 4) = (top, left, side, side) in whole pixels, as float, of ``side`` px squares centred on the (x, y)
    points ``centres`` (B, 2) (rounded to the nearest pixel) and shifted inside the ``height`` x ``width`` frame."""
    if not 1 <= side <= min(height, width):
        raise UserError(f"patches of {side} px do not fit {height} x {width} frames")
    half = (side - 1) / 2
    left = (centres[:, 0] - half).round().clamp(0, width - side)
    top = (centres[:, 1] - half).round().clamp(0, height - side)
    size = torch.full_like(top, float(side))
    return torch.stack([top, left, size, size], 1).float()
