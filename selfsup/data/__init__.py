"""Data: sources decoded once to uint8 tensors, batched on-device augmentation, view recipes."""

from selfsup.data.sources import DATASETS, Dataset, ImageSet, load_data

__all__ = ["DATASETS", "Dataset", "ImageSet", "load_data"]
