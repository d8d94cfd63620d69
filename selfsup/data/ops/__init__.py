"""Batched image ops with per-sample parameters: crops, colour, blur (and the tile, patch, mask and Lab ops of
the pretext methods). Each op is a deterministic function of (images, params) plus a seeded sampler."""
