"""Use a trained encoder: embed images to files, export the backbone, retrieve nearest neighbours.

:mod:`selfsup.use.embed`, :mod:`selfsup.use.export` and :mod:`selfsup.use.retrieve` back the
``selfsup embed``, ``selfsup export`` and ``selfsup retrieve`` commands.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from selfsup.errors import UserError


def output_file(path: str | Path, suffixes: Collection[str] | None = None) -> Path:
    """Check, before any work is done, that ``path`` has a known suffix and can be written (parents are created)."""
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise UserError(f"cannot tell the output type of '{p}'; end it in {', '.join(sorted(suffixes))}")
    if p.is_dir():
        raise UserError(f"output path '{p}' is a folder; give a file name")
    existed = p.exists()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "ab"):
            pass
    except OSError as e:
        raise UserError(f"cannot write '{p}': {e.strerror or e}") from None
    if not existed:
        p.unlink()
    return p
