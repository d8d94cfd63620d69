"""The backbone alone, loadable without selfsup: a torchvision / timm ResNet state dict, or an ONNX graph.

Our ResNet wraps the torchvision model as ``.net`` with ``fc = nn.Identity()``, so its state dict is
torchvision's without the ``net.`` prefix and without ``fc``; timm's resnet18/50 use the same names.
The CIFAR stem (3x3 ``conv1``, no max-pool) must be set on the loading side; the ImageNet stem needs nothing.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from selfsup.backbones.resnet import ResNet
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.errors import UserError

FORMATS = ("torchvision", "timm", "onnx")
CIFAR_STEM = "model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)\nmodel.maxpool = nn.Identity()\n"


def resnet_state_dict(backbone: nn.Module, fmt: str = "torchvision") -> dict[str, torch.Tensor]:
    """The torchvision (= timm) state dict of one of our ResNets, classifier left out."""
    if not isinstance(backbone, ResNet):
        raise UserError(f"the {type(backbone).__name__} backbone has no {fmt} equivalent; "
                        f"use --format onnx (it works for every backbone)")
    return {k.removeprefix("net."): v.detach().cpu() for k, v in backbone.state_dict().items()}


def export_onnx(backbone: nn.Module, out: str | Path, image_size: int) -> None:
    """An ONNX graph ``images (B, 3, S, S) -> features (B, D)`` with a dynamic batch axis."""
    try:
        import onnx
    except ImportError:
        raise UserError('ONNX export needs the onnx package: pip install "selfsup[export]"') from None
    model = copy.deepcopy(backbone).cpu().float().eval()
    with warnings.catch_warnings():  # the TorchScript-based exporter: needs no onnxscript, fast, exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(2, 3, image_size, image_size),), str(out), dynamo=False,
                          input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    onnx.checker.check_model(str(out))


def export(backbone: nn.Module, fmt: str, out: str | Path, image_size: int) -> str:
    """Write ``backbone`` to ``out`` as ``fmt`` (torchvision | timm | onnx); returns how to load and feed it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        export_onnx(backbone, out, image_size)
        code = (f'import onnxruntime\nsession = onnxruntime.InferenceSession("{out}")\n'
                f'features = session.run(None, {{"images": x}})[0]  # x: float32 numpy array\n')
    else:
        torch.save(resnet_state_dict(backbone, fmt), out)
        build = (f"torchvision.models.{backbone.arch}()" if fmt == "torchvision"
                 else f'timm.create_model("{backbone.arch}")')
        code = (f"import torch, {fmt}\nfrom torch import nn\nmodel = {build}\nmodel.fc = nn.Identity()\n"
                f"{CIFAR_STEM if backbone.stem == 'cifar' else ''}"
                f'model.load_state_dict(torch.load("{out}"))\nmodel.eval()\nfeatures = model(x)\n')
    return (f"wrote {out}; load it without selfsup:\n\n{code}\n"
            f"x: RGB images (B, 3, {image_size}, {image_size}) scaled to [0, 1], then normalised with "
            f"mean {IMAGENET_MEAN} and std {IMAGENET_STD}")
