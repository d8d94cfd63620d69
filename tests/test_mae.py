"""MAE: the token ops against loops and their masking distribution, the loss against a float64 reference, a step
against a per-image reference of the whole pipeline, views and outputs, timm ViTs, options, and 2 processes vs 1."""

import itertools
from collections import Counter

import pytest
import torch

from selfsup.backbones import build_backbone, feature_dim
from selfsup.config import TrainConfig
from selfsup.data.ops.tokens import (
    gather_tokens,
    mask_from_noise,
    paste_patches,
    patchify,
    sample_token_noise,
    unpatchify,
    visible_count,
)
from selfsup.data.views import augmented, prepare
from selfsup.engine.build import optimizer_settings
from selfsup.errors import UserError
from selfsup.losses.mae import masked_patch_mse
from selfsup.methods import Batch
from selfsup.methods.mae import MAE
from selfsup.methods.panels import unprepare
from tests.helpers import assert_two_ranks_train_like_one


def _mae(backbone: str = "vit-tiny", size: int = 16, **kwargs) -> MAE:
    torch.manual_seed(0)
    net = build_backbone(backbone, size, width=0.25 if backbone == "vit-tiny" else 1.0)
    return MAE(net, feature_dim(net, size), size, **{"decoder_dim": 32, "decoder_depth": 1, **kwargs})


def _batch(n: int = 4, size: int = 16, seed: int = 3) -> Batch:
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    return Batch(images, None, torch.arange(n), torch.Generator().manual_seed(seed), 0.0)


def _patch_loop(image: torch.Tensor, p: int, r: int, c: int) -> torch.Tensor:
    """Patch (r, c) of one image (C, H, W), flattened row by row, a pixel's channels together."""
    return image[:, r * p : (r + 1) * p, c * p : (c + 1) * p].permute(1, 2, 0).reshape(-1)


def test_patchify_matches_a_loop_and_unpatchify_inverts_it():
    x, p = torch.randn(2, 3, 12, 8), 4
    patches = patchify(x, p)
    assert patches.shape == (2, 6, 48)
    for b, r, c in itertools.product(range(2), range(3), range(2)):
        torch.testing.assert_close(patches[b, r * 2 + c], _patch_loop(x[b], p, r, c), rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(patches, p, 12, 8), x, rtol=0, atol=0)


def test_masking_keeps_the_lowest_noise_patches_and_restores_image_order():
    noise = sample_token_noise(5, 16, torch.Generator().manual_seed(0))
    keep, restore, mask = mask_from_noise(noise, 4)
    for b in range(5):
        lowest = sorted(range(16), key=lambda i: float(noise[b, i]))[:4]
        assert keep[b].tolist() == lowest
        assert mask[b].tolist() == [0.0 if i in lowest else 1.0 for i in range(16)]
    tokens = torch.arange(16.0).view(1, 16, 1).expand(5, -1, 2)
    visible = gather_tokens(tokens, keep)
    masked = torch.stack([tokens[b, [i for i in noise[b].argsort().tolist()[4:]]] for b in range(5)])
    torch.testing.assert_close(gather_tokens(torch.cat([visible, masked], 1), restore), tokens, rtol=0, atol=0)


def test_gather_tokens_matches_a_loop():
    tokens, ids = torch.randn(3, 7, 5), torch.randint(0, 7, (3, 4))
    expected = torch.stack([torch.stack([tokens[b, i] for i in ids[b].tolist()]) for b in range(3)])
    torch.testing.assert_close(gather_tokens(tokens, ids), expected, rtol=0, atol=0)


def test_every_patch_is_masked_three_times_in_four_and_the_visible_sets_are_uniform():
    draws, tokens = 28_000, 8
    keep, _, mask = mask_from_noise(sample_token_noise(draws, tokens, torch.Generator().manual_seed(1)), 2)
    assert (mask.sum(1) == 6).all()  # exactly int(8 * 0.25) = 2 visible per sample
    assert visible_count(tokens, 0.75) == 2 and visible_count(196, 0.75) == 49
    torch.testing.assert_close(mask.mean(0), torch.full((tokens,), 0.75), atol=0.01, rtol=0)
    subsets = Counter(tuple(sorted(k)) for k in keep.tolist())
    assert len(subsets) == 28 and all(abs(n - 1000) < 150 for n in subsets.values()), subsets  # C(8, 2) = 28


def test_paste_patches_matches_a_loop():
    images, fill, p = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), 4
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 1]])
    out = paste_patches(images, fill, mask, p)
    for b, r, c in itertools.product(range(2), range(2), range(2)):
        source = fill if mask[b, 2 * r + c] else images
        torch.testing.assert_close(_patch_loop(out[b], p, r, c), _patch_loop(source[b], p, r, c), rtol=0, atol=0)
    assert (paste_patches(images, 0.5, mask, p)[0, :, :4, :4] == 0.5).all()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_is_the_mse_on_masked_patches_of_the_per_patch_normalised_target(norm_pix):
    pred, target = torch.randn(3, 5, 6), torch.randn(3, 5, 6) * 3 + 1
    mask = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    total, count = 0.0, 0
    for b in range(3):
        for i in range(5):
            if mask[b, i]:
                t = [float(v) for v in target[b, i]]
                mean = sum(t) / 6
                std = (sum((v - mean) ** 2 for v in t) / 5 + 1e-6) ** 0.5  # unbiased variance, as MAE
                t = [(v - mean) / std for v in t] if norm_pix else t
                total += sum((float(p) - v) ** 2 for p, v in zip(pred[b, i], t)) / 6
                count += 1
    assert float(masked_patch_mse(pred, target, mask, norm_pix)) == pytest.approx(total / count, rel=1e-5)


def test_a_step_is_the_per_image_encoder_on_visible_patches_and_decoder_on_all():
    m, batch = _mae(), _batch()
    loss = m.training_step(batch)
    g = torch.Generator().manual_seed(3)  # the same draws in the same order: the view, then the noise
    x = prepare(augmented(batch.images, m.aug, 16, g))
    noise = torch.rand((4, 16), generator=g)
    dec, errors = m.decoder, []
    with torch.no_grad():
        for b in range(4):
            order = noise[b].argsort().tolist()
            visible, masked = sorted(order[:4]), order[4:]
            cls, patches = m.backbone.embed(x[b : b + 1])
            h = torch.cat([cls, patches[:, visible]], 1)
            for block in m.backbone.blocks:
                h = block(h)
            latent = dec.embed(m.backbone.norm(h))[0]
            seq = [latent[0]] + [latent[1 + visible.index(i)] if i in visible else dec.mask_token[0, 0]
                                 for i in range(16)]
            pred = dec.pred(dec.norm(dec.blocks(torch.stack(seq).unsqueeze(0) + dec.pos_embed)))[0, 1:]
            for i in masked:
                t = patchify(x[b : b + 1], 4)[0, i]
                t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
                errors.append((pred[i] - t).square().mean())
    torch.testing.assert_close(loss.detach(), torch.stack(errors).mean(), rtol=1e-4, atol=1e-5)
    loss.backward()
    assert m.backbone.cls_token.grad.abs().sum() > 0 and m.decoder.mask_token.grad.abs().sum() > 0


def test_views_show_the_steps_visible_patches_and_its_targets():
    m, batch = _mae(), _batch()
    panels = m.views(batch)
    g = torch.Generator().manual_seed(3)
    x = prepare(augmented(batch.images, m.aug, 16, g))
    mask = mask_from_noise(torch.rand((4, 16), generator=g), 4)[2]
    seen = panels[0].images
    torch.testing.assert_close(seen, paste_patches(unprepare(x), 0.5, mask, 4))
    assert panels[0].captions == ["12/16 masked"] * 4
    target = panels[1].images
    assert target.shape == (4, 3, 16, 16) and 0 <= target.min() and target.max() <= 1
    for b in range(4):  # the visible patches hold no target: one flat grey per image
        visible = patchify(target[b : b + 1], 4)[0, ~mask[b].bool()]
        assert (visible == visible[0, 0]).all()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_outputs_show_original_masked_reconstruction_and_pasted(norm_pix):
    m = _mae(norm_pix=norm_pix).eval()
    images = _batch(5).images
    rows = m.outputs(images, torch.Generator().manual_seed(0))
    assert [r.title for r in rows] == ["masked input: the visible patches", "reconstruction",
                                       "reconstruction, visible patches pasted"]  # the engine shows the images
    assert all(r.images.shape == (5, 3, 16, 16) and 0 <= r.images.min() and r.images.max() <= 1 for r in rows)
    mask = mask_from_noise(torch.rand((5, 16), generator=torch.Generator().manual_seed(0)), 4)[2]
    original, recon = images.float() / 255, rows[1].images
    torch.testing.assert_close(rows[0].images, paste_patches(original, 0.5, mask, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[2].images, paste_patches(original, recon, mask, 4), atol=1e-5, rtol=0)
    x, keep, restore, _ = m._masked(original, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = m._predict(x, keep, restore)
    for b in range(5):  # norm_pix: every patch un-normalised by the visible patches' mean mean and mean std
        patches = patchify(x[b : b + 1], 4)[0]
        visible = [i for i in range(16) if not mask[b, i]]
        mean = sum(float(patches[i].mean()) for i in visible) / len(visible)
        std = sum((float(patches[i].var()) + 1e-6) ** 0.5 for i in visible) / len(visible)
        expected = pred[b : b + 1] * std + mean if norm_pix else pred[b : b + 1]
        torch.testing.assert_close(recon[b : b + 1], unprepare(unpatchify(expected, 4, 16, 16)), atol=1e-5, rtol=0)


def test_a_timm_vit_trains_through_its_own_pieces():
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    m = _mae("timm:vit_tiny_patch16_224", 32)
    assert (m.patch, m.tokens, m.keep) == (16, 4, 1)
    loss = m.training_step(_batch(2, 32))
    loss.backward()
    net = m.backbone.net
    assert torch.isfinite(loss) and net.patch_embed.proj.weight.grad.abs().sum() > 0
    assert net.cls_token.grad.abs().sum() > 0 and net.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_bad_options_and_backbones_are_user_errors():
    for ratio in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(UserError, match="mask_ratio must be in"):
            _mae(mask_ratio=ratio)
    with pytest.raises(UserError, match="leaves none of the 16 patches visible"):
        _mae(mask_ratio=0.95)
    with pytest.raises(UserError, match="'SmallConvNet' is not a vision transformer"):
        _mae("small")
    with pytest.raises(UserError, match="cannot have 5 heads"):
        _mae(decoder_heads=5)


def test_the_optimiser_is_the_papers_adamw():
    s = optimizer_settings(TrainConfig(method="mae", batch_size=4096))["main"]
    assert (s.optimizer, s.weight_decay, s.betas, s.warmup_epochs) == ("adamw", 0.05, (0.9, 0.95), 40)
    assert s.lr == pytest.approx(1.5e-4 * 4096 / 256)  # the paper's 2.4e-3 at batch 4096


def test_two_processes_train_mae_like_one(tmp_path):
    cfg = TrainConfig(method="mae", data="digits", batch_size=32, image_size=16, steps=3, log_every=1,
                      backbone_args=dict(width=0.25), method_args=dict(decoder_dim=32, decoder_depth=1))
    assert_two_ranks_train_like_one(tmp_path, cfg)
