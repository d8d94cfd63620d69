"""The ``selfsup`` command: train, eval, methods.

Bad input ends with one line on stderr and exit code 2; a diverged run with exit code 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfsup.errors import TrainingDiverged, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise UserError(f"{message} (see '{self.prog} --help')")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="pretrain a method, then evaluate it against random init",
                       description="Pretrain a self-supervised method and evaluate the backbone (kNN and linear "
                                   "probe) next to the same backbone at random init. With no arguments: SimCLR "
                                   "on scikit-learn's digits, on the CPU, in about two minutes.")
    a = p.add_argument
    a("--method", help="method name, see 'selfsup methods' (default simclr)")
    a("--data", help="digits | cifar10 | cifar100 | stl10 | a folder: class subfolders (labeled), a flat "
                     "folder (unlabeled), or a root with train/ and val/ or test/ (default digits)")
    a("--backbone", help="small | resnet18 | resnet50 (default small)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="training length in epochs (default 100)")
    g.add_argument("--steps", type=int, help="training length in optimiser steps")
    a("--batch-size", type=int, help="global batch size: images per step, each with all its views (default 256)")
    a("--lr", type=float, help="peak learning rate (default: the method's base lr x batch/256)")
    a("--weight-decay", type=float, help="weight decay (default: the method's)")
    a("--optimizer", help="sgd | lars (default: the method's)")
    a("--image-size", type=int, help="side of the network input in pixels (default: the data's; 16 for digits)")
    a("--seed", type=int, help="random seed (default 0); the same seed gives the same run")
    a("--knn-every", type=int, help="run the kNN monitor every N epochs (default: off)")
    a("--config", help="YAML file with any of these keys (a run's config.yaml replays it); flags override it")
    a("--out", help="run folder (default runs/METHOD-DATA-TIME)")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--device", help="auto | cpu | cuda (default auto)")
    a("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    a("--download", action="store_true", help="allow torchvision datasets to be downloaded")
    a("--no-eval", action="store_true", help="skip the kNN / linear evaluation at the start and the end")
    a("--quiet", action="store_true", help="no progress bar")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints: knn, linear, or per-layer linear probes",
                       description="Evaluate frozen backbones on a labeled train/test split. Every table also "
                                   "shows the same backbone at random init (the lower bound).")
    p.add_argument("protocol", choices=["knn", "linear", "layers"],
                   help="knn: weighted kNN (k=200, T=0.1); linear: linear probe; layers: linear probe per stage")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="run folder or checkpoint.pt; repeat to compare several in one table")
    p.add_argument("--data", required=True, help="data SPEC with labels (as for train)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--download", action="store_true", help="allow torchvision datasets to be downloaded")


def _run_train(args: argparse.Namespace) -> int:
    from selfsup.config import TrainConfig, config_from_dict, load_config
    from selfsup.engine.trainer import results_table, train

    values = TrainConfig().to_dict()
    if args.config:
        values.update(load_config(args.config))
    for key in ("method", "data", "backbone", "epochs", "steps", "batch_size", "lr", "weight_decay", "optimizer",
                "image_size", "seed", "knn_every", "device"):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
            if key in ("epochs", "steps"):  # the other one of the pair no longer applies
                values["steps" if key == "epochs" else "epochs"] = None
    values["download"] = values["download"] or args.download
    cfg = config_from_dict(values)
    run = train(cfg, args.out, overwrite=args.overwrite, resume=args.resume, evaluate=not args.no_eval,
                show_progress=not args.quiet)
    m = run.metrics
    print(f"\n{m['steps']} steps in {m['train_seconds']:.0f} s ({m['samples_per_second']:.0f} samples/s) "
          f"on {m['device']}; run folder: {run.out}")
    if "knn_top1" in m:
        print(results_table(m))
    elif not run.data.evaluable:
        print("(no labeled train/test split in this data, so no evaluation)")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from selfsup import evaluate
    from selfsup.backbones import stage_names
    from selfsup.data import load_data
    from selfsup.engine.build import method_from_checkpoint
    from selfsup.engine.trainer import resolve_device
    from selfsup.evaluate.report import format_table

    device = resolve_device(args.device)
    loaded = [method_from_checkpoint(c) for c in args.checkpoint]
    size = loaded[0][1]["image_size"]
    data = load_data(args.data, size, args.download)
    if not data.evaluable:
        raise UserError(f"'{args.data}' has no labeled train and test splits to evaluate on")
    first = loaded[0][0]
    rand = method_from_checkpoint(args.checkpoint[0], trained=False)[0].backbone
    rows = [(f"{ck['config']['method']} ({Path(p).name})", m.backbone.to(device))
            for p, (m, ck) in zip(args.checkpoint, loaded)] + [("random init", rand.to(device))]
    if args.protocol == "layers":
        header = ["backbone"] + stage_names(first.backbone)
        table = [[name] + list(evaluate.layers(b, data.train, data.test, size, device).values()) for name, b in rows]
    else:
        fn = evaluate.knn if args.protocol == "knn" else evaluate.linear
        header = ["backbone", f"{args.protocol} top-1 %"]
        table = [[name, fn(b, data.train, data.test, image_size=size, device=device)] for name, b in rows]
    print(format_table(header, table))
    return 0


def _run_methods(_: argparse.Namespace) -> int:
    from selfsup.backbones import BACKBONES
    from selfsup.methods import METHODS

    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {cls.paper}")
    print("\nbackbones:")
    for name, text in BACKBONES.items():
        print(f"  {name:<9} {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="selfsup", description="Self-supervised visual representation learning.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(sub)
    _eval_parser(sub)
    sub.add_parser("methods", help="list the methods (with their papers) and backbones")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return {"train": _run_train, "eval": _run_eval, "methods": _run_methods}[args.command](args)
    except UserError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("selfsup: interrupted; resume with --resume RUN_FOLDER", file=sys.stderr)
        return 130
