"""Context encoders: the masks against per-image references and their distributions, the masked squared error
against a float64 loop, a step (input, loss, adversarial phases) against a reference of the whole pipeline, views
and outputs, bad options, and 2 processes vs 1 with the adversarial term on."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.base import IMAGENET_MEAN, normalize
from selfsup.data.ops.masks import (
    block_side,
    box_masks,
    center_boxes,
    grow,
    region_masks,
    sample_blocks,
    sample_region_noise,
)
from selfsup.data.views import augmented, prepare
from selfsup.errors import UserError
from selfsup.losses.gan import ns_d_loss, ns_g_loss
from selfsup.losses.inpainting import masked_squared_error
from selfsup.methods import Batch
from selfsup.methods.context_encoder import ContextEncoder
from tests.helpers import assert_two_ranks_train_like_one

IMAGENET_NORMALISED = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def boxes_reference(boxes, side, size):
    out = torch.zeros(len(boxes), 1, size, size, dtype=torch.bool)
    for b in range(len(boxes)):
        for top, left in boxes[b].tolist():
            out[b, 0, top : top + side, left : left + side] = True
    return out


def region_reference(noise, sigma, fraction):
    """Per image, in float64: the noise smoothed by a 2-D Gaussian kernel of std sigma and 2 ceil(3 sigma) + 1 taps
    (only where the whole kernel fits), and the round(fraction H W) lowest values removed."""
    r = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = torch.outer(k, k) / torch.outer(k, k).sum()
    out = []
    for image in noise.double():
        field = F.conv2d(image[None], kernel[None, None])[0, 0]
        threshold = field.flatten().sort().values[round(fraction * field.numel()) - 1]
        out.append((field <= threshold)[None])
    return torch.stack(out)


def grow_reference(masks, pixels):
    out = torch.zeros_like(masks)
    for b, _, y, x in masks.nonzero().tolist():
        out[b, 0, max(0, y - pixels) : y + pixels + 1, max(0, x - pixels) : x + pixels + 1] = True
    return out


def squared_error_reference(prediction, target, weights):
    """mean over samples of sum_{c,y,x} w (p - t)^2 / (C x the pixels with w > 0), by loops in float64."""
    p, t, w = prediction.detach().double(), target.double(), weights.double()
    total = 0.0
    for b in range(len(p)):
        num, pixels = 0.0, 0
        for y in range(p.shape[2]):
            for x in range(p.shape[3]):
                if w[b, 0, y, x] > 0:
                    pixels += 1
                    num += float(w[b, 0, y, x] * ((p[b, :, y, x] - t[b, :, y, x]) ** 2).sum())
        total += num / (p.shape[1] * pixels)
    return total / len(p)


def test_box_masks_match_a_per_image_loop():
    boxes = torch.randint(0, 9, (6, 3, 2), generator=gen(0))
    assert torch.equal(box_masks(boxes, 4, 12), boxes_reference(boxes, 4, 12))


@pytest.mark.parametrize("size, overlap, start, stop", [(32, 1, 9, 23), (128, 4, 36, 92), (15, 0, 4, 11)])
def test_the_center_hole_is_the_central_half_shrunk_by_the_overlap_and_the_band_fills_it_back(size, overlap, start,
                                                                                            stop):
    holes = box_masks(*center_boxes(3, size, overlap), size)
    expected = torch.zeros(3, 1, size, size, dtype=torch.bool)
    expected[..., start:stop, start:stop] = True  # 128 px: the paper's 64 px square at 32..96, minus 4 px a side
    assert torch.equal(holes, expected)
    region = torch.zeros_like(expected)
    region[..., start - overlap : stop + overlap, start - overlap : stop + overlap] = True
    assert torch.equal(grow(holes, overlap), region) and region.sum() == 3 * (size // 2) ** 2
    with pytest.raises(ValueError, match="no central hole"):
        center_boxes(1, 8, 2)


def test_random_blocks_are_uniformly_placed_and_remove_up_to_the_fraction():
    size, count = 32, 4
    side = block_side(size, count, 0.25)
    assert side == 8  # four blocks of 1/16 of the image each
    boxes = sample_blocks(20000, size, side, count, gen(1))
    assert boxes.min() == 0 and boxes.max() == size - side
    counts = torch.bincount(boxes.flatten(), minlength=size - side + 1).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.06  # every corner coordinate equally likely
    corr = torch.corrcoef(boxes.flatten(1).double().T)
    assert (corr - torch.eye(2 * count, dtype=torch.float64)).abs().max() < 0.04  # independent
    area = box_masks(boxes[:2000], side, size).double().mean((1, 2, 3))
    assert area.max() == 0.25 and 0.18 < area.mean() < 0.25  # overlapping blocks remove less
    assert torch.equal(sample_blocks(5, size, side, count, gen(2)), sample_blocks(5, size, side, count, gen(2)))


def test_region_masks_match_a_per_image_float64_reference():
    sigma = 1.6
    noise = sample_region_noise(6, 16, sigma, gen(3))
    assert noise.shape == (6, 1, 16 + 2 * 5, 16 + 2 * 5)
    ours, ref = region_masks(noise, sigma, 0.25), region_reference(noise, sigma, 0.25)
    assert (ours != ref).sum() <= 2  # at most a tie at the threshold decided otherwise in float32


def test_region_masks_have_the_exact_area_fall_everywhere_alike_and_are_blobs():
    size, sigma = 16, 1.6
    masks = region_masks(sample_region_noise(4000, size, sigma, gen(4)), sigma, 0.25).double()
    assert torch.equal(masks.sum((1, 2, 3)), torch.full((4000,), 64.0, dtype=torch.float64))
    freq = masks.mean(0)[0]
    assert (freq - 0.25).abs().max() < 0.05  # every pixel is removed about as often (the quantile couples them)
    edge = torch.cat([freq[0], freq[-1], freq[:, 0], freq[:, -1]]).mean()
    assert abs(edge - freq[4:12, 4:12].mean()) < 0.03
    together = (masks[..., 1:, :] * masks[..., :-1, :]).sum() / masks[..., 1:, :].sum()
    assert together > 0.6  # a removed pixel's neighbour is mostly removed too (scattered pixels: 0.25)


def test_grow_matches_a_chessboard_dilation_loop():
    masks = torch.rand(4, 1, 10, 10, generator=gen(5)) < 0.05
    for pixels in (0, 1, 2):
        assert torch.equal(grow(masks, pixels), grow_reference(masks, pixels))


def test_masked_squared_error_matches_a_float64_loop_and_splits_over_equal_shares():
    prediction, target = torch.randn(4, 3, 6, 6, generator=gen(6)), torch.rand(4, 3, 6, 6, generator=gen(7))
    weights = (torch.rand(4, 1, 6, 6, generator=gen(8)) < 0.4).float() * torch.tensor([1.0, 10.0])[
        torch.randint(0, 2, (4, 1, 6, 6), generator=gen(9))]
    loss = masked_squared_error(prediction, target, weights)
    assert loss.item() == pytest.approx(squared_error_reference(prediction, target, weights), rel=1e-6)
    halves = [masked_squared_error(prediction[s], target[s], weights[s]) for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(loss, (halves[0] + halves[1]) / 2)
    target.requires_grad_(True)
    prediction.requires_grad_(True)
    masked_squared_error(prediction, target, weights).backward()
    assert target.grad is None and prediction.grad is not None


def tiny(**kw) -> ContextEncoder:
    torch.manual_seed(0)
    return ContextEncoder(build_backbone("small", 32, width=0.25), 64, 32, decoder_dim=16,
                          discriminator_width=0.125, **kw).eval()  # eval: the reference runs the same network


def record_input(method):
    """Remember what the backbone's first convolution sees (the network's input)."""
    first = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda _, args: setattr(method, "seen", args[0]))


def masked_reference(clean, holes):
    """The normalised image with the holes at the dataset mean, image by image and pixel by pixel."""
    x = normalize(clean, *IMAGENET_NORMALISED)
    for b, _, y, xx in holes.nonzero().tolist():
        x[b, :, y, xx] = 0.0
    return x


IMAGES = torch.randint(0, 256, (6, 3, 36, 36), dtype=torch.uint8, generator=gen(10))


def batch(seed: int, phase: int = 0) -> Batch:
    return Batch(IMAGES, None, torch.arange(6), gen(seed), 0.0, phase=phase)


def test_a_region_step_masks_and_scores_as_a_per_image_reference_does():
    method = tiny()
    record_input(method)
    loss = method.training_step(batch(11))["reconstruction"]
    g = gen(11)  # the reference draws the same numbers in the same order: the view, then the noise field
    clean = augmented(IMAGES, method.aug, 32, g)
    holes = region_reference(torch.randn(6, 1, 32 + 2 * 10, 32 + 2 * 10, generator=g), 3.2, 0.25)
    torch.testing.assert_close(method.seen, masked_reference(clean, holes), atol=1e-5, rtol=0)
    prediction = method.decoder(method.backbone.feature_map(masked_reference(clean, holes)), 32)
    assert loss.item() == pytest.approx(squared_error_reference(prediction, clean, holes.float()), rel=1e-4)


def test_a_center_step_weighs_the_overlap_band_ten_times():
    method = tiny(mask="center")
    assert method.overlap == 1  # the paper's 4 px at 128
    loss = method.training_step(batch(12))["reconstruction"]
    clean = augmented(IMAGES, method.aug, 32, gen(12))
    holes = torch.zeros(6, 1, 32, 32, dtype=torch.bool)
    holes[..., 9:23, 9:23] = True
    weights = torch.zeros(6, 1, 32, 32)
    weights[..., 8:24, 8:24] = 10.0
    weights[holes] = 1.0
    prediction = method.decoder(method.backbone.feature_map(masked_reference(clean, holes)), 32)
    assert loss.item() == pytest.approx(squared_error_reference(prediction, clean, weights), rel=1e-4)


def test_the_adversarial_phases_compute_the_papers_losses_with_their_own_optimisers():
    method = tiny(mask="blocks", adversarial=0.001)
    assert method.phases == ["discriminator", "main"]
    d, g = method.parameters_of("discriminator"), method.parameters_of("main")
    assert {id(p) for p in d} | {id(p) for p in g} == {id(p) for p in method.parameters()}
    assert d and not {id(p) for p in d} & {id(p) for p in g}
    side = block_side(32, 4, 0.25)

    def reference(seed):
        r = gen(seed)
        clean = augmented(IMAGES, method.aug, 32, r)
        holes = boxes_reference(torch.randint(32 - side + 1, (6, 4, 2), generator=r), side, 32)
        prediction = method.decoder(method.backbone.feature_map(masked_reference(clean, holes)), 32)
        return clean, holes, prediction, torch.where(holes, prediction, clean)

    def realness(x):  # at 32 px the trunk's map is 8 x 8: SNGAN's own global sum pooling
        return method.discriminator[1](method.discriminator[0](prepare(x))).squeeze(1)

    out = method.training_step(batch(13, phase=0))
    clean, _, _, inpainted = reference(13)
    torch.testing.assert_close(out["adversarial"], ns_d_loss(realness(clean), realness(inpainted)))
    out = method.training_step(batch(14, phase=1))
    clean, holes, prediction, inpainted = reference(14)
    torch.testing.assert_close(out["adversarial"], 0.001 * ns_g_loss(realness(inpainted)))
    assert out["reconstruction"].item() == pytest.approx(
        0.999 * squared_error_reference(prediction, clean, holes.float()), rel=1e-4)


def test_without_the_adversarial_term_there_is_no_discriminator_and_one_phase():
    method = tiny()
    assert method.phases == ["main"] and not hasattr(method, "discriminator")
    assert method.parameters_of("discriminator") == []
    assert {id(p) for p in method.parameters_of("main")} == {id(p) for p in method.parameters()}


def test_views_show_the_steps_own_input_and_the_loss_region():
    method = tiny(mask="center")
    record_input(method)
    method.training_step(batch(15))
    seen, target = method.views(batch(15))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(seen.images, ((method.seen * torch.tensor(IMAGENET_NORMALISED[1]).view(3, 1, 1))
                                             + mean).clamp(0, 1))
    torch.testing.assert_close(seen.images[..., 9:23, 9:23], mean.expand(6, 3, 14, 14))  # the mean fills the hole
    assert seen.captions == [f"{14 * 14 / 32**2:.0%} removed"] * 6
    clean = augmented(IMAGES, method.aug, 32, gen(15))
    torch.testing.assert_close(target.images[..., 8:24, 8:24], clean[..., 8:24, 8:24])  # hole and band in full
    assert target.images.shape == (6, 3, 32, 32) and "1 px band" in target.title


def test_outputs_rows_are_the_masked_input_the_original_and_the_inpainted_image():
    method = tiny()
    masked, original, inpainted = method.outputs(IMAGES[:4, :, :32, :32].contiguous(), gen(16))
    for row in (masked, original, inpainted):
        assert row.images.shape == (4, 3, 32, 32) and 0 <= row.images.min() and row.images.max() <= 1
    clean = IMAGES[:4, :, :32, :32].float() / 255
    torch.testing.assert_close(original.images, clean)
    holes = (masked.images - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).abs().amax(1, keepdim=True) < 1e-6
    assert holes.double().mean().item() == pytest.approx(0.25, abs=0.01)  # where the mean was filled in ...
    torch.testing.assert_close(inpainted.images[~holes.expand(-1, 3, -1, -1)], clean[~holes.expand(-1, 3, -1, -1)])
    assert len(inpainted.captions) == 4 and all("PSNR" in c for c in inpainted.captions)  # ... and only there


@pytest.mark.parametrize("option, message", [(dict(mask="ring"), "mask must be one of center, blocks, region"),
                                             (dict(mask_fraction=1.5), "mask_fraction must lie in"),
                                             (dict(blocks=0), "blocks and decoder_dim"),
                                             (dict(adversarial=1.0), "adversarial must be in"),
                                             (dict(mask="center", overlap=8), "leave a central hole"),
                                             (dict(overlap_weight=-1.0), "overlap_weight must be")])
def test_bad_options_are_one_line_user_errors(option, message):
    with pytest.raises(UserError, match=message):
        ContextEncoder(build_backbone("small", 32), 256, 32, **option)


def test_two_processes_train_the_adversarial_context_encoder_like_one(tmp_path):
    # SGD as in tests/test_ssgan.py: Adam would turn rounding noise into full steps and hide what is checked
    sgd = dict(optimizer="sgd", lr=0.05, schedule="constant")
    cfg = TrainConfig(method="context-encoder", data="digits", batch_size=32, image_size=16, steps=3, log_every=1,
                      backbone_args=dict(width=0.25), optimizers={"discriminator": sgd}, **sgd,
                      method_args=dict(adversarial=0.001, decoder_dim=16, discriminator_width=0.125))
    assert_two_ranks_train_like_one(tmp_path, cfg)
