"""torch.distributed helpers. Every function is a no-op (and free) in a single-process run."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.batch = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, letting gradients flow back to every rank."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (no gradient)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_rows(local: torch.Tensor, share: int, n: int, device: torch.device) -> torch.Tensor:
    """All ranks' rows in rank order, on the CPU: rank r holds rows ``[r * share, (r + 1) * share)`` of ``n``
    (the last ones fewer); shares are padded to equal length for all_gather (on ``device``), then trimmed."""
    if not is_distributed():
        return local
    padded = torch.zeros(share, *local.shape[1:], dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    return gather(padded).cpu()[:n]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors should be on the CPU); ``obj`` itself in one process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over ranks in place (one all-reduce per dtype and device): what
    DistributedDataParallel does during backward, for steps it cannot wrap (several phases, each training
    its own parameters). No-op in a single process."""
    if not is_distributed():
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size()
        torch._foreach_copy_(grads, [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads)])


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (no gradient); ``x`` itself in a single process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def init_from_env(device: str) -> torch.device | None:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK in the environment).

    NCCL on GPU, gloo on CPU. Returns this process's device, or None when not launched by torchrun.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(sum) whose backward is again an all_reduce(sum) of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks, differentiably; the identity in a single process."""
    return _AllReduceSum.apply(x) if is_distributed() else x


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all ranks, on any device (torch's SyncBatchNorm needs a GPU).

    Mean and variance come from all-reduced sums, with gradients flowing through the reduction, so N
    processes with batch B normalise exactly as one process with batch N * B.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not is_distributed():
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        stats = all_reduce_with_grad(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


@torch.no_grad()
def average_bn_statistics(module: nn.Module) -> None:
    """Replace every batch norm's running mean and variance by their mean over ranks (one all-reduce).

    With per-rank batch norm (MoCo's shuffle BN, or ``sync_bn: false``) each rank tracks the statistics of
    its own batches; averaged before a checkpoint or an evaluation, every rank evaluates the model that
    rank 0 saves. No-op in a single process."""
    if not is_distributed():
        return
    stats = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for b in (m.running_mean, m.running_var) if b is not None]
    if not stats:
        return
    flat = torch.cat([b.flatten() for b in stats])
    dist.all_reduce(flat)
    flat /= world_size()
    torch._foreach_copy_(stats, list(flat.split([b.numel() for b in stats])))


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer with a global-batch one: torch's SyncBatchNorm on GPU, ours on CPU."""
    if any(p.is_cuda for p in module.parameters()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


def _to_global_bn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            for mine, theirs in zip(new.parameters(), child.parameters(), strict=True):
                mine.requires_grad_(theirs.requires_grad)  # a frozen layer (a teacher's) stays frozen
            new.train(child.training)
            setattr(module, name, new)
        else:
            _to_global_bn(child)
    return module

