"""Any timm model as a backbone (``timm:NAME``; timm is an optional dependency: ``pip install timm``).

The timm model is held as ``.net``, as our ResNet holds torchvision's: the state dict is timm's own with a
``net.`` prefix, so ``timm.create_model(model_name, **create_kwargs).load_state_dict(...)`` takes it after
stripping that prefix. The contract maps onto timm's feature API (Wightman, "PyTorch Image Models", 2019):
``forward`` is the model's pooled output (``num_classes=0``: no classifier), ``forward_features`` and
``forward_head`` are timm's own (for transformers the features are tokens ``(B, N, C)``, not a map),
``forward_stages`` is ``forward_intermediates`` where the model has it (one map per ``feature_info`` entry,
named after its module), else the features alone. ``feature_map`` is the features when they are a map (NHWC
ones, e.g. Swin's, permuted to NCHW; for some convnets, e.g. EfficientNet, the map after the head convolution,
which the last stage precedes), and for token models the last intermediate with the final norm (a ViT's patch
tokens after its final norm, as a grid).
"""

from __future__ import annotations

import difflib

from torch import Tensor

from selfsup.backbones.base import Backbone, StageInfo
from selfsup.errors import UserError


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm: backbones need the timm package: pip install timm") from None
    return timm


class TimmBackbone(Backbone):
    """A randomly initialised timm model without classifier; ``image_size`` is passed to models that take it."""

    def __init__(self, model_name: str, image_size: int = 224, in_channels: int = 3) -> None:
        super().__init__()
        timm = _timm()
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
            raise UserError(f"unknown timm model '{model_name}'{hint}")
        kwargs = {"num_classes": 0, "in_chans": in_channels}
        try:
            try:
                net = timm.create_model(model_name, pretrained=False, img_size=image_size, **kwargs)
                kwargs["img_size"] = image_size
            except TypeError as e:  # convnets take no image size
                if "img_size" not in str(e):
                    raise
                net = timm.create_model(model_name, pretrained=False, **kwargs)
        except Exception as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"timm cannot build '{model_name}' for {in_channels}-channel {image_size} px images: "
                            f"{reason}") from e
        self.net, self.model_name, self.create_kwargs = net, model_name, kwargs
        self.in_channels = in_channels
        self.out_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        self._intermediates = hasattr(net, "forward_intermediates")
        self._tokens = False  # features (B, N, C) rather than a map; set by the first feature_map call
        info = net.feature_info if self._intermediates else net.feature_info[-1:]
        self.stage_info = [StageInfo(d["module"], int(d["num_chs"]), int(d["reduction"])) for d in info]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        if self._intermediates:
            return list(self.net.forward_intermediates(x, intermediates_only=True))
        return [self.net.forward_features(x)]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def forward_head(self, fmap: Tensor) -> Tensor:
        return self.net.forward_head(fmap)

    def feature_map(self, x: Tensor) -> Tensor:
        """The features when they are a map (NHWC ones permuted), else the last intermediate, normalised."""
        if not self._tokens:
            fmap = self.net.forward_features(x)
            if fmap.dim() == 4:
                return fmap.permute(0, 3, 1, 2) if getattr(self.net, "output_fmt", "NCHW") == "NHWC" else fmap
            self._tokens = True  # found out once: from now on straight to the intermediates
        if not self._intermediates:
            raise UserError(f"timm model '{self.model_name}' gives no spatial feature map (its features are tokens "
                            f"and it has no forward_intermediates)")
        return self.net.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
