"""Sample quality of a generative run: FID between its samples and real images in the features of a network the
user names (Heusel et al., NeurIPS 2017). Only Inception-v3 features give numbers comparable to published FIDs;
the features of a network trained here give a number to compare runs of this project with, and say so."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selfsup.data.sources import ImageSet
from selfsup.errors import UserError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.fid import fid


def feature_network(spec: str) -> tuple[nn.Module, int, str]:
    """The network whose features FID compares, the image size it takes, and a label for the number:
    ``inception:PATH`` (torchvision's Inception-v3 architecture with the weights in PATH, 2048-d pool features at
    299 px) or a run folder / checkpoint of this project (its evaluated encoder at its training size)."""
    if spec.startswith("inception:"):
        import torchvision

        path = Path(spec.removeprefix("inception:"))
        if not path.is_file():
            raise UserError(f"no Inception weights at '{path}'")
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")})
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatched file is the same user error
            raise UserError(f"'{path}' does not hold torchvision Inception-v3 weights ({type(e).__name__})") from None
        net.fc = nn.Identity()
        return net, 299, "Inception-v3 FID"
    from selfsup.engine.build import method_from_checkpoint

    method, ckpt = method_from_checkpoint(spec)
    return method.encoder(), ckpt["image_size"], f"FID in the features of {Path(spec).name} (not Inception)"


def sample_fid(generator: nn.Module, real: ImageSet, features: nn.Module, image_size: int, samples: int = 10_000,
               device: torch.device | str = "cpu", seed: int = 0) -> float:
    """FID between ``samples`` images of ``generator`` (a method with ``sample(n, seed)``, e.g. SSGAN) and as many
    real images (the first ``samples`` of ``real``), both resized to ``image_size`` for ``features``."""
    if not hasattr(generator, "sample"):
        raise UserError(f"method {getattr(generator, 'name', '?')} generates no images; FID needs a generative run")
    n = min(samples, len(real))
    if n < 2:
        raise UserError("FID needs at least 2 real images")
    fake = generator.to(device).sample(n, seed)
    real_feats, fake_feats = (extract_features(features, x, image_size, device=device)
                              for x in (real.images[:n], fake))
    return fid(real_feats, fake_feats)


def fid_table(checkpoints: list[str], data: str, features: str, samples: int, device: torch.device,
              download: bool = False) -> str:
    """``selfsup eval fid``: one row per generative run, its FID against the test images of ``data``."""
    from selfsup.data import load_data
    from selfsup.engine.build import method_from_checkpoint
    from selfsup.evaluate.report import format_table

    net, size, label = feature_network(features)
    loaded = load_data(data, size, download)
    real = loaded.test or loaded.train or loaded.pretrain
    rows = []
    for path in checkpoints:
        method, ckpt = method_from_checkpoint(path)
        rows.append([f"{ckpt['config']['method']} ({Path(path).name})",
                     f"{sample_fid(method, real, net.to(device), size, samples, device):.2f}"])
    return format_table(["generator", label], rows)
