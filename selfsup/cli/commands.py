"""What each ``selfsup`` subcommand does with its parsed flags (the heavy imports stay inside the functions, so
``selfsup --help`` is quick)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from selfsup.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


def run_bench(args: argparse.Namespace) -> int:
    from selfsup.bench import bench

    bench(args.methods, args.data, args.budget, args.evaluations, args.out, args.transfer, args.force, args.device,
          args.download, say=_note)
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from selfsup.data.folder import IMAGE_EXTENSIONS, _common_size, _images_in
    from selfsup.data.sources import DEFAULT_STREAM_SIZE
    from selfsup.data.stream import printable, shard_spec, write_shards

    root = Path(args.folder)
    if not root.is_dir():
        raise UserError(f"'{printable(root)}' is not a folder")
    files = _images_in(root)
    if not files:
        raise UserError(f"no images found in '{printable(root)}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"'{printable(out)}' is a file, not a folder")
    labels = None
    if all(f.parent != root for f in files):
        classes = sorted({f.parent.name for f in files})
        labels = [classes.index(f.parent.name) for f in files]
    shards = write_shards(files, labels, out, args.per_shard, overwrite=args.overwrite)
    size = _common_size(files)  # what training on the folder would decode to; shards get DEFAULT_STREAM_SIZE
    flag = "" if size == DEFAULT_STREAM_SIZE else f" --image-size {size}"
    print(f"{len(files)} images{' with labels' if labels else ''} in {len(shards)} shard(s); train on them with\n"
          f"  selfsup train --data '{printable(shard_spec(shards))}'{flag}")
    return 0


def _key_values(pairs: list[str], flag: str) -> dict:
    """``["a=1", "b=[0.2, 1.0]"]`` -> ``{"a": 1, "b": [0.2, 1.0]}``, each value read as YAML."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} takes KEY=VALUE (got '{pair}')")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag} {key.strip()}: cannot read the value '{value}'") from None
    return out


def _config_values(args: argparse.Namespace, keys: tuple[str, ...]) -> dict:
    """The config the flags describe, as a dict: the defaults, then ``--config``, then the flags ``keys`` that were
    given, ``--method-arg`` and ``--augment`` on top of the file's, and ``--download``."""
    from selfsup.config import TrainConfig, load_config

    values = TrainConfig().to_dict()
    if args.config:
        values.update(load_config(args.config))
    for key in keys:
        v = getattr(args, key)
        if v is not None:
            values[key] = v
            if key in ("epochs", "steps"):  # the other one of the pair no longer applies
                values["steps" if key == "epochs" else "epochs"] = None
    for key, pairs in (("method_args", args.method_arg), ("augment", args.augment)):
        values[key] = {**(values[key] or {}), **_key_values(pairs, "--" + key.replace("_args", "-arg"))}
    values["download"] = values["download"] or args.download
    return values


def run_train(args: argparse.Namespace) -> int:
    from selfsup.config import config_from_dict
    from selfsup.distributed import is_main_process
    from selfsup.engine.trainer import results_table, train

    values = _config_values(args, ("method", "data", "backbone", "epochs", "steps", "batch_size", "lr",
                                   "weight_decay", "optimizer", "image_size", "seed", "knn_every", "log_every",
                                   "device", "workers"))
    values["sync_bn"] = values["sync_bn"] and not args.no_sync_bn
    values["compile"] = values["compile"] or args.compile
    values["stream"] = values["stream"] or args.stream
    cfg = config_from_dict(values)
    run = train(cfg, args.out, overwrite=args.overwrite, resume=args.resume, evaluate=not args.no_eval,
                show_progress=not args.quiet, time_limit=args.time_limit)
    if not is_main_process():
        return 0
    m = run.metrics
    if m.get("stopped"):
        print(f"\ntime limit: stopped after step {m['steps']} of {m['total_steps']}; continue with "
              f"selfsup train --resume {run.out}")
        return 0
    print(f"\n{m['steps']} steps in {m['train_seconds']:.0f} s ({m['samples_per_second']:.0f} samples/s) "
          f"on {m['device']}; run folder: {run.out}")
    if "knn_top1" in m:
        print(results_table(m))
    elif not run.data.evaluable:
        print("(no labeled train/test split in this data, so no evaluation)")
    return 0


def run_views(args: argparse.Namespace) -> int:
    from selfsup.config import config_from_dict
    from selfsup.data.stream import printable
    from selfsup.use.views import save_views

    cfg = config_from_dict({**_config_values(args, ("method", "data", "backbone", "image_size", "seed")),
                            "device": "cpu"})
    print(f"views of {cfg.method} on {printable(cfg.data)}: reading the data and preparing the first epoch ...",
          flush=True)
    print(printable(save_views(cfg, args.out or f"views-{cfg.method}.png", args.count)))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from selfsup import evaluate
    from selfsup.backbones import stage_names
    from selfsup.cli.evaluations import eval_rows, run_dense, run_few_label, run_finetune
    from selfsup.engine.trainer import resolve_device
    from selfsup.evaluate.report import format_table

    device = resolve_device(args.device)
    protocols = {"fid": run_fid, "few-label": run_few_label, "finetune": run_finetune, "segmentation": run_dense,
                 "detection": run_dense}
    if args.protocol in protocols:
        return protocols[args.protocol](args, device)
    if args.plot and (args.protocol != "layers" or Path(args.plot).suffix.lower() != ".png"):
        raise UserError("--plot draws the per-stage curves of 'eval layers' into a .png file")
    if args.frames is not None and args.protocol not in ("knn", "linear"):
        raise UserError("--frames is an option of 'eval knn' and 'eval linear'")
    tables: dict[tuple, list] = {}
    curves: list[tuple[str, list[str], list[float]]] = []
    rows = eval_rows(args)
    over = ""
    if args.frames is not None:
        evaluate.probed_frames(rows[0].data.test, args.frames)  # clips, and those frames in them, before any work
        over = f" (frames {args.frames if args.frames == 'all' else ','.join(map(str, args.frames))})"
    for label, curve, backbone, size, encoder, data in rows:  # each run, its random init and rescaled
        _note(f"{args.protocol}: {label.strip()} ({backbone}, {size} px) on {len(data.train)} + {len(data.test)} "
              f"images ...")
        kw = dict(image_size=size, device=device)
        if args.protocol == "layers":
            scores = evaluate.layers(encoder.to(device), data.train, data.test, progress=lambda m: _note("  " + m),
                                     **kw)
            key = ("run", "backbone", *stage_names(encoder))
        else:
            fn = evaluate.knn if args.protocol == "knn" else evaluate.linear
            scores = {"": fn(encoder.to(device), data.train, data.test, frames=args.frames, **kw)}
            key = ("run", "backbone", f"{args.protocol} top-1 %{over}")
        tables.setdefault(key, []).append([label, f"{backbone}, {size} px", *scores.values()])
        curves.append((curve, list(scores), list(scores.values())))
    if args.plot:
        from selfsup.evaluate.report import plot_layers

        plot_layers(curves, Path(args.plot), f"linear probe per stage on {Path(args.data).name}")
    note = "\n(each stage's map average-pooled to at most 2048 values)" if args.protocol == "layers" else ""
    print("\n\n".join(format_table(list(header), table) for header, table in tables.items()) + note)
    return 0


def _note(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def run_fid(args: argparse.Namespace, device: torch.device) -> int:
    from selfsup.use.fid import fid_table

    if not args.features:
        raise UserError("eval fid needs --features: a run folder of this project or inception:PATH")
    print(fid_table(args.checkpoint, args.data, args.features, args.samples, device, args.download))
    return 0


def run_methods(args: argparse.Namespace) -> int:
    import inspect

    from selfsup.backbones import BACKBONES
    from selfsup.config import TrainConfig
    from selfsup.engine.build import method_options, optimizer_settings
    from selfsup.methods import METHODS, get_method

    if args.name:
        cls = get_method(args.name)
        print(f"{cls.name}: {cls.paper}\n")
        doc = inspect.getdoc(cls)
        if doc:
            print(doc.replace("``", "") + "\n")
        for name, s in optimizer_settings(TrainConfig(method=cls.name)).items():
            print(f"optimiser {name}: {s.optimizer}, lr {s.lr:g}{' (x batch/256)' if name == 'main' else ''}, weight "
                  f"decay {s.weight_decay:g}, {s.schedule} schedule")
        print("options (--method-arg KEY=VALUE, or method_args: in a --config file):")
        for key, default in method_options(cls).items():
            print(f"  {key} = {default!r}")
        return 0
    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {'[needs labels] ' if cls.needs_labels else ''}{cls.paper}")
    print("\nbackbones:")
    for name, text in BACKBONES.items():
        print(f"  {name:<9} {text}")
    return 0


def _backbone(checkpoint: str, device: str) -> tuple[nn.Module, int, torch.device]:
    """The trained encoder of a run folder or checkpoint, on ``device``, and the image size it was trained at."""
    from selfsup.engine.build import method_from_checkpoint
    from selfsup.engine.trainer import resolve_device

    dev = resolve_device(device)
    method, ckpt = method_from_checkpoint(checkpoint)
    return method.encoder().to(dev), ckpt["image_size"], dev


def run_embed(args: argparse.Namespace) -> int:
    from selfsup.data.folder import load_images
    from selfsup.data.stream import printable
    from selfsup.use import output_file
    from selfsup.use.embed import FORMATS, embed, save_embeddings

    out = output_file(args.out, FORMATS)
    backbone, size, device = _backbone(args.checkpoint, args.device)
    images = load_images(args.data, size)
    feats, paths = embed(backbone, images, size, args.batch_size, device, show_progress=not args.quiet)
    labels = [images.classes[i] for i in images.labels.tolist()] if images.labeled else None
    written = save_embeddings(feats, paths, out, labels)
    print(f"{len(paths)} embeddings of size {feats.shape[1]}: {', '.join(map(printable, written))}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from selfsup.data.stream import printable
    from selfsup.use import output_file
    from selfsup.use.export import export

    out = output_file(args.out)
    backbone, size, _ = _backbone(args.checkpoint, "cpu")
    print(printable(export(backbone, args.format, out, size)))
    return 0


def run_retrieve(args: argparse.Namespace) -> int:
    from selfsup.data.stream import printable
    from selfsup.use.retrieve import retrieval_outputs, retrieve, save_retrieval

    grid, table = retrieval_outputs(args.out)
    backbone, size, device = _backbone(args.checkpoint, args.device)
    nb = retrieve(backbone, args.data, args.query, args.k, size, args.batch_size, device, not args.quiet,
                  include_self=args.include_self)
    save_retrieval(nb, grid, table, title=f"{Path(args.checkpoint).name}: nearest neighbours in {Path(args.data).name}")
    print(f"{len(nb.queries)} queries x {nb.positions.shape[1]} neighbours: {printable(grid)}, {printable(table)}")
    return 0
