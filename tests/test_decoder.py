"""The decoders on a backbone's feature map: output sizes, and the pixel decoder's upsampling ladder."""

import pytest
import torch
from torch import nn

from selfsup.heads.decoder import ConvDecoder, PixelDecoder


@pytest.mark.parametrize("map_size,size,ups", [(4, 32, 3), (7, 224, 5), (1, 16, 4), (8, 8, 0), (3, 32, 4)])
def test_the_pixel_decoder_doubles_until_the_target_size_then_resizes_exactly(map_size, size, ups):
    torch.manual_seed(0)
    dec = PixelDecoder(16, 3, size / map_size, hidden=64)
    blocks = [m for m in dec.body if isinstance(m, nn.Upsample)]
    assert len(blocks) == ups
    widths = [m.out_channels for m in dec.body if isinstance(m, nn.Conv2d)]
    assert widths == [64] + [max(32, 64 >> (i + 1)) for i in range(ups)]  # halved each time, at least 32
    out = dec(torch.randn(2, 16, map_size, map_size), size)
    assert out.shape == (2, 3, size, size)


def test_the_pixel_decoder_output_is_unbounded_and_learns_a_target():
    torch.manual_seed(0)
    dec = PixelDecoder(8, 3, 4.0, hidden=32)
    fmap, target = torch.randn(4, 8, 4, 4), torch.rand(4, 3, 16, 16) * 4 - 2  # values outside [0, 1]
    opt = torch.optim.Adam(dec.parameters(), 1e-2)
    first = None
    for _ in range(150):
        loss = (dec(fmap, 16) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_the_conv_decoder_gives_per_pixel_logits_at_the_target_size():
    out = ConvDecoder(16, 10, hidden=8)(torch.randn(2, 16, 4, 4), 8)
    assert out.shape == (2, 10, 8, 8)
