"""The ``selfsup`` command line: every subcommand's flags (``selfsup --help``, ``selfsup train --help``, ...)."""

from __future__ import annotations

import argparse

from selfsup import __version__
from selfsup.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise UserError(f"{message} (see '{self.prog} --help')")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The flags that define a run's method, data and views (``train`` and ``views`` share them)."""
    a = p.add_argument
    a("--method", help="method name, see 'selfsup methods' (default simclr)")
    a("--data", help="digits | cifar10 | cifar100 | stl10 | a folder: class subfolders (labeled), a flat "
                     "folder (unlabeled), or a root with train/ and val/ or test/ (default digits)")
    a("--backbone", help="small | resnet18 | resnet50 | alexnet | nin | sngan | timm:NAME (default: the method's, "
                         "small for most; 'selfsup methods' lists them)")
    a("--method-arg", action="append", default=[], metavar="KEY=VALUE",
      help="a method option, e.g. temperature=0.2 (repeatable; 'selfsup methods NAME' lists them)")
    a("--augment", action="append", default=[], metavar="KEY=VALUE",
      help="an augmentation setting, e.g. blur_p=0.5 or crop_scale=[0.2,1.0] (repeatable)")
    a("--image-size", type=int, help="side of the network input in pixels (default: the data's; 16 for digits)")
    a("--seed", type=int, help="random seed (default 0); the same seed gives the same run")
    a("--config", help="YAML file with any of these keys (a run's config.yaml replays it); flags override it")
    a("--download", action="store_true", help="allow torchvision datasets to be downloaded")


def _views_parser(sub) -> None:
    p = sub.add_parser("views", help="a picture of what a method's network sees and must predict, for a few images",
                       description="Build a method as 'selfsup train' would (same flags and seed) and draw, for the "
                                   "first images of its first batch, exactly what the network sees (tiles, patch "
                                   "pairs, rotations, transformed or decolourised images, views) and what it must "
                                   "predict, one row per input or target. Check a pretext task by eye before "
                                   "training it.")
    _run_flags(p)
    p.add_argument("--count", type=int, default=8, help="how many images to show (2 to 32, default 8)")
    p.add_argument("--out", help="the PNG to write (default views-METHOD.png)")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="pretrain a method, then evaluate it against random init",
                       description="Pretrain a self-supervised method and evaluate the backbone (kNN and linear "
                                   "probe) next to the same backbone at random init. With no arguments: SimCLR "
                                   "on scikit-learn's digits, on the CPU, in about two minutes.")
    _run_flags(p)
    a = p.add_argument
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="training length in epochs (default 100)")
    g.add_argument("--steps", type=int, help="training length in optimiser steps")
    a("--batch-size", type=int, help="global batch size: images per optimiser step over all processes, each with "
                                     "all its views (default 256); under torchrun every process takes 1/N of it")
    a("--lr", type=float, help="peak learning rate (default: the method's base lr x batch/256)")
    a("--weight-decay", type=float, help="weight decay (default: the method's)")
    a("--optimizer", help="sgd | lars | adam | adamw (default: the method's)")
    a("--knn-every", type=int, help="run the kNN monitor every N epochs (default: off)")
    a("--log-every", type=int, help="steps between rows of metrics.csv (default 10; each epoch's last step too)")
    a("--out", help="run folder (default runs/METHOD-DATA-TIME)")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--device", help="auto | cpu | cuda (default auto)")
    a("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    a("--no-eval", action="store_true", help="skip the kNN / linear evaluation at the start and the end")
    a("--no-sync-bn", action="store_true", help="under torchrun: keep per-process batch norm (default: global BN)")
    a("--compile", action="store_true", help="torch.compile the backbone (GPU; a minute of compiling up front)")
    a("--stream", action="store_true", help="decode folder images on demand in DataLoader workers instead of once "
      "into memory (automatic above $SELFSUP_MAX_MEMORY_GB, default 16; wds: shards always stream)")
    a("--workers", type=int, default=None, help="DataLoader workers that decode streamed images (default: the cores "
      "available to this process, at most 16; never more than the cores)")
    a("--time-limit", type=float, metavar="MINUTES", help="end cleanly with a resumable checkpoint at the first "
      "log line after this many minutes (jobs with a wall-clock allowance); continue with --resume")
    a("--quiet", action="store_true", help="no progress bar")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints: knn, linear, per-layer probes, few labels, fine-tuning",
                       description="Evaluate backbones on a labeled train/test split. Every table also "
                                   "shows the same backbone at random init and random rescaled (the lower bounds).")
    p.add_argument("protocol", choices=["knn", "linear", "layers", "fid", "few-label", "finetune", "segmentation",
                                        "detection"],
                   help="knn: weighted kNN (k=200, T=0.1); linear: linear probe; layers: linear probe per stage; "
                        "fid: sample quality of a generative run (ssgan) against the test images; few-label: kNN "
                        "and linear probe trained on class-balanced subsets of the train labels; finetune: the "
                        "whole network with a new linear head, trained on the train labels; segmentation / "
                        "detection: the whole network fine-tuned with a decoder on its stage maps (mIoU) or as an "
                        "FCOS detector's body (mAP) on --data scenes, a VOC folder or coco:ROOT")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fraction", type=_fractions, help="few-label: fractions of every class's train labels, "
                                                       "comma-separated (default 0.01,0.1)")
    g.add_argument("--per-class", type=_positive, help="few-label: this many train labels per class instead")
    p.add_argument("--draws", type=_positive, default=3,
                   help="few-label: subsets drawn per fraction, seeds 0..N-1 (default 3; the table: mean ± std)")
    p.add_argument("--finetune", action="store_true", help="few-label: also fine-tune on every subset")
    p.add_argument("--epochs", type=_positive, help="fine-tuning epochs (default 30)")
    p.add_argument("--lr", type=float, help="fine-tuning: the head's peak learning rate (default 0.05)")
    p.add_argument("--backbone-lr", type=float, help="fine-tuning: the backbone's (default lr / 10; 0 freezes it)")
    p.add_argument("--init", action="append", choices=["pretrained", "random", "rescaled"],
                   help="finetune, segmentation, detection: the rows to fine-tune (repeatable; default all three)")
    p.add_argument("--features", help="fid: the network whose features compare real and generated images: a run "
                                      "folder / checkpoint of this project, or inception:PATH (torchvision "
                                      "Inception-v3 weights; only these give FIDs comparable to papers)")
    p.add_argument("--plot", metavar="FILE.png", help="layers: also draw top-1 against depth, a line per run and "
                                                      "a dashed one per random init; finetune: test top-1 against "
                                                      "epoch, a line per row")
    p.add_argument("--samples", type=_positive, default=10_000, help="fid: images of each kind (default 10000)")
    p.add_argument("--frames", type=_frames, help="knn, linear: probe these frames of each clip side by side "
                                                   "(indices, e.g. 0,4,7, or all; data with clips: a video folder, "
                                                   "moving-objects:motion): motion shows there, not in one frame")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="run folder or checkpoint.pt; repeat to compare several in one table")
    p.add_argument("--data", required=True, help="data SPEC with labels (as for train); segmentation and detection: "
                                                 "scenes, a VOC folder or coco:ROOT")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--download", action="store_true", help="allow torchvision datasets to be downloaded")


def _positive(value: str) -> int:
    """argparse type: a positive integer."""
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {value})")
    return int(value)


def _frames(value: str) -> list[int] | str:
    """argparse type: ``all`` or comma-separated frame indices."""
    if value == "all":
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or frame indices separated by commas, e.g. 0,4,7 "
                                         f"(got {value})") from None


def _fractions(value: str) -> list[float]:
    """argparse type: comma-separated fractions in (0, 1]."""
    try:
        fractions = [float(v) for v in value.split(",")]
    except ValueError:
        fractions = []
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise argparse.ArgumentTypeError(f"must be fractions in (0, 1] separated by commas, e.g. 0.01,0.1 "
                                         f"(got {value})")
    return fractions


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt of a trained backbone")


def _compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: the GPU when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _use_parsers(sub) -> None:
    p = sub.add_parser("embed", help="write one embedding per image of a folder (.pt, .npy or .csv)",
                       description="Embed every image of a folder (any layout) with a trained backbone. The "
                                   "extension of --out picks the format: .pt (tensor + file list), .npy (with "
                                   "OUT.paths.txt beside it) or .csv (path, label when the images sit in class "
                                   "folders, values). Unreadable files are listed and skipped.")
    _checkpoint_arg(p)
    p.add_argument("--data", required=True, help="folder of images (any layout), or one image")
    p.add_argument("--out", required=True, help="output file: .pt, .npy or .csv")
    _compute_args(p)
    p = sub.add_parser("export", help="save the backbone alone, loadable without selfsup (torchvision, timm, onnx)",
                       description="Save the trained backbone so that code without selfsup can load it: a state "
                                   "dict for torchvision.models.resnet18/50 or the timm model (ResNet backbones), "
                                   "or an ONNX graph (every backbone). Prints the lines that load it.")
    _checkpoint_arg(p)
    p.add_argument("--format", required=True, choices=["torchvision", "timm", "onnx"],
                   help="torchvision | timm: ResNet state dict; onnx: graph images -> features (needs "
                        "pip install \"selfsup[export]\")")
    p.add_argument("--out", required=True, help="output file, e.g. backbone.pt or backbone.onnx")
    p = sub.add_parser("retrieve", help="nearest neighbours of query images, as a picture grid and a CSV",
                       description="Find the --k nearest images of --data for every query, by the cosine "
                                   "similarity of backbone features centred on the mean feature of --data: "
                                   "unrelated images score about 0, identical ones 1 (the plain cosine of "
                                   "non-negative features is near 1 for any two images). Exact search; faiss "
                                   "when installed and --data holds more than 200k images. An image of --data "
                                   "that is the query itself (the same file, or the same pixels) is not listed. "
                                   "Writes a grid (query in the first column) and a CSV beside it: query, rank, "
                                   "neighbour, centred_cosine.")
    _checkpoint_arg(p)
    p.add_argument("--data", required=True,
                   help="folder of images to search (any layout; its embeddings are cached, so the next query "
                        "embeds the query alone), or the file 'selfsup embed' wrote from it with the same "
                        "--checkpoint (.pt, .npy or .csv: nothing is embedded again)")
    p.add_argument("--query", required=True, help="one image, or a folder of query images")
    p.add_argument("--k", type=_positive, default=8, help="neighbours per query (default 8)")
    p.add_argument("--include-self", action="store_true",
                   help="also list images of --data that are the query itself (the same file or the same pixels), "
                        "e.g. to find exact copies")
    p.add_argument("--out", required=True, help="the grid: .png, .jpg, .pdf or .svg; the CSV gets its name with .csv")
    _compute_args(p)
    p = sub.add_parser("shards", help="pack a folder of images into tar shards for streaming (wds: SPEC)",
                       description="Write the images of a folder (their file bytes, unchanged, in a shuffled order) "
                                   "into WebDataset-style tar shards, with a .cls label member per image when the "
                                   "folder has class subfolders. Prints the wds: SPEC that trains on them.")
    p.add_argument("folder", help="folder of images (class subfolders give labels)")
    p.add_argument("out", help="folder to write shard-000000.tar, shard-000001.tar, ... into")
    p.add_argument("--per-shard", type=_positive, default=1000, help="images per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace the shards already in OUT")


def _bench_parser(sub) -> None:
    from selfsup.bench.cells import EVALUATIONS
    from selfsup.bench.rows import BUDGETS

    p = sub.add_parser("bench", help="the seeds' tables: pretrain every method, evaluate each, one report",
                       description="Pretrain every method of --methods at a budget (finished runs in --out are kept, "
                                   "interrupted ones resumed), evaluate each next to random init, random rescaled and "
                                   "supervised, and write OUT/report.md, OUT/report.html and one JSON file per cell "
                                   "(result, command, commit). Run it again to continue where it stopped.")
    p.add_argument("--methods", default="all", help="all (every method the data can train) or a comma-separated list")
    p.add_argument("--data", default="cifar10", help="the labeled data set to pretrain and evaluate on")
    p.add_argument("--budget", default="cpu", choices=list(BUDGETS),
                   help="cpu: small convnet, 1000 steps of 256; gpu: ResNet-18, 200 epochs of 512; smoke: seconds")
    p.add_argument("--evaluations", default="knn,linear",
                   help=f"comma-separated, or all: {', '.join(EVALUATIONS)}")
    p.add_argument("--transfer", help="the labeled data set of the transfer evaluation (e.g. a Caltech-101 folder); "
                                      "dense fine-tunes on the generated scenes")
    p.add_argument("--out", default="runs/bench", help="the bench folder: run folders, cells and the report")
    p.add_argument("--force", action="store_true", help="train and evaluate everything again")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the budget's)")
    p.add_argument("--download", action="store_true", help="download named data sets that are not there yet")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="selfsup", description="Self-supervised visual representation learning.")
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(sub)
    _views_parser(sub)
    _eval_parser(sub)
    _use_parsers(sub)
    _bench_parser(sub)
    p = sub.add_parser("methods", help="list the methods (with their papers) and backbones; with a NAME, its options")
    p.add_argument("name", nargs="?", help="a method: print what it does and its options with their defaults")
    return parser
