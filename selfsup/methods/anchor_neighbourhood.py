"""AND: anchor neighbourhood discovery, a curriculum over NPID's memory bank (Huang, Dong, Gong, Zhu, ICML 2019)."""

from __future__ import annotations

import torch

from selfsup.data.ops.base import resize
from selfsup.data.views import augmented
from selfsup.dynamics.neighbourhoods import bank_neighbourhoods, curriculum_round, lowest
from selfsup.errors import UserError
from selfsup.losses.neighbourhood import neighbourhood_softmax
from selfsup.methods.base import Batch, EpochContext
from selfsup.methods.memory_bank import MemoryBankMethod
from selfsup.methods.panels import Panel


class AND(MemoryBankMethod):
    """NPID's instance discrimination (one augmented view, a linear 128-d head, L2-normalised, a memory bank updated
    with momentum 0.5, the non-parametric softmax over the whole bank at T = ``temperature``) that progressively
    lets images share a class with their nearest neighbours.

    The run is cut into ``rounds`` + 1 equal shares of its steps; a round begins at the first epoch past its share's
    start. Round 0 is instance discrimination (NPID). At the start of round r > 0, from the bank, on rank 0: every
    image's anchor neighbourhood is its ``neighbours`` most similar other bank rows, and the r / ``rounds`` of the
    images whose softmax over the bank (their row against every row, T) has the lowest entropy are selected as
    anchors (section 3.2: the paper's 4 rounds after the first, 25% more each). Each step, a selected anchor i loses
    -log(p_ii + sum_{j in N(i)} p_ij), any other image -log p_ii (section 3.1). The round, the selection and the
    neighbourhoods are buffers: a resumed run keeps the round's selection.
    """

    name = "and"
    paper = "Huang et al., Unsupervised Deep Learning by Neighbourhood Discovery, ICML 2019"
    base_lr = 0.01  # NPID's rate for the small convnet (the recipes set the paper's 0.03 at batch 128)

    def __init__(self, *args, rounds: int = 4, neighbours: int = 1, temperature: float = 0.1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if rounds < 1:
            raise UserError(f"and: rounds must be >= 1 (got {rounds})")
        if not 1 <= neighbours < self.num_samples:
            raise UserError(f"and: neighbours must be between 1 and the {self.num_samples - 1} other images of the "
                            f"data set (got {neighbours})")
        self.rounds, self.temperature = rounds, temperature
        self.register_buffer("round", torch.zeros((), dtype=torch.long))
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))  # of the last step: the round's clock
        self.register_buffer("selected", torch.zeros(self.num_samples, dtype=torch.bool))
        self.register_buffer("neighbours", torch.zeros(self.num_samples, neighbours, dtype=torch.long))
        self._images: torch.Tensor | None = None  # the pretraining set, for the neighbours ``views`` shows

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Fill the bank before the first step (:meth:`fill_bank`); at a round's first epoch, discover and select."""
        self.fill_bank(ctx)
        images = getattr(ctx, "images", None)
        self._images = images if isinstance(images, torch.Tensor) else None
        r = curriculum_round(float(self.progress), self.rounds)
        if r == int(self.round):
            return
        count, k = self.num_samples * r // self.rounds, self.neighbours.shape[1]

        def discover() -> tuple[torch.Tensor, torch.Tensor]:
            neighbours, entropy = bank_neighbourhoods(self.bank, k, self.temperature)
            return neighbours.cpu(), lowest(entropy, count).cpu()

        neighbours, selected = ctx.on_main(discover)
        self.neighbours.copy_(neighbours)
        self.selected.copy_(selected)
        self.round.fill_(r)

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.embed(batch)
        return neighbourhood_softmax(features, self.bank, batch.indices, self.neighbours[batch.indices],
                                     self.selected[batch.indices], self.temperature)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        super().after_step(progress)
        self.progress.fill_(progress)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        """The view; after round 0, each image's neighbours in the bank, which share its class if it is an anchor."""
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        r, idx = int(self.round), batch.indices.tolist()
        if r == 0:
            return [Panel(f"the view, round 0 of {self.rounds}: instance discrimination (its class is its own bank "
                          "row)", x, [f"instance {i}" for i in idx])]
        chosen = self.selected[batch.indices].tolist()
        panels = [Panel(f"the view, round {r} of {self.rounds}: {r}/{self.rounds} of the images are anchors whose "
                        "neighbours share their class", x,
                        [f"anchor {i}" if s else f"instance {i} (not selected)" for i, s in zip(idx, chosen)])]
        if self._images is None:
            return panels
        for j, column in enumerate(self.neighbours[batch.indices].T):
            shown = resize(self._images[column.to(self._images.device)], self.image_size).to(x.device)
            panels.append(Panel(f"its neighbour {j + 1} in the memory bank", shown,
                                [f"{n} of anchor {i}" if s else f"{n} (unused)"
                                 for n, i, s in zip(column.tolist(), idx, chosen)]))
        return panels
