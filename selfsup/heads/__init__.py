"""Modules put on top of a backbone and thrown away after pretraining: projection and prediction MLPs,
classifiers, and the spatial heads (decoders, tile concatenation, discriminator heads)."""

from selfsup.heads.mlp import MLP

__all__ = ["MLP"]
