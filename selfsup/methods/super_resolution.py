"""Super-resolution as a pretext task (Dong, Loy, He, Tang, "Image Super-Resolution Using Deep Convolutional
Networks", ECCV 2014 / TPAMI 2016: SRCNN's bicubically upscaled input), with an optional perceptual loss (Johnson,
Alahi, Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and Super-Resolution", ECCV 2016)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones import stage_names, stage_outputs
from selfsup.data.ops.base import resize
from selfsup.data.ops.resample import check_filters, low_resolution
from selfsup.data.views import prepare
from selfsup.errors import UserError
from selfsup.losses.pixel import reconstruction_error
from selfsup.methods.reconstruction import Reconstruction
from selfsup.methods.teacher import load_teacher


class SuperResolution(Reconstruction):
    """The augmented image (crops and flips, in [0, 1]) is downscaled by ``factor`` (default 4: 32 px to 8) with
    the ``downscale`` filter (``bilinear``: antialiased, as torchvision's resize; or ``area``, ``bicubic``,
    ``nearest``), upscaled back to full size bicubically and clamped, as SRCNN prepares its input: the backbone
    sees a blurry full-size image, so it is evaluated at the size it was trained at. A pixel decoder on its last
    feature map predicts the original; loss: the mean absolute error in [0, 1] space (L1, sharper than SRCNN's
    squared error; Lim et al., CVPRW 2017).

    Optional perceptual term (Johnson et al.): ``perceptual``, a finished run of this project (folder or
    checkpoint) whose evaluated encoder is kept frozen (loaded as BoWNet loads its teacher), adds
    ``perceptual_weight`` times the mean squared distance between its feature maps at ``perceptual_stage``
    (default its second stage, a low-level one as Johnson et al.'s relu2_2) of the output and of the original,
    both ImageNet-normalised at that network's training size."""

    name = "super-resolution"
    paper = ("Dong, Loy, He, Tang, Image Super-Resolution Using Deep Convolutional Networks, ECCV 2014 "
             "(TPAMI 2016)")

    def __init__(self, *args, factor: int = 4, downscale: str = "bilinear", perceptual: str | None = None,
                 perceptual_stage: str | None = None, perceptual_weight: float = 0.0, **kwargs) -> None:
        if not factor >= 2:
            raise UserError(f"super-resolution: factor must be at least 2, got {factor}")
        check_filters([downscale])
        if (perceptual is None) != (perceptual_weight == 0.0) or perceptual_weight < 0.0:
            raise UserError("super-resolution: the perceptual term needs both perceptual=RUN_FOLDER and "
                            f"perceptual_weight > 0 (got {perceptual!r} and {perceptual_weight})")
        super().__init__(*args, **kwargs)
        self.factor, self.downscale, self.perceptual_weight = factor, downscale, perceptual_weight
        self.input_title = f"the image downscaled x{factor} ({downscale}), upscaled back (bicubic)"
        self.perceptual: nn.Module | None = None
        if perceptual is not None:
            self.perceptual, self.perceptual_size = load_teacher(perceptual)
            names = stage_names(self.perceptual)
            stage = perceptual_stage or names[min(1, len(names) - 1)]
            if stage not in names:
                raise UserError(f"super-resolution: the perceptual network has no stage '{stage}'; its stages: "
                                f"{', '.join(names)}")
            self.stage = names.index(stage)

    def train(self, mode: bool = True) -> SuperResolution:
        """Train mode for the backbone and decoder; the perceptual network stays in eval mode."""
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()
        return self

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("perceptual.")]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The perceptual network's map at its stage of [0, 1] images (resized to its training size)."""
        return stage_outputs(self.perceptual, prepare(resize(images, self.perceptual_size)))[self.stage]

    def corrupt(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return low_resolution(clean, self.factor, self.downscale)

    def objective(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        l1 = reconstruction_error(output, target, "l1")
        if self.perceptual is None:
            return l1
        with torch.no_grad():
            wanted = self.features(target)
        return {"l1": l1, "perceptual": self.perceptual_weight * reconstruction_error(self.features(output), wanted)}
