"""selfsup: self-supervised visual representation learning, from pretext tasks to contrastive methods,
with the evaluation protocol (kNN, linear and per-layer probes against random init and supervised)."""

from selfsup import evaluate
from selfsup.api import export, pretrain, retrieve
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.engine.build import method_from_checkpoint
from selfsup.engine.trainer import Run, train
from selfsup.methods import METHODS
from selfsup.use.embed import embed

__version__ = "0.1.0"

__all__ = ["METHODS", "Run", "TrainConfig", "build_backbone", "embed", "evaluate", "export", "load_data",
           "method_from_checkpoint", "pretrain", "retrieve", "train"]
