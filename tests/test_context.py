"""Context prediction: the patch pairs a step builds against a per-image reference, what views() shows, the
evaluated encoder, bad options, and 2 processes vs 1."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.augment import AugmentConfig
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.data.ops.patches import POSITIONS
from selfsup.data.views import augmented
from selfsup.errors import UserError
from selfsup.methods import Batch
from selfsup.methods.context import ContextPrediction
from selfsup.methods.panels import stretch
from tests.helpers import Recorder, assert_two_ranks_train_like_one

STEPS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # the paper's 8 positions, row-major


def _batch(images, seed):
    return Batch(images, None, torch.arange(len(images)), torch.Generator().manual_seed(seed), 0.0)


def _reference(images, method, seed):
    """The pairs, image by image, from the same draws in the same order: the view, the pairs' labels and
    uniforms, then (colour dropping) the kept channels and the noise. 24 px images: 9 px patches, 4 px gap,
    1 px jitter."""
    p, gap, jit, out = 9, 4, 1, method.patch_size
    g = torch.Generator().manual_seed(seed)
    x = augmented(images, method.aug, 24, g)
    b = len(images)
    labels = torch.randint(8, (b,), generator=g)
    u = torch.rand((b, 6), generator=g, dtype=torch.float64)
    if method.chroma == "drop":
        keep = torch.randint(3, (b, 2), generator=g)
        noise = torch.randn((b, 2, 2, out, out), generator=g)  # the two dropped channels of each patch, in order
    patches = []
    for i in range(b):
        j = [int(v * (2 * jit + 1)) - jit for v in u[i, :4].tolist()]
        corners = []
        for axis in range(2):
            offset = STEPS[labels[i]][axis] * (p + gap) + j[2 + axis] - j[axis]
            start = int(u[i, 4 + axis].item() * (24 - p - abs(offset) + 1))
            corners.append((start + max(0, -offset), start + max(0, -offset) + offset))
        for k in range(2):
            patch = TF.resized_crop(x[i], corners[0][k], corners[1][k], p, p, [out, out], antialias=False).double()
            if method.chroma == "drop":
                kept = patch[keep[i, k]]
                std = math.sqrt(((kept - kept.mean()) ** 2).mean().item())
                dropped = [c for c in range(3) if c != keep[i, k]]
                patch = torch.stack([kept if c == keep[i, k] else noise[i, k, dropped.index(c)] * 0.01 * std
                                     for c in range(3)])
            elif method.chroma == "project":
                patch = patch - torch.tensor([-1.0, 2.0, -1.0]).view(3, 1, 1) * (2 * patch[1] - patch[0] - patch[2]) / 6
            patch = torch.stack([c - c.mean() for c in patch])
            patches.append(patch / math.sqrt((patch**2).mean().item() + 1e-10))
    return torch.stack(patches).float(), labels


# the defaults and grayscale in the augmentation sample the patches straight from the images (grey on the patches);
# resized patches take the path that makes the augmented views first
@pytest.mark.parametrize("chroma,options", [("drop", {}), ("project", {}), ("none", {}),
                                            ("drop", dict(patch_size=12)), ("none", dict(aug=dict(gray_p=0.5)))])
def test_a_step_crops_guards_and_standardises_the_pairs_as_a_per_image_reference_does(chroma, options):
    torch.manual_seed(0)
    aug = AugmentConfig(**{**ContextPrediction.augment_defaults, **options.pop("aug", {})})
    method = ContextPrediction(Recorder(pool="amax"), 8, 24, aug=aug, chroma=chroma, head_hidden_dim=16, tile_dim=0,
                               **options)
    assert (method.patch, method.gap, method.jitter) == (9, 4, 1)
    images = torch.randint(0, 256, (6, 3, 30, 30), dtype=torch.uint8)
    loss = method.training_step(_batch(images, 7))
    expected, labels = _reference(images, method, 7)
    side = method.patch_size
    assert method.backbone.seen.shape == (12, 3, side, side)  # one pass: centre, neighbour of image 0, image 1...
    torch.testing.assert_close(method.backbone.seen, expected, atol=1e-4, rtol=1e-4)
    logits = method.head(method.backbone.proj(expected.amax((2, 3))))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels), atol=1e-5, rtol=1e-5)


def test_views_show_what_the_step_feeds_the_network_and_name_the_neighbours_position():
    torch.manual_seed(0)
    method = ContextPrediction(Recorder(pool="amax"), 8, 24, head_hidden_dim=0)
    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)
    side_by_side, in_place = method.views(_batch(images, 3))
    _, labels = _reference(images, method, 3)
    assert list(side_by_side.captions) == list(in_place.captions) == [POSITIONS[i] for i in labels.tolist()]
    method.training_step(_batch(images, 3))
    shown = stretch(method.backbone.seen).view(5, 2, 3, 9, 9)
    assert side_by_side.images.shape == (5, 3, 9, 19) and in_place.images.shape == (5, 3, 29, 29)
    torch.testing.assert_close(side_by_side.images[..., :9], shown[:, 0])
    torch.testing.assert_close(side_by_side.images[..., 10:], shown[:, 1])
    for i, label in enumerate(labels.tolist()):
        row, column = (STEPS[label][0] + 1) * 10, (STEPS[label][1] + 1) * 10
        torch.testing.assert_close(in_place.images[i, :, 10:19, 10:19], shown[i, 0])
        torch.testing.assert_close(in_place.images[i, :, row:row + 9, column:column + 9], shown[i, 1])
        others = in_place.images[i].clone()
        for r, c in ((10, 10), (row, column)):
            others[:, r:r + 9, c:c + 9] = 1.0
        assert (others == 1.0).all()  # the other 7 cells are blank


@pytest.mark.parametrize("chroma", ["drop", "project"])
def test_the_evaluated_encoder_sees_whole_images_prepared_as_the_patches_were(chroma):
    torch.manual_seed(0)
    method = ContextPrediction(build_backbone("small"), 256, 16, chroma=chroma).eval()
    unit = torch.rand(3, 3, 16, 16)
    x = (unit - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    if chroma == "project":  # the green-magenta axis projected out, as the patches were
        unit = unit - torch.tensor([-1.0, 2.0, -1.0]).view(3, 1, 1) * (2 * unit[:, 1:2] - unit[:, :1] - unit[:, 2:]) / 6
    centred = unit - unit.mean((2, 3), keepdim=True)
    z = centred / centred.pow(2).mean((1, 2, 3), keepdim=True).sqrt()
    if chroma == "drop":  # a patch's one kept channel has sqrt(3) the RMS of each of a whole image's three
        z = z / math.sqrt(3)
    torch.testing.assert_close(method.encoder()(x), method.backbone(z), atol=1e-5, rtol=1e-4)
    assert method.encoder().stage_names == method.backbone.stage_names


@pytest.mark.parametrize("options", [dict(chroma="grey"), dict(drop_noise=-1.0), dict(patch_frac=0.9),
                                     dict(jitter_frac=0.4), dict(patch_size=0)])
def test_bad_options_are_refused_in_one_line(options):
    with pytest.raises(UserError):
        ContextPrediction(build_backbone("small"), 256, 32, **options)


def test_two_processes_train_context_prediction_like_one(tmp_path):
    cfg = TrainConfig(method="context", data="digits", batch_size=32, image_size=16, steps=3, log_every=1,
                      method_args=dict(head_hidden_dim=32, tile_dim=16))
    assert_two_ranks_train_like_one(tmp_path, cfg)


def test_the_evaluated_encoder_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from selfsup.use.export import export_onnx

    torch.manual_seed(0)
    method = ContextPrediction(build_backbone("small"), 256, 16, chroma="project").eval()
    export_onnx(method.encoder(), tmp_path / "encoder.onnx", 16)
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(out), method.encoder()(x).detach(), atol=1e-5, rtol=1e-4)
