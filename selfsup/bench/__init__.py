"""``selfsup bench``: the seeds' tables from one command (see :func:`selfsup.bench.runner.bench`)."""

from selfsup.bench.runner import bench

__all__ = ["bench"]
