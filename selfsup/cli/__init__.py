"""The ``selfsup`` command: train, views, eval, bench, methods, and embed, export, retrieve, shards with a trained
encoder.

Bad input ends with one line on stderr and exit code 2; a diverged run with exit code 3.
"""

from __future__ import annotations

import os
import sys

from selfsup.cli import commands
from selfsup.cli.parsers import build_parser
from selfsup.errors import TrainingDiverged, UserError

COMMANDS = {"train": commands.run_train, "views": commands.run_views, "eval": commands.run_eval,
            "methods": commands.run_methods, "embed": commands.run_embed, "export": commands.run_export,
            "retrieve": commands.run_retrieve, "shards": commands.run_shards, "bench": commands.run_bench}


def _say(message: str) -> None:
    """Errors are printed once, by rank 0 of a torchrun job (or the only process)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser, args = build_parser(), None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return COMMANDS[args.command](args)
    except UserError as e:
        _say(f"selfsup: error: {e}")
        return 2
    except TrainingDiverged as e:
        _say(f"selfsup: error: {e}")
        return 3
    except KeyboardInterrupt:
        resumable = getattr(args, "command", None) == "train"
        _say("selfsup: interrupted" + ("; continue with selfsup train --resume RUN_FOLDER" if resumable else ""))
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
