"""Backbones: the stage contract (stage_info vs the maps), pooling, input channels, width, stems, names, any module."""

import functools
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from selfsup.backbones import build_backbone, feature_dim, feature_map, stage_channels, stage_names, stage_outputs
from selfsup.backbones.base import Backbone
from selfsup.errors import UserError

VIT = "timm:vit_tiny_patch16_224"
#: (name, image size it is built for) of every backbone under test; inputs are smaller where the net allows
CASES = [("small", 32), ("resnet18", 32), ("alexnet", 32), ("alexnet", 64), ("nin", 32), ("sngan", 32),
         ("timm:resnet18", 32), (VIT, 32)]
WIDTHS = ["small", "alexnet", "nin", "sngan"]  # the trunks with a width multiplier


def _mean(f):
    return f.mean(dim=(2, 3))


#: the pooling each trunk's architecture prescribes, written out independently of the implementations
REFERENCE_POOL = {
    "small": _mean, "resnet18": _mean, "nin": _mean, "timm:resnet18": _mean,
    "alexnet": lambda f: F.max_pool2d(f, 3, 2, padding=1).mean(dim=(2, 3)),  # pool5, then global average
    "sngan": lambda f: f.sum(dim=(2, 3)),  # SNGAN: global sum pooling
    VIT: lambda tokens: tokens[:, 0],  # ViT: the class token after the final norm
}


def _skip_without_timm(name: str) -> None:
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed (pip install timm)")


@functools.cache
def _built(name: str, size: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, size, in_channels=in_channels, width=width).eval()


def _input(name: str, size: int, batch: int = 2, channels: int = 3) -> torch.Tensor:
    """Random images, 16 px where the backbone takes any size (fast; strides still show), else ``size``."""
    side = size if name == VIT else min(size, 16)
    return torch.randn(batch, channels, side, side)


def _check_stages(net: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """Every map has its stage's channels and the input size over its stride (floor or ceil)."""
    with torch.no_grad():
        maps = net.forward_stages(x)
    assert len(maps) == len(net.stage_info) == len(stage_names(net))
    assert stage_names(net) == [s.name for s in net.stage_info]
    assert stage_channels(net) == [m.shape[1] for m in maps]
    for fmap, info in zip(maps, net.stage_info):
        assert fmap.shape[0] == x.shape[0] and fmap.shape[1] == info.channels, info
        for got, size in zip(fmap.shape[2:], x.shape[2:]):
            assert got in (size // info.stride, -(-size // info.stride)), (info, tuple(fmap.shape))
    return maps


@pytest.mark.parametrize("name, size", CASES)
def test_stage_maps_agree_with_stage_info(name, size):
    _skip_without_timm(name)
    net = _built(name, size)
    maps = _check_stages(net, _input(name, size))
    assert net.in_channels == 3 and len(set(stage_names(net))) == len(maps)


@pytest.mark.parametrize("name, size", CASES)
def test_forward_is_the_pooled_last_map(name, size):
    _skip_without_timm(name)
    net, x = _built(name, size), _input(name, size, batch=3)
    with torch.no_grad():
        feats, out, fmap = net.forward_features(x), net(x), feature_map(net, x)
        last = net.forward_stages(x)[-1]
    assert out.shape == (3, net.out_dim) and feature_dim(net, x.shape[-1]) == net.out_dim
    torch.testing.assert_close(out, REFERENCE_POOL[name](feats), rtol=1e-5, atol=1e-5)
    assert fmap.dim() == 4 and fmap.shape[:2] == (3, net.stage_info[-1].channels)
    if name == VIT:  # a ViT's features are tokens (class token first); its map is the patch tokens' grid
        side = x.shape[-1] // 16
        grid = feats[:, 1:].transpose(1, 2).reshape(3, -1, side, side)
        torch.testing.assert_close(fmap, grid, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(feats, last, rtol=0, atol=0)
        torch.testing.assert_close(fmap, feats, rtol=0, atol=0)


@pytest.mark.parametrize("name, size", [c for c in CASES if c[0] != VIT] + [("resnet18", 64)])
def test_one_input_channel(name, size):
    _skip_without_timm(name)
    net, x = _built(name, size, in_channels=1), _input(name, size, channels=1)
    assert net.in_channels == 1 and feature_dim(net, x.shape[-1]) == net.out_dim == _built(name, size).out_dim
    _check_stages(net, x)
    with pytest.raises(RuntimeError):
        net(_input(name, size))


@pytest.mark.parametrize("name", WIDTHS)
def test_half_width_halves_every_stage(name):
    full, half = _built(name, 32), _built(name, 32, width=0.5)
    assert stage_channels(half) == [c // 2 for c in stage_channels(full)]
    assert half.out_dim == full.out_dim // 2
    _check_stages(half, _input(name, 32))


def _conv_bn(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + 2 * cout  # bias-free conv + BN affine


def test_parameter_counts_follow_the_architecture_tables():
    nin = (_conv_bn(5, 3, 192) + _conv_bn(1, 192, 160) + _conv_bn(1, 160, 96)
           + _conv_bn(5, 96, 192) + 2 * _conv_bn(1, 192, 192) + 2 * (_conv_bn(3, 192, 192) + 2 * _conv_bn(1, 192, 192)))
    conv, conv1 = 9 * 128 * 128 + 128, 128 * 128 + 128  # SNGAN: biased convs, no normalisation
    sngan = (9 * 3 * 128 + 128) + conv + (3 * 128 + 128) + (2 * conv + conv1) + 2 * (2 * conv)
    alexnet = [_conv_bn(k, 3, 64) + _conv_bn(5, 64, 192) + _conv_bn(3, 192, 384) + _conv_bn(3, 384, 256)
               + _conv_bn(3, 256, 256) for k in (3, 5, 11)]
    counts = {(name, size): sum(p.numel() for p in build_backbone(name, size).parameters())
              for name, size in [("nin", 32), ("sngan", 32), ("alexnet", 32), ("alexnet", 96), ("alexnet", 224)]}
    print(counts)
    assert list(counts.values()) == [nin, sngan, *alexnet]


def test_alexnet_stem_follows_the_image_size():
    assert [build_backbone("alexnet", s).stem for s in (32, 63, 64, 96, 127, 128, 224)] == \
        ["cifar"] * 2 + ["stl"] * 3 + ["imagenet"] * 2
    net = build_backbone("alexnet", 32, stem="imagenet").eval()
    assert net.stage_info[0].stride == 4
    _check_stages(net, torch.randn(1, 3, 64, 64))


def test_the_same_seed_gives_the_same_weights():
    for name in ("alexnet", "nin", "sngan"):
        a, b = (_built.__wrapped__(name, 32).state_dict() for _ in range(2))
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_spectral_norm_applied_afterwards_trains():
    net = build_backbone("sngan", 16, width=0.5).train()
    plain = build_backbone("sngan", 16, width=0.5)
    plain.load_state_dict(net.state_dict())
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 10  # 2 + shortcut per downsampling block, 2 per other block
    for m in convs:
        nn.utils.parametrizations.spectral_norm(m)
    x = torch.randn(4, 3, 16, 16)
    for _ in range(3):  # power iterations run in training forwards
        out = net(x)
    out.square().mean().backward()
    grads = [m.parametrizations.weight.original.grad for m in convs]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        assert not torch.allclose(net(x), plain(x))  # the normalised weights are the ones used
        sigma = [torch.linalg.svdvals(m.weight.flatten(1))[0] for m in convs]
    assert all(0.95 < float(s) < 1.1 for s in sigma), sigma  # power iteration: close to 1


def test_unknown_names_and_options_are_user_errors(monkeypatch):
    cases = [("resnet19", {}, "unknown backbone 'resnet19'"), ("resnet18", {"width": 2.0}, "only width 1"),
             ("nin", {"stem": "cifar"}, "no stem"), ("alexnet", {"stem": "tiny"}, "unknown AlexNet stem"),
             ("resnet18", {"stem": "tiny"}, "unknown ResNet stem"), ("small", {"in_channels": 0}, "in_channels"),
             ("small", {"width": 0.0}, "width must be positive")]
    for name, kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            build_backbone(name, **kwargs)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(UserError, match="pip install timm"):
        build_backbone("timm:resnet18")


def test_unknown_timm_model_is_named_with_close_matches():
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    with pytest.raises(UserError, match=r"unknown timm model 'resnet1800'; did you mean .*resnet18"):
        build_backbone("timm:resnet1800")
    with pytest.raises(UserError, match="only width 1"):
        build_backbone("timm:resnet18", width=0.5)


def test_timm_state_dict_is_timms_own():
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    net = _built("timm:resnet18", 32)
    model = timm.create_model(net.model_name, **net.create_kwargs)
    model.load_state_dict({k.removeprefix("net."): v for k, v in net.state_dict().items()})  # strict
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), net(x))
        assert feature_map(model, x).shape == (2, 512, 1, 1)  # a foreign module with a spatial forward_features


def test_small_convnet_matches_the_protocol():
    net = build_backbone("small")
    assert sum(p.numel() for p in net.parameters()) == 388_896  # 0.39 M parameters
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 256)
    assert [t.shape[1:] for t in stage_outputs(net, x)] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]
    # checkpoints name the parameters so: conv and BN of four blocks
    assert [k for k in net.state_dict() if k.endswith("weight")] == \
        [f"blocks.{i}.{j}.weight" for i in range(4) for j in (0, 1)]


def test_resnet_stems():
    cifar, imagenet = build_backbone("resnet18", 32), build_backbone("resnet18", 224)
    assert cifar.stem == "cifar" and imagenet.stem == "imagenet"
    assert stage_outputs(cifar, torch.randn(1, 3, 32, 32))[-1].shape == (1, 512, 4, 4)
    assert stage_outputs(imagenet, torch.randn(1, 3, 64, 64))[-1].shape == (1, 512, 2, 2)
    r50 = build_backbone("resnet50", 32).eval()
    assert feature_dim(r50, 8) == 2048
    assert stage_channels(r50) == [64, 256, 512, 1024, 2048] and [s.stride for s in r50.stage_info] == [1, 1, 2, 4, 8]
    _check_stages(r50, torch.randn(2, 3, 8, 8))  # feature_dim's shape: no new kernels to set up
    assert stage_names(cifar) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [s.stride for s in imagenet.stage_info] == [4, 4, 8, 16, 32]
    with torch.device("meta"):  # names only: no weights drawn
        tv = [k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")]
    assert [k.removeprefix("net.") for k in imagenet.state_dict()] == tv  # what export hands to torchvision


def test_any_module_is_a_backbone_and_its_size_is_inferred():
    net = nn.Sequential(nn.Conv2d(3, 7, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.train()
    assert feature_dim(net, 16) == 7 and net.training
    assert stage_names(net) == ["output"] and stage_outputs(net, torch.randn(1, 3, 8, 8))[0].shape == (1, 7)
    with pytest.raises(UserError, match="Sequential backbone gives no spatial feature map"):
        feature_map(net, torch.randn(1, 3, 8, 8))
    with pytest.raises(UserError, match="Sequential backbone does not describe its stages"):
        stage_channels(net)
