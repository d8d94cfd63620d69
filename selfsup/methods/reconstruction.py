"""What the image-to-image pretexts share (the denoising autoencoder, super-resolution): the augmented image is
corrupted, the backbone encodes the corrupted image, and a :class:`~selfsup.heads.decoder.PixelDecoder` on its last
feature map reconstructs the clean image; ``views`` and ``outputs`` build their inputs with the training step's
own code."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from selfsup.backbones import dummy_pass, feature_map
from selfsup.data.ops.base import resize
from selfsup.data.views import augmented, prepare
from selfsup.errors import UserError
from selfsup.heads.decoder import PixelDecoder
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel


def pixel_decoder(backbone: nn.Module, in_channels: int, image_size: int, out_channels: int,
                  hidden: int) -> PixelDecoder:
    """A :class:`PixelDecoder` from the backbone's last feature map to ``out_channels`` images of ``image_size`` px,
    its input channels and scale measured by one pass of a dummy batch in eval mode (any backbone with a map)."""
    fmap = dummy_pass(backbone, in_channels, image_size, feature_map)
    return PixelDecoder(fmap.shape[1], out_channels, image_size / fmap.shape[-1], hidden)


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The peak signal-to-noise ratio ``(B,)`` in dB of images in [0, 1] against a reference: ``-10 log10 MSE``."""
    mse = (images.float() - reference.float()).square().flatten(1).mean(1)
    return -10.0 * mse.clamp_min(1e-10).log10()


def psnr_captions(images: torch.Tensor, reference: torch.Tensor) -> list[str]:
    return [f"PSNR {v:.1f} dB" for v in psnr(images, reference).tolist()]


class Reconstruction(Method):
    """Base class: subclasses say how the clean image becomes the input (:meth:`corrupt`, float [0, 1] in and out,
    ImageNet-normalised before the backbone) and what the reconstruction costs (:meth:`objective`). Crops and
    flips only: the target is the augmented image itself, which colour augmentation would not falsify, but the
    papers train on plain images. ``decoder_dim``: the channels of the decoder's first layer."""

    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}
    #: Adam at 1e-3 per 256 images, no weight decay: the usual setting of pixel regression (SGD at the default
    #: rates trains too, measured on digits)
    optimizer, base_lr, weight_decay = "adam", 1e-3, 0.0
    #: what the input row of ``views`` and ``outputs`` shows, after "what the network sees: "
    input_title: ClassVar[str] = "the corrupted image"

    def __init__(self, *args, decoder_dim: int = 256, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if decoder_dim < 1:
            raise UserError(f"{self.name}: decoder_dim must be at least 1, got {decoder_dim}")
        self.decoder = pixel_decoder(self.backbone, self.in_channels, self.image_size, 3, decoder_dim)

    def corrupt(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The network's input (float [0, 1], the clean images' shape) made from the clean images."""
        raise NotImplementedError

    def objective(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The loss of the decoder's ``output`` against the clean ``target`` (both ``(B, 3, H, W)``)."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's image (unbounded) from the backbone's map of the [0, 1] input ``x``, at ``image_size``."""
        return self.decoder(feature_map(self.backbone, prepare(x)), self.image_size)

    def _pair(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input and the clean target of a batch (the augmentation first, then the corruption)."""
        clean = augmented(batch.images, self.aug, self.image_size, batch.generator)
        return self.corrupt(clean, batch.generator), clean

    def training_step(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        x, clean = self._pair(batch)
        return self.objective(self.reconstruct(x), clean)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, clean = self._pair(batch)
        return [Panel(f"what the network sees: {self.input_title}", x, psnr_captions(x, clean)),
                Panel("what it must reconstruct: the clean image", clean)]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator) -> list[Panel]:
        """Rows of ``outputs.png`` under the test images (the clean targets): the network's input and its
        reconstruction clamped to [0, 1], each captioned with its PSNR against the clean image."""
        clean = resize(images, self.image_size)
        x = self.corrupt(clean, generator)
        y = self.reconstruct(x).float().clamp(0.0, 1.0)
        return [Panel(f"the network's input: {self.input_title}", x, psnr_captions(x, clean)),
                Panel("its reconstruction", y, psnr_captions(y, clean))]
