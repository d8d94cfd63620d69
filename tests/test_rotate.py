"""The batched rotations of RotNet and SSGAN against torchvision's per-image rotate."""

import torch
import torchvision.transforms.v2.functional as TF

from selfsup.data.ops.rotate import rotations


def test_rotations_match_torchvision_image_by_image_and_label_each_block():
    x = torch.rand(5, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    out, labels = rotations(x)
    assert out.shape == (20, 3, 9, 9) and labels.tolist() == [k for k in range(4) for _ in range(5)]
    for k in range(4):
        for i in range(5):
            torch.testing.assert_close(out[k * 5 + i], TF.rotate(x[i], 90.0 * k), rtol=0, atol=0)


def test_every_angle_is_used_equally_and_the_unrotated_block_is_the_input():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    out, labels = rotations(x)
    assert torch.bincount(labels).tolist() == [8, 8, 8, 8]
    assert torch.equal(out[:8], x) and out.dtype == torch.uint8
    assert not torch.equal(out[8:16], x)  # random images are not rotation-invariant
