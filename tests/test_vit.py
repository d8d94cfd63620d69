"""Our ViT-Tiny: the stage contract, the class-token features, the patch-size rule, width, the parameter count, the
sin-cos positions and the attention against written-out references, and the token pieces MAE runs (ours, timm's)."""

import math

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone, feature_dim, feature_map, stage_channels, stage_names
from selfsup.backbones.vit import Block, ViT, default_patch_size, sincos_2d, token_encoder
from selfsup.errors import UserError


def _vit(size: int = 16, width: float = 0.25) -> ViT:
    torch.manual_seed(0)
    return build_backbone("vit-tiny", size, width=width).eval()


def _through(encoder, x: torch.Tensor) -> torch.Tensor:
    """Every token through the encoder's pieces: embedding, blocks, final norm."""
    prefix, patches = encoder.embed(x)
    h = torch.cat([prefix, patches], 1)
    for block in encoder.blocks:
        h = block(h)
    return encoder.norm(h)


def test_stages_are_the_patch_token_grids_after_every_third_block():
    net, x = _vit(32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        maps, tokens = net.forward_stages(x), net.forward_features(x)
    assert stage_names(net) == ["block3", "block6", "block9", "block12"]
    assert stage_channels(net) == [48] * 4 and [s.stride for s in net.stage_info] == [4] * 4
    assert [tuple(m.shape) for m in maps] == [(3, 48, 8, 8)] * 4
    assert tokens.shape == (3, 1 + 64, 48)
    # the last stage is the normalised patch tokens, row-major: token 1 + 8 r + c sits at (r, c)
    torch.testing.assert_close(maps[-1][:, :, 2, 5], tokens[:, 1 + 8 * 2 + 5], rtol=0, atol=0)
    torch.testing.assert_close(feature_map(net, x), maps[-1], rtol=0, atol=0)
    # an intermediate stage is the residual stream after its block (no final norm)
    with torch.no_grad():
        cls, patches = net.embed(x)
        h = torch.cat([cls, patches], 1)
        for block in net.blocks[:6]:
            h = block(h)
    torch.testing.assert_close(maps[1], h[:, 1:].transpose(1, 2).reshape(3, 48, 8, 8), rtol=1e-5, atol=1e-5)


def test_the_features_are_the_normalised_class_token():
    net, x = _vit(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out, _through(net, x)[:, 0], rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 48) and feature_dim(net, 16) == net.out_dim == 48
    ln = out - out.mean(1, keepdim=True)
    torch.testing.assert_close(ln.square().mean(1), torch.ones(2), rtol=1e-3, atol=1e-3)  # LayerNorm at init


def test_patch_size_follows_the_image_size_and_other_sizes_still_run():
    assert [default_patch_size(s) for s in (16, 32, 63, 64, 96, 159, 160, 224)] == [4, 4, 4, 8, 8, 8, 16, 16]
    assert [build_backbone("vit-tiny", s, width=0.25).stage_info[0].stride for s in (32, 96, 224)] == [4, 8, 16]
    net = _vit(32)
    with torch.no_grad():  # built for 32 px, fed 16 px: positions of a 4 x 4 grid
        maps = net.forward_stages(torch.randn(1, 3, 16, 16))
        cls, patches = net.embed(torch.zeros(1, 3, 16, 16))
    assert maps[-1].shape == (1, 48, 4, 4)
    bias = net.patch_embed.bias.view(1, 1, -1)
    torch.testing.assert_close(patches - bias, sincos_2d(48, 4, 4).unsqueeze(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cls, net.cls_token)  # the class token's position embedding is zero


@pytest.mark.parametrize("width, dim", [(1.0, 192), (0.5, 96), (0.25, 48), (0.1, 24), (0.01, 12)])
def test_width_scales_the_token_width_to_a_multiple_of_twelve(width, dim):
    net = build_backbone("vit-tiny", 16, width=width)
    assert net.out_dim == dim and stage_channels(net) == [dim] * 4 and len(net.blocks) == 12


def _param_count(dim: int, patch: int, channels: int = 3, depth: int = 12) -> int:
    norms, attention = 2 * 2 * dim, (3 * dim * dim + 3 * dim) + (dim * dim + dim)  # qkv, projection
    mlp = (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim)
    block = norms + attention + mlp
    return patch * patch * channels * dim + dim + dim + depth * block + 2 * dim  # patches, class token, blocks, norm


def test_parameter_count_is_vit_tinys():
    for size, patch in ((32, 4), (224, 16)):
        assert sum(p.numel() for p in build_backbone("vit-tiny", size).parameters()) == _param_count(192, patch)
    one = build_backbone("vit-tiny", 32, in_channels=1)
    assert sum(p.numel() for p in one.parameters()) == _param_count(192, 4, channels=1)
    assert one(torch.randn(1, 1, 32, 32)).shape == (1, 192)


def test_sincos_positions_match_the_formula():
    dim, h, w = 16, 3, 5
    emb, q = sincos_2d(dim, h, w), dim // 4
    for r in range(h):
        for c in range(w):
            for k in range(q):
                omega = 1.0 / 10000 ** (k / q)
                expected = [math.sin(r * omega), math.cos(r * omega), math.sin(c * omega), math.cos(c * omega)]
                got = [float(emb[r * w + c, k + i * q]) for i in range(4)]
                assert got == pytest.approx(expected, abs=1e-6)
    with pytest.raises(UserError, match="divisible by 4"):
        sincos_2d(18, 2, 2)


def test_a_block_is_pre_norm_multi_head_attention_then_mlp():
    torch.manual_seed(0)
    block, x = Block(12, 3).double(), torch.randn(2, 5, 12, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        y = block.norm1(x)
        q, k, v = block.qkv(y).split(12, -1)
        heads = []
        for h in range(3):
            s = slice(4 * h, 4 * h + 4)
            weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), -1)
            heads.append(weights @ v[..., s])
        mid = x + block.proj(torch.cat(heads, -1))
        expected = mid + block.mlp[2](torch.nn.functional.gelu(block.mlp[0](block.norm2(mid))))
    torch.testing.assert_close(out, expected)
    with pytest.raises(UserError, match="cannot have 5 heads"):
        Block(12, 5)


def test_build_by_name_and_bad_options():
    assert isinstance(build_backbone("vit-tiny"), ViT)
    with pytest.raises(UserError, match="did you mean 'vit-tiny'"):
        build_backbone("vit-tin")
    with pytest.raises(UserError, match="vit-tiny backbone has no stem"):
        build_backbone("vit-tiny", stem="cifar")
    with pytest.raises(UserError, match="width must be positive"):
        build_backbone("vit-tiny", width=0)


def test_token_pieces_of_ours_and_of_a_timm_vit_give_its_features():
    net, x = _vit(), torch.randn(2, 3, 16, 16)
    assert token_encoder(net) is net and net.patch_size == 4
    with torch.no_grad():
        torch.testing.assert_close(_through(net, x), net.forward_features(x), rtol=0, atol=0)
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    torch.manual_seed(0)
    vit, x = build_backbone("timm:vit_tiny_patch16_224", 32).eval(), torch.randn(2, 3, 32, 32)
    encoder = token_encoder(vit)
    with torch.no_grad():
        prefix, patches = encoder.embed(x)
        torch.testing.assert_close(_through(encoder, x), vit.forward_features(x), rtol=1e-5, atol=1e-5)
    assert encoder.patch_size == 16 and prefix.shape == (2, 1, 192) and patches.shape == (2, 4, 192)


@pytest.mark.parametrize("name", ["small", "timm:resnet18", "custom"])
def test_a_backbone_that_is_no_vit_has_no_token_pieces(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()) if name == "custom" else build_backbone(name, 16)
    with pytest.raises(UserError, match="is not a vision transformer"):
        token_encoder(net)


def test_onnx_export_keeps_a_dynamic_batch(tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed")
    from onnx.reference import ReferenceEvaluator

    from selfsup.use.export import export_onnx

    net, x = _vit(), torch.randn(5, 3, 16, 16)  # exported with a batch of 2
    export_onnx(net, tmp_path / "vit.onnx", 16)
    out = ReferenceEvaluator(str(tmp_path / "vit.onnx")).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=1e-4)
