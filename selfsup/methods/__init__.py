"""Method registry: one file per method, each composing views, heads and a loss."""

from __future__ import annotations

import difflib

from selfsup.errors import UserError
from selfsup.methods.aet import AET
from selfsup.methods.anchor_neighbourhood import AND
from selfsup.methods.barlow import BarlowTwins
from selfsup.methods.base import Batch, Method
from selfsup.methods.bigan import BiGAN
from selfsup.methods.bownet import BoWNet
from selfsup.methods.byol import BYOL
from selfsup.methods.clip import CLIP
from selfsup.methods.cmc import CMC
from selfsup.methods.color_tracking import ColorTracking
from selfsup.methods.colorization import Colorization
from selfsup.methods.context import ContextPrediction
from selfsup.methods.context_encoder import ContextEncoder
from selfsup.methods.counting import Counting
from selfsup.methods.cpc import CPC
from selfsup.methods.dae import DenoisingAutoencoder
from selfsup.methods.damaged_jigsaw import DamagedJigsaw
from selfsup.methods.decoupling import Decoupling
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.exemplar import Exemplar
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.jule import JULE
from selfsup.methods.mae import MAE
from selfsup.methods.moco import MoCo
from selfsup.methods.motion_segmentation import MotionSegmentation
from selfsup.methods.multitask import MultiTask
from selfsup.methods.npid import NPID
from selfsup.methods.rotnet import RotNet
from selfsup.methods.shuffle_learn import ShuffleLearn
from selfsup.methods.simclr import SimCLR
from selfsup.methods.split_brain import SplitBrain
from selfsup.methods.ssgan import SSGAN
from selfsup.methods.supcon import SupCon
from selfsup.methods.super_resolution import SuperResolution
from selfsup.methods.supervised import Supervised
from selfsup.methods.synthetic import SyntheticMultiTask
from selfsup.methods.texttopicnet import TextTopicNet
from selfsup.methods.tracking import Tracking
from selfsup.methods.triplet import Triplet

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, BYOL, MoCo, NPID, BarlowTwins, SupCon, Triplet,
                                                        RotNet, Jigsaw, ContextPrediction, Counting, AET,
                                                        Colorization, SSGAN, DeepCluster, Supervised, Exemplar,
                                                        Decoupling, DamagedJigsaw, BoWNet, DenoisingAutoencoder,
                                                        SuperResolution, BiGAN, MAE, CPC, SplitBrain, CMC,
                                                        ContextEncoder, AND, CLIP, TextTopicNet, ShuffleLearn,
                                                        MotionSegmentation, Tracking, ColorTracking, JULE,
                                                        SyntheticMultiTask, MultiTask)}

__all__ = ["METHODS", "Batch", "Method", "get_method"]


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), METHODS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown method '{name}'; {hint}choose one of: {', '.join(METHODS)}") from None
