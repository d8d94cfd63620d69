"""BiGAN's joint discriminator D(x, z) on image-latent pairs, in BigBiGAN's form with unary scores (Donahue &
Simonyan, "Large Scale Adversarial Representation Learning", NeurIPS 2019, section 3 and figure 2; BiGAN: Donahue,
Krähenbühl, Darrell, "Adversarial Feature Learning", ICLR 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.heads.mlp import MLP


class JointDiscriminator(nn.Module):
    """F, an image ``trunk`` giving ``trunk_dim`` features; H, an MLP on the latent (2 linear layers of
    ``hidden`` units, ReLU after each); J, an MLP on the concatenation [F(x), H(z)] (3 linear layers, ReLU between)
    giving the joint score s_xz. With ``unary`` (BigBiGAN) also s_x = theta_x . F(x) and s_z = theta_z . H(z), the
    scores that make F alone a GAN discriminator and H alone a test of the latents against the prior.

    ``forward(x, z)`` returns the scores ``(B, 3)`` as [s_xz, s_x, s_z], or ``(B, 1)`` without ``unary``, in
    float32. No normalisation layer: the method applies spectral normalisation.
    """

    def __init__(self, trunk: nn.Module, trunk_dim: int, z_dim: int, hidden: int = 512, unary: bool = True) -> None:
        super().__init__()
        self.trunk = trunk
        self.latent = nn.Sequential(MLP(z_dim, hidden, hidden, num_layers=2, hidden_bn=False), nn.ReLU())
        self.joint = MLP(trunk_dim + hidden, hidden, 1, num_layers=3, hidden_bn=False)
        self.unary = nn.ModuleList([nn.Linear(trunk_dim, 1), nn.Linear(hidden, 1)]) if unary else None

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        fx, hz = self.trunk(x), self.latent(z)
        scores = [self.joint(torch.cat([fx, hz], 1))]
        if self.unary is not None:
            scores += [self.unary[0](fx), self.unary[1](hz)]
        return torch.cat([s.float() for s in scores], 1)
