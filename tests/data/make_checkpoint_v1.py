"""Writes tests/data/checkpoint-v1: SimCLR with a tiny custom backbone and LARS, stopped at step 5 of 12 by
selfsup before several optimisers (one ``optimizer`` key), on one CPU thread. Run it with that version:

    git worktree add /tmp/old 009ce8b && cd /tmp/old && PYTHONPATH=. python /path/to/make_checkpoint_v1.py OUT
"""

import sys

import torch
from torch import nn

import selfsup


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x)).relu().mean((2, 3))


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = selfsup.TrainConfig(method="simclr", data="digits", batch_size=64, image_size=8, steps=12, log_every=3,
                              optimizer="lars", method_args=dict(proj_hidden_dim=16, proj_dim=8))
    selfsup.train(cfg, sys.argv[1], backbone=Tiny(), evaluate=False, show_progress=False, stop_at=5)
