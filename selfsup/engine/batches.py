"""Where every step's batch comes from: the epoch's order over the pretraining set (shuffled, or drawn by the
method's sampling weights), sliced per rank, from memory or from a stream; and the one place seeds are derived."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

from selfsup.config import TrainConfig
from selfsup.data.sources import ImageSet
from selfsup.distributed import rank, world_size
from selfsup.errors import UserError
from selfsup.methods import Batch

#: offsets that keep the seeds of different purposes apart; "order" and "augment" share 0, as they always
#: have (the two generators draw different things), so that runs keep their numbers
_PURPOSES = {"order": 0, "augment": 0, "shards": 0, "epoch": 1 << 40}


def seed_for(purpose: str, seed: int, index: int) -> int:
    """The seed of ``purpose`` (epoch ``order``, a step's ``augment``ation, a streamed epoch's ``shards``, the
    ``epoch`` hook's generator) for the run seed ``seed`` and the step or epoch ``index``."""
    return seed * 1_000_003 + index + _PURPOSES[purpose]


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The epoch's sample order: a permutation, or ``n`` draws with replacement by per-sample ``weights``."""
    g = torch.Generator().manual_seed(seed_for("order", seed, epoch))
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(weights.double().cpu(), n, replacement=True, generator=g)


def _open_stream(pretrain: ImageSet, cfg: TrainConfig, epoch: int, pos: int, per_epoch: int, device: torch.device,
                 weights: torch.Tensor | None):
    """Batches of a streamed set from step ``pos`` of ``epoch`` on, for this rank (see selfsup.data.stream).

    A folder follows the same global order as in-memory data (exact resume, disjoint rank shards);
    tar shards are dealt to ranks and workers per epoch, and a rank that runs out of batches before
    the epoch's last step starts another pass."""
    from selfsup.data.stream import FileImages

    world, local, pin = world_size(), cfg.batch_size // world_size(), device.type == "cuda"
    if isinstance(pretrain.images, FileImages):
        order = epoch_order(len(pretrain), cfg.seed, epoch, weights)[: per_epoch * cfg.batch_size]
        mine = order.view(per_epoch, world, local)[:, rank()].reshape(-1)
        return pretrain.images.batches(mine, pos, local, cfg.workers, pin, pretrain.labels)
    if weights is not None:
        raise UserError(f"method '{cfg.method}' samples by weights, which tar shards cannot (they only stream); "
                        "train on the image folder instead")

    def passes():
        for n in itertools.count():
            got = False
            for item in pretrain.images.batches(seed_for("shards", cfg.seed, epoch * 1009 + n), rank(), world,
                                                pos if n == 0 else 0, local, cfg.workers, pin):
                got = True
                yield item
            if not got:
                raise UserError(f"the shards give process {rank()} no full batch of {local} images per worker; "
                                "use fewer --workers or a smaller --batch-size")
    return passes()


def batches(pretrain: ImageSet, images: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig, start: int,
            total: int, per_epoch: int, device: torch.device, before_fork: Callable[[], None],
            epoch_start: Callable[[int], torch.Tensor | None], weights: torch.Tensor | None,
            fields: dict[str, torch.Tensor] | None = None) -> Iterator[Batch]:
    """This rank's batch of every step from ``start`` on: a slice of the epoch's global order from ``images``
    (in memory, on the device), or the next batch of a stream (``before_fork`` runs before a stream starts its
    worker processes). Each carries its step's own augmentation seed.

    ``epoch_start(epoch)`` runs before an epoch's first batch is drawn and returns the epoch's sampling weights
    (or None); ``weights`` are the current epoch's when the run resumes in its middle. ``fields``: the in-memory
    samples' other fields (:attr:`ImageSet.fields`), sliced like the images; a stream yields its own."""
    order, stream, local = None, None, cfg.batch_size // world_size()
    for step in range(start, total):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0:
            weights = epoch_start(epoch)
        # augmentation parameters are drawn on the device: no host-device traffic in the step
        generator = torch.Generator(device).manual_seed(seed_for("augment", cfg.seed, step))
        if pretrain.streamed:  # workers decode; pinned batches are copied without blocking
            if stream is None or pos == 0:
                before_fork()
                stream = _open_stream(pretrain, cfg, epoch, pos, per_epoch, device, weights)
            idx, x, y, *extra = next(stream)  # tar shards may add a dict of fields
            yield Batch(images=x.to(device, non_blocking=True),
                        labels=None if y is None else y.to(device, non_blocking=True),
                        indices=idx.to(device, non_blocking=True), generator=generator, progress=step / total,
                        fields={k: v.to(device, non_blocking=True) for k, v in (extra[0] if extra else {}).items()})
        else:
            if order is None or pos == 0:  # one host-to-device copy per epoch, none per step
                order = epoch_order(len(images), cfg.seed, epoch, weights).to(images.device)
            # this rank's slice of the global batch: disjoint shards, together exactly one global batch
            first = pos * cfg.batch_size + rank() * local
            idx = order[first : first + local]
            yield Batch(images=images[idx], labels=None if labels is None else labels[idx],
                        indices=idx.to(device), generator=generator, progress=step / total,
                        fields={k: v[idx] for k, v in (fields or {}).items()})
