"""Picture grids of image batches: GAN samples, colourisation pairs, reconstructions.

Every image is enlarged by a whole factor with nearest-neighbour sampling, so 32 px images stay sharp and each
input pixel becomes an exact ``scale`` x ``scale`` square of the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from selfsup.errors import UserError

if TYPE_CHECKING:
    from selfsup.methods.panels import Panel

MIN_CELL = 96  # default enlargement: the smallest whole factor that makes an image at least this many pixels wide
FONT_SIZE = 11
SUFFIXES = (".png", ".jpg", ".jpeg")
_RANGE_SLACK = 1e-3  # float images may leave [0, 1] by this much (round-off), and are clamped


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float [0, 1] ``(N, 1 or 3, H, W)`` -> uint8 ``(N, 3, H, W)`` on the CPU."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise UserError(f"an image grid needs a (N, 3, H, W) or (N, 1, H, W) batch (got shape {tuple(images.shape)})")
    x = images.detach().cpu()
    if x.is_floating_point():
        low, high = float(x.min()), float(x.max())
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise UserError(f"float images must lie in [0, 1] (got {low:.3g} to {high:.3g}); "
                            "map generator output in [-1, 1] with selfsup.heads.generator.to_unit")
        x = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    elif x.dtype != torch.uint8:
        raise UserError(f"images must be uint8 or float in [0, 1] (got {x.dtype})")
    return x.expand(-1, 3, -1, -1)


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text``, cut at the end until it is at most ``width`` pixels wide."""
    while text and font.getlength(text) > width:
        text = text[:-1]
    return text


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int, title: str | None = None,
                    labels: Sequence[str] | None = None, *, scale: int | None = None, pad: int = 2) -> None:
    """Write :func:`image_grid` of the arguments to ``path`` (PNG or JPEG)."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise UserError(f"image grid path must end in one of {', '.join(SUFFIXES)} (got {path})")
    picture = image_grid(images, nrow, title, labels, scale=scale, pad=pad)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def image_grid(images: torch.Tensor, nrow: int, title: str | None = None, labels: Sequence[str] | None = None, *,
               scale: int | None = None, pad: int = 2) -> Image.Image:
    """``images`` as a grid picture, ``nrow`` images per row, in order, on a white background.

    ``images``: uint8 or float [0, 1], ``(N, 3, H, W)`` (or one channel, shown grey). ``scale``: the whole
    enlargement factor (default: the smallest making a cell at least :data:`MIN_CELL` pixels wide). ``labels``:
    one caption per image, written under it. ``title``: one line above the grid. Cells are ``pad`` pixels apart and
    from the border, so cell (r, c) starts at x = pad + c (W scale + pad), y = T + pad + r (H scale + L + pad),
    with T and L the title and caption band heights (0 when absent).
    """
    x = _as_uint8(images)
    n, _, h, w = x.shape
    if nrow < 1 or pad < 0 or (scale is not None and scale < 1):
        raise UserError(f"image grid needs nrow >= 1, scale >= 1 and pad >= 0 (got {nrow}, {scale}, {pad})")
    if labels is not None and len(labels) != n:
        raise UserError(f"image grid got {len(labels)} labels for {n} images")
    scale = scale or math.ceil(MIN_CELL / max(h, w))
    font = ImageFont.load_default(size=FONT_SIZE)
    line = font.getbbox("Ag")[3] + 4
    caption, banner = (line if labels is not None else 0), (line if title else 0)
    cols = min(nrow, n)
    rows = math.ceil(n / cols)

    cells = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cells = F.pad(cells, (0, pad, 0, caption + pad), value=255)
    cells = torch.cat([cells, cells.new_full((rows * cols - n, *cells.shape[1:]), 255)])
    cell_h, cell_w = cells.shape[-2:]
    grid = cells.view(rows, cols, 3, cell_h, cell_w).permute(2, 0, 3, 1, 4).reshape(3, rows * cell_h, cols * cell_w)
    grid = F.pad(grid, (pad, 0, banner + pad, 0), value=255)

    picture = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((pad, 2), _fit(title, font, picture.width - 2 * pad), fill=(0, 0, 0), font=font)
    for i, text in enumerate(labels or []):
        r, c = divmod(i, cols)
        text = _fit(str(text), font, w * scale)
        left = pad + c * cell_w + (w * scale - font.getlength(text)) / 2
        draw.text((left, banner + pad + r * cell_h + h * scale + 2), text, fill=(0, 0, 0), font=font)
    return picture


def draw_panels(panels: Sequence[Panel], title: str) -> Image.Image:
    """The panels one under the other, each a titled row with its captions, under ``title``."""
    rows = [image_grid(p.images.detach().float().cpu().clamp(0, 1), nrow=len(p.images), title=p.title,
                       labels=None if p.captions is None else [str(c) for c in p.captions]) for p in panels]
    font = ImageFont.load_default(size=FONT_SIZE + 2)
    head = font.getbbox("Ag")[3] + 8
    width, height = max(r.width for r in rows), head + sum(r.height + 6 for r in rows)
    picture = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(picture).text((4, 3), title, fill=(0, 0, 0), font=font)
    y = head
    for r in rows:
        picture.paste(r, (0, y))
        y += r.height + 6
    return picture
