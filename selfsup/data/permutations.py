"""The permutation set of the jigsaw pretext task (Noroozi & Favaro, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles", ECCV 2016): the classes the network tells apart."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import UserError

MAX_TILES = 10  # 10! = 3.6M candidates (36 MB as bytes); 11! would take 440 MB
_TAKEN = 2**30  # marks a chosen candidate; later additions (at most tiles * tiles!) keep it below 2**31


def all_permutations(tiles: int) -> Tensor:
    """All ``tiles!`` permutations of ``range(tiles)`` in lexicographic order (as ``itertools.permutations``),
    ``(tiles!, tiles)`` int64."""
    return torch.from_numpy(_lexicographic(tiles)).long()


def _lexicographic(tiles: int) -> np.ndarray:
    """:func:`all_permutations` as uint8, built position by position: the permutations of ``k`` items that
    start with ``f`` are ``f`` followed by those of ``k - 1`` items with every value ``>= f`` moved up by one
    (an order-preserving relabelling)."""
    perms = np.zeros((1, 0), dtype=np.uint8)
    for k in range(1, tiles + 1):
        perms = np.concatenate([np.concatenate([np.full((len(perms), 1), first, dtype=np.uint8),
                                                perms + (perms >= first)], 1) for first in range(k)])
    return perms


def max_hamming_permutations(n: int, tiles: int = 9, seed: int = 0) -> Tensor:
    """``n`` permutations of ``range(tiles)`` far apart in Hamming distance, ``(n, tiles)`` int64.

    Algorithm 1 of Noroozi & Favaro (ECCV 2016), the "maximal" set: start from a permutation drawn uniformly
    (seeded by ``seed``), then repeatedly add the candidate, among all ``tiles!`` permutations not chosen yet,
    that maximises the *average* (equivalently, the summed) Hamming distance to the permutations already
    chosen -- not the minimum distance; ties go to the first candidate in lexicographic order (``argmax``).
    Row ``i`` is the ``i``-th choice. Vectorised over the candidates with a running sum: the summed distance
    of a candidate is ``chosen * tiles`` minus the running count of positions where it agrees with the chosen
    permutations, so each step adds one candidate's agreements and takes an ``argmin``.
    """
    if not 1 <= tiles <= MAX_TILES:
        raise UserError(f"jigsaw tiles must be between 1 and {MAX_TILES}, got {tiles}")
    total = math.factorial(tiles)
    if not 1 <= n <= total:
        raise UserError(f"the number of jigsaw permutations must be between 1 and {tiles}! = {total}, got {n}")
    # numpy for the greedy loop: its byte comparisons and argmin run about ten times faster than torch's on CPU
    candidates = _lexicographic(tiles)
    by_position = np.ascontiguousarray(candidates.T)  # (tiles, total): contiguous rows, fast comparisons
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(total, (1,), generator=generator))]
    agreement = np.zeros(total, dtype=np.int32)
    matches = np.empty(total, dtype=np.uint8)
    equal = np.empty(total, dtype=bool)
    for _ in range(n - 1):
        last = chosen[-1]
        matches.fill(0)
        for position, value in enumerate(candidates[last]):
            np.equal(by_position[position], value, out=equal)
            matches += equal.view(np.uint8)
        agreement += matches
        agreement[last] = _TAKEN
        chosen.append(int(agreement.argmin()))  # first minimum: the paper's argmax over the remaining set
    return torch.from_numpy(candidates[chosen]).long()
