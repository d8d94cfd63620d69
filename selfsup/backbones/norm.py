"""Layer norm in place of batch norm (Hénaff et al., "Data-Efficient Image Recognition with Contrastive Predictive
Coding", ICML 2020): CPC v2 found that batch statistics, shared by the patches of a batch, let a large trunk
bypass the context network's receptive field, and replaced every batch norm of the trunk by layer norm."""

from __future__ import annotations

from torch import nn

from selfsup.errors import UserError


def layer_norm_trunk(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``module`` (and ``module`` itself, if it is one) replaced, in place, by
    ``GroupNorm(1, C)``: layer norm over each sample's channels and positions, with the batch norm's ``eps`` and,
    where it has them, its scale and shift (values and ``requires_grad``). Returns the converted module. Other
    batch norms (``BatchNorm1d``, timm's ``BatchNormAct2d``, which also holds an activation) are refused."""
    if type(module) is nn.BatchNorm2d:
        new = nn.GroupNorm(1, module.num_features, module.eps, module.affine)
        if module.affine:
            for mine, theirs in ((new.weight, module.weight), (new.bias, module.bias)):
                mine.data.copy_(theirs.data)
                mine.requires_grad_(theirs.requires_grad)
        return new.train(module.training)
    if isinstance(module, nn.modules.batchnorm._NormBase) and not isinstance(module, nn.GroupNorm):
        raise UserError(f"layer norm can replace BatchNorm2d only, not {type(module).__name__} (use norm=batch)")
    for name, child in module.named_children():
        setattr(module, name, layer_norm_trunk(child))
    return module
