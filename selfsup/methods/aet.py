"""AET: predict the transformation between an image and its warped copy (Zhang, Qi, Wang, Luo, "AET vs. AED:
Unsupervised Representation Learning by Auto-Encoding Transformations rather than Data", CVPR 2019)."""

from __future__ import annotations

import torch

from selfsup.data.ops.warp import (
    affine_matrices,
    homographies,
    sample_affine,
    sample_corners,
    transform_parameters,
    warp,
)
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.losses.equivariance import transform_regression_loss
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic

#: the paper's scale ranges per family of transforms
SCALES = {"affine": (0.7, 1.3), "projective": (0.8, 1.2)}


class AET(Method):
    """Every augmented image ``x`` is warped by a random transform ``t`` drawn per sample, ``t(x)`` (bilinear, 0
    outside the image; :mod:`selfsup.data.ops.warp`): ``transform="affine"`` (the paper's: rotation uniform on
    [-180, 180] degrees, translation up to 0.2 of the size, scale on [0.7, 1.3], shear on [-30, 30] degrees) or
    ``"projective"`` (scale on [0.8, 1.2], a rotation by a multiple of 90 degrees, then every corner moved by up
    to ``shift`` = 0.125 of the size). The backbone runs once over x and t(x), the two feature vectors are
    concatenated, and an MLP regresses the transform's matrix in normalised image coordinates: its 6 affine
    entries or its 8 projective ones. The loss is the paper's ``0.5 ||M(t) - M(t_hat)||^2``. (The authors' code
    regresses (cos, sin, translation, scale, shear) rescaled to [-1, 1] for affine transforms, and the 8 PIL
    coefficients in pixels for projective ones; the matrix entries here are the paper's loss and of order one.)
    Light augmentation before the warp (crops and flips)."""

    name = "aet"
    paper = ("Zhang, Qi, Wang, Luo, AET vs. AED: Unsupervised Representation Learning by Auto-Encoding "
             "Transformations rather than Data, CVPR 2019")
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}
    #: Adam (3e-4 at batch 128): SGD at the house rate diverges on the small convnet (loss 1.4 -> 291 on digits);
    #: the paper's SGD 0.1 is for its NIN on CIFAR-10 (set it with --optimizer sgd --lr 0.1)
    optimizer, base_lr, weight_decay = "adam", 6e-4, 0.0

    def __init__(self, *args, transform: str = "affine", head_hidden_dim: int = 512, degrees: float = 180.0,
                 translate: float = 0.2, shear: float = 30.0, shift: float = 0.125,
                 scale: tuple[float, float] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if transform not in SCALES:
            raise UserError(f"aet: transform must be 'affine' or 'projective', got '{transform}'")
        self.scale = tuple(scale) if scale is not None else SCALES[transform]
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise UserError(f"aet: scale must be a range (low, high) with 0 < low <= high, got {scale}")
        if not 0 <= shear < 90 or translate < 0 or shift < 0:
            raise UserError(f"aet: need 0 <= shear < 90 degrees and translate, shift >= 0; got shear={shear}, "
                            f"translate={translate}, shift={shift}")
        self.transform, self.degrees, self.translate, self.shear, self.shift = (transform, degrees, translate, shear,
                                                                                 shift)
        outputs = 8 if transform == "projective" else 6
        self.regressor = MLP(2 * self.feat_dim, head_hidden_dim, outputs) if head_hidden_dim else \
            torch.nn.Linear(2 * self.feat_dim, outputs)

    def _matrices(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """``n`` random transforms ``(n, 3, 3)`` (float64) of the configured family."""
        if self.transform == "projective":
            return homographies(sample_corners(n, self.shift, self.scale, generator, device))
        return affine_matrices(sample_affine(n, self.degrees, self.translate, self.scale, self.shear, generator,
                                             device))

    def _pair(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The augmented images x, their warped copies t(x) (float, [0, 1]) and the targets (B, 6 or 8)."""
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        matrices = for_this_rank(lambda n: self._matrices(n, batch.generator, x.device), len(x))
        target = transform_parameters(matrices, self.transform == "projective").to(x.dtype)
        return x, warp(x, matrices), target

    def training_step(self, batch: Batch) -> torch.Tensor:
        x, warped, target = self._pair(batch)
        feats = self.backbone(prepare(torch.cat([x, warped])))
        first, second = feats.chunk(2)
        return transform_regression_loss(self.regressor(torch.cat([first, second], 1)), target)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, warped, target = self._pair(batch)
        captions = [" ".join(f"{v:.2f}" for v in row) for row in target.tolist()]
        return [Panel(f"x and t(x); the target: the {self.transform} matrix M(t) ({target.shape[1]} entries, "
                      "row by row)", mosaic(torch.stack([x, warped], 1), 2), captions)]
