"""A frozen network of another run that a method learns from: BoWNet's teacher, super-resolution's perceptual
network."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


def load_teacher(source: str | Path) -> tuple[nn.Module, int]:
    """The evaluated encoder of a run of this project (its folder or checkpoint) and the image size it was
    trained at; any method's run can teach, a BoWNet one included (the student becomes the next teacher)."""
    from selfsup.engine.build import method_from_checkpoint  # here: selfsup.engine imports the methods

    method, ckpt = method_from_checkpoint(source)
    return freeze(method.encoder()).eval(), int(ckpt["image_size"])


def freeze(module: nn.Module) -> nn.Module:
    """``module`` with no trainable parameter, in place: every (affine, tracking) BatchNorm2d becomes a
    FrozenBatchNorm2d with its statistics (the same function as the layer in eval mode, and not a batch-norm
    layer that a conversion to global batch norm would replace with trainable copies)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and child.affine and child.track_running_stats:
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict(child.state_dict())  # drops num_batches_tracked
            setattr(module, name, frozen)
        else:
            freeze(child)
    return module.requires_grad_(False)
