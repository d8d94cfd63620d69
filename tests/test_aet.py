"""AET: the loss against the paper's formula, the batched warp against torchvision's affine and perspective image
by image, the sampled transforms' distributions, the regression targets of known transforms, the step against a
per-image reference, views, and 2 processes vs 1."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.warp import (
    CORNERS,
    affine_matrices,
    homographies,
    sample_affine,
    sample_corners,
    transform_parameters,
    warp,
)
from selfsup.data.views import augmented, prepare
from selfsup.errors import UserError
from selfsup.losses.equivariance import transform_regression_loss
from selfsup.methods import Batch
from selfsup.methods.aet import AET
from tests.helpers import Recorder, assert_two_ranks_train_like_one

BILINEAR = InterpolationMode.BILINEAR


def reference_affine(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """torchvision's affine of one image with (angle, tx, ty, scale, shear) as :func:`sample_affine` draws them."""
    angle, tx, ty, scale, shear = params.tolist()
    h, w = image.shape[-2:]
    return TF.affine(image, angle=angle, translate=[tx * w, ty * h], scale=scale, shear=[shear, 0.0],
                     interpolation=BILINEAR)


def reference_perspective(image: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """torchvision's perspective of one image whose corners go to ``corners`` (normalised x, y): pixel edges at 0
    and the size, as torchvision's grid has them."""
    h, w = image.shape[-2:]
    start = [[0, 0], [w, 0], [w, h], [0, h]]
    end = [[(x + 1) * w / 2, (y + 1) * h / 2] for x, y in corners.tolist()]
    return TF.perspective(image, start, end, interpolation=BILINEAR)


def test_the_loss_is_half_the_squared_distance_of_the_parameters():
    g = torch.Generator().manual_seed(0)
    predicted, target = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    expected = sum(0.5 * sum((predicted[b, k].double() - target[b, k].double()) ** 2 for k in range(6))
                   for b in range(5)) / 5
    assert transform_regression_loss(predicted, target).item() == pytest.approx(float(expected), rel=1e-6)
    assert transform_regression_loss(target, target).item() == 0.0


@pytest.mark.parametrize("size", [12, 17])
def test_the_affine_warp_matches_torchvision_image_by_image(size):
    g = torch.Generator().manual_seed(size)
    x = torch.rand(6, 3, size, size, generator=g)
    params = sample_affine(6, generator=g)
    out = warp(x, affine_matrices(params))
    for b in range(6):
        torch.testing.assert_close(out[b], reference_affine(x[b], params[b]), atol=2e-5, rtol=0)


@pytest.mark.parametrize("size", [12, 17])
def test_the_projective_warp_matches_torchvision_image_by_image(size):
    g = torch.Generator().manual_seed(size)
    x = torch.rand(6, 3, size, size, generator=g)
    corners = sample_corners(6, generator=g)
    out = warp(x, homographies(corners))
    for b in range(6):
        torch.testing.assert_close(out[b], reference_perspective(x[b], corners[b]), atol=2e-5, rtol=0)


def test_a_homography_takes_the_corners_where_they_were_drawn_to():
    corners = sample_corners(50, generator=torch.Generator().manual_seed(0))
    h = homographies(corners)
    src = torch.tensor([[x, y, 1.0] for x, y in CORNERS], dtype=torch.float64)
    mapped = src @ h.transpose(1, 2)  # (B, 4, 3)
    torch.testing.assert_close(mapped[..., :2] / mapped[..., 2:], corners, atol=1e-10, rtol=0)


def test_affine_parameters_are_uniform_on_the_papers_ranges():
    p = sample_affine(100_000, generator=torch.Generator().manual_seed(0))
    for column, (low, high) in enumerate([(-180, 180), (-0.2, 0.2), (-0.2, 0.2), (0.7, 1.3), (-30, 30)]):
        values = p[:, column]
        assert low <= values.min() and values.max() <= high
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low)
        assert values.mean().item() == pytest.approx((low + high) / 2, abs=0.01 * (high - low))
        assert values.var().item() == pytest.approx((high - low) ** 2 / 12, rel=0.02)
    assert abs(torch.corrcoef(p.T).fill_diagonal_(0)).max() < 0.02  # drawn independently


def _turns(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which quarter turn ``k`` every sample's corners show (corner 0 lands nearest to corner k), and the turned
    corners of the unit square."""
    base = torch.tensor(CORNERS, dtype=torch.float64)
    k = (corners[:, :1] - base).norm(dim=2).argmin(1)
    return k, base[(torch.arange(4) + k[:, None]) % 4]


def test_projective_turns_and_scales_are_uniform_on_the_papers_ranges():
    corners = sample_corners(40_000, shift=0.0, generator=torch.Generator().manual_seed(1))
    k, turned = _turns(corners)
    freq = torch.bincount(k, minlength=4).double() / len(k)
    torch.testing.assert_close(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01, rtol=0)
    scale = corners[:, 0, 0] / turned[:, 0, 0]
    torch.testing.assert_close(corners, turned * scale.view(-1, 1, 1), atol=1e-12, rtol=0)  # a turned square
    assert 0.8 <= scale.min() < 0.81 and 1.19 < scale.max() <= 1.2
    assert scale.mean().item() == pytest.approx(1.0, abs=0.005)
    assert scale.var().item() == pytest.approx(0.4**2 / 12, rel=0.03)


def test_projective_corner_moves_are_uniform_up_to_an_eighth_of_the_size():
    corners = sample_corners(40_000, scale=(1.0, 1.0), generator=torch.Generator().manual_seed(2))
    moves = corners - _turns(corners)[1]  # normalised units: the image is 2 wide, so 0.125 of it is 0.25
    assert moves.abs().max() <= 0.25 and moves.abs().max() > 0.249
    torch.testing.assert_close(moves.mean((0,)), torch.zeros(4, 2, dtype=torch.float64), atol=0.005, rtol=0)
    assert moves.var().item() == pytest.approx(0.5**2 / 12, rel=0.02)
    assert abs(torch.corrcoef(moves.flatten(1).T).fill_diagonal_(0)).max() < 0.03  # each corner and axis alone


def test_regression_targets_of_known_transforms():
    identity = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    assert transform_parameters(affine_matrices(identity), False).tolist() == [[1, 0, 0, 0, 1, 0]]
    quarter = affine_matrices(torch.tensor([[90.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(transform_parameters(quarter, False), torch.tensor([[0.0, -1, 0, 1, 0, 0]],
                                                                                   dtype=torch.float64))
    x = torch.rand(2, 3, 9, 9)
    # torchvision's 90-degree affine turns clockwise: rot90 by -1; on pixel centres no interpolation is left
    torch.testing.assert_close(warp(x, quarter.float().expand(2, 3, 3)), torch.rot90(x, -1, (2, 3)), atol=1e-5,
                               rtol=0)
    still = torch.tensor([CORNERS], dtype=torch.float64)
    assert transform_parameters(homographies(still), True).tolist() == [[1, 0, 0, 0, 1, 0, 0, 0]]
    turned = homographies(still[:, [1, 2, 3, 0]])  # corner i lands where corner i + 1 was: a quarter turn
    torch.testing.assert_close(transform_parameters(turned, True), torch.tensor([[0.0, -1, 0, 1, 0, 0, 0, 0]],
                                                                                 dtype=torch.float64), atol=1e-12,
                               rtol=0)
    shifted = affine_matrices(torch.tensor([[0.0, 0.1, -0.2, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(transform_parameters(shifted, False), torch.tensor([[1.0, 0, 0.2, 0, 1, -0.4]],
                                                                                   dtype=torch.float64))


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_a_step_warps_and_regresses_as_a_per_image_reference_does(transform):
    torch.manual_seed(0)
    method = AET(Recorder(), 8, 12, transform=transform, head_hidden_dim=0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    loss = method.training_step(Batch(images, None, torch.arange(4), torch.Generator().manual_seed(5), 0.0))
    # the reference draws the same numbers in the same order: the view, then the transforms' parameters
    g = torch.Generator().manual_seed(5)
    x = augmented(images, method.aug, 12, g)
    if transform == "affine":
        params = sample_affine(4, generator=g)
        warped = [reference_affine(x[b], params[b]) for b in range(4)]
        target = affine_matrices(params)[:, :2].flatten(1)
    else:
        corners = sample_corners(4, generator=g)
        warped = [reference_perspective(x[b], corners[b]) for b in range(4)]
        target = homographies(corners).flatten(1)[:, :8]
    expected = prepare(torch.cat([x, torch.stack(warped)]))
    torch.testing.assert_close(method.backbone.seen, expected, atol=1e-4, rtol=1e-4)
    feats = method.backbone.proj(expected.mean((2, 3)))
    predicted = method.regressor(torch.cat([feats[:4], feats[4:]], 1))
    expected_loss = 0.5 * ((predicted.double() - target) ** 2).sum(1).mean()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-4)


def test_views_pair_each_image_with_its_warp_and_caption_the_target():
    method = AET(build_backbone("small"), 256, 8, head_hidden_dim=16)
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)

    def batch():
        return Batch(images, None, torch.arange(3), torch.Generator().manual_seed(4), 0.0)

    (panel,) = method.views(batch())
    x, warped, target = method._pair(batch())
    assert panel.images.shape == (3, 3, 8, 17)
    torch.testing.assert_close(panel.images[..., :8], x)
    torch.testing.assert_close(panel.images[..., 9:], warped)
    for caption, row in zip(panel.captions, target, strict=True):
        numbers = [float(v) for v in caption.split()]
        assert len(numbers) == 6
        torch.testing.assert_close(torch.tensor(numbers), row, atol=0.005 + 1e-6, rtol=0)


def test_bad_options_are_one_line_user_errors():
    with pytest.raises(UserError, match="affine' or 'projective"):
        AET(build_backbone("small"), 256, 8, transform="elastic")
    with pytest.raises(UserError, match="scale"):
        AET(build_backbone("small"), 256, 8, scale=(1.2, 0.8))
    with pytest.raises(UserError, match="shear"):
        AET(build_backbone("small"), 256, 8, shear=90)


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_two_processes_train_aet_like_one(tmp_path, transform):
    # SGD: Adam (the default) divides by the gradients' magnitude, so float rounding decides near-zero updates
    cfg = TrainConfig(method="aet", data="digits", batch_size=32, image_size=8, steps=3, log_every=1,
                      optimizer="sgd", lr=0.01, weight_decay=5e-4, method_args=dict(transform=transform,
                                                                                   head_hidden_dim=32))
    assert_two_ranks_train_like_one(tmp_path, cfg)
