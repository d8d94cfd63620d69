"""The benchmark targets of ``python benchmarks/run.py`` (a command, not part of the selfsup package)."""
