"""The denoising autoencoder (Vincent, Larochelle, Lajoie, Bengio, Manzagol, "Stacked Denoising Autoencoders:
Learning Useful Representations in a Deep Network with a Local Denoising Criterion", JMLR 2010) with a convolutional
encoder: reconstruct the clean image from a corrupted one."""

from __future__ import annotations

import torch

from selfsup.data.ops.noise import NOISES, corrupt, sample_noise
from selfsup.data.views import for_this_rank
from selfsup.errors import UserError
from selfsup.losses.pixel import reconstruction_error
from selfsup.methods.reconstruction import Reconstruction


class DenoisingAutoencoder(Reconstruction):
    """The augmented image (crops and flips, in [0, 1]) is corrupted by ``noise``: ``masking`` sets every pixel
    (all its channels) to 0 with probability ``mask_ratio`` (default 0.25: within the paper's masking levels of
    10-40%, and on digits it trained better features than 0.5, measured), or ``gaussian`` adds N(0, ``sigma``^2)
    noise to every value (default 0.2 on [0, 1] images, within the paper's 0.05-0.5) and clamps to [0, 1]; the
    noise is drawn per sample for the global batch. The backbone encodes the corrupted image
    (ImageNet-normalised); a pixel decoder on its last feature map reconstructs the clean image. Loss: the mean
    squared error in [0, 1] space (the paper's squared reconstruction error for real-valued inputs), where the
    target and the corruption live, every channel weighted alike. The paper's corruption is applied to the input of
    each layer of a stack trained greedily; here one convolutional encoder is trained end to end."""

    name = "dae"
    paper = ("Vincent, Larochelle, Lajoie, Bengio, Manzagol, Stacked Denoising Autoencoders: Learning Useful "
             "Representations in a Deep Network with a Local Denoising Criterion, JMLR 2010")

    def __init__(self, *args, noise: str = "masking", mask_ratio: float = 0.25, sigma: float = 0.2,
                 **kwargs) -> None:
        if noise not in NOISES:
            raise UserError(f"dae: noise must be one of {', '.join(NOISES)}, got '{noise}'")
        if not 0.0 < mask_ratio < 1.0 or not sigma > 0.0:
            raise UserError(f"dae: mask_ratio must lie in (0, 1) and sigma be positive, got {mask_ratio} and {sigma}")
        super().__init__(*args, **kwargs)
        self.noise, self.level = noise, sigma if noise == "gaussian" else mask_ratio
        self.input_title = (f"Gaussian noise, sigma {sigma:g}" if noise == "gaussian"
                            else f"{mask_ratio:.0%} of the pixels masked")

    def corrupt(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = tuple(clean.shape[1:])
        noise = for_this_rank(lambda n: sample_noise(self.noise, n, shape, self.level, generator, clean.device),
                              len(clean))
        return corrupt(self.noise, clean, noise)

    def objective(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reconstruction_error(output, target, "l2")
