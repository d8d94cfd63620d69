"""The encoder alone, loadable without selfsup: a torchvision / timm state dict, or an ONNX graph.

Our ResNet wraps the torchvision model as ``.net`` with ``fc = nn.Identity()``, so its state dict is
torchvision's without the ``net.`` prefix and without ``fc``; timm's resnet18/50 use the same names.
The CIFAR stem (3x3 ``conv1``, no max-pool) must be set on the loading side; the ImageNet stem needs nothing.
A ``timm:NAME`` backbone holds the timm model as ``.net`` too. An encoder that transforms its input first
(colourisation's L channel, DeepCluster's Sobel filter) exports as ONNX only: the graph keeps the transform.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from selfsup.backbones.inputs import InputEncoder
from selfsup.backbones.resnet import ResNet
from selfsup.backbones.timm_backbone import TimmBackbone
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.errors import UserError

FORMATS = ("torchvision", "timm", "onnx")


def state_dict_for(backbone: nn.Module, fmt: str = "torchvision") -> dict[str, torch.Tensor]:
    """The torchvision (= timm) state dict of one of our ResNets, or the timm state dict of a ``timm:`` backbone,
    classifier left out."""
    if not (isinstance(backbone, ResNet) or (fmt == "timm" and isinstance(backbone, TimmBackbone))):
        what = "encoder (its input is transformed first)" if isinstance(backbone, InputEncoder) else \
            f"{type(backbone).__name__} backbone"
        raise UserError(f"the {what} has no {fmt} equivalent; export it as onnx (that works for every encoder)")
    return {k.removeprefix("net."): v.detach().cpu() for k, v in backbone.state_dict().items()}


def _loading_code(backbone: nn.Module, fmt: str, out: str | Path) -> str:
    """Python that rebuilds the architecture without selfsup and loads the exported weights."""
    if isinstance(backbone, TimmBackbone):
        args = "".join(f", {k}={v!r}" for k, v in backbone.create_kwargs.items())
        return (f'import torch, timm\nmodel = timm.create_model("{backbone.model_name}"{args})\n'
                f'model.load_state_dict(torch.load("{out}"))\nmodel.eval()\nfeatures = model(x)\n')
    build = f"torchvision.models.{backbone.arch}()" if fmt == "torchvision" else f'timm.create_model("{backbone.arch}")'
    channels = backbone.in_channels
    stem = (f"model.conv1 = nn.Conv2d({channels}, 64, 3, 1, 1, bias=False)\nmodel.maxpool = nn.Identity()\n"
            if backbone.stem == "cifar" else
            f"model.conv1 = nn.Conv2d({channels}, 64, 7, 2, 3, bias=False)\n" if channels != 3 else "")
    return (f"import torch, {fmt}\nfrom torch import nn\nmodel = {build}\nmodel.fc = nn.Identity()\n{stem}"
            f'model.load_state_dict(torch.load("{out}"))\nmodel.eval()\nfeatures = model(x)\n')


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


def preprocessing_code(image_size: int, numpy: bool = False) -> str:
    """Python that turns image files into the input ``x`` an exported encoder expects, as selfsup decodes a
    folder (:func:`selfsup.data.stream.decode_square` without JPEG draft mode): 8-bit RGB, shorter side resized
    to ``image_size`` by Pillow's bilinear filter (antialiased: it widens with the scale when shrinking), the
    longer side to the nearest pixel, then the centre crop with its offset rounded down; scaled to [0, 1] and
    normalised with the ImageNet mean and std. No blank lines (it prints as one block)."""
    s = image_size
    return ("import torch\nfrom PIL import Image\nfrom torchvision import transforms\n"
            f"def square(im, size={s}):  # as selfsup decodes: shorter side to size, then the centre crop\n"
            '    im = im.convert("RGB")\n'
            "    scale = size / min(im.size)\n"
            "    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), "
            "Image.BILINEAR)\n"
            "    left, top = (im.width - size) // 2, (im.height - size) // 2\n"
            "    return im.crop((left, top, left + size, top + size))\n"
            "preprocess = transforms.Compose([transforms.Lambda(square), transforms.ToTensor(),\n"
            f"                                 transforms.Normalize({list(IMAGENET_MEAN)}, {list(IMAGENET_STD)})])\n"
            f"x = torch.stack([preprocess(Image.open(p)) for p in paths]){'.numpy()' if numpy else ''}\n")


def export(backbone: nn.Module, fmt: str, out: str | Path, image_size: int) -> str:
    """Write ``backbone`` to ``out`` as ``fmt`` (torchvision | timm | onnx); returns how to feed and load it:
    the preprocessing (:func:`preprocessing_code`), then the loading code, each a block of its own."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        export_onnx(backbone, out, image_size)
        code = (f'import onnxruntime\nsession = onnxruntime.InferenceSession("{out}")\n'
                f'features = session.run(None, {{"images": x}})[0]  # x: float32 numpy array\n')
    else:
        torch.save(state_dict_for(backbone, fmt), out)
        code = _loading_code(backbone, fmt, out)
    s = image_size
    return (f"wrote {out}. Without selfsup, make the input x (B, 3, {s}, {s}) from image files (paths) as selfsup "
            "resizes them "
            f"(shorter side to {s} px with Pillow's antialiased bilinear filter, then the centre {s} x {s} crop), "
            f"scaled to [0, 1] and normalised with mean {IMAGENET_MEAN} and std {IMAGENET_STD}:\n\n"
            f"{preprocessing_code(s, numpy=fmt == 'onnx')}\nthen load the encoder and embed x:\n\n{code}\n"
            f"(torchvision's Resize({s}) + CenterCrop({s}) is not the same: it rounds the longer side down and "
            f"the crop offset to the nearest pixel, which moves some images by a pixel)")
