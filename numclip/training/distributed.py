"""Multi-process training under `torchrun`: the process group (NCCL on GPUs, gloo on CPU), this
process's rank, and the few collectives training needs. Without torchrun it is one process and every
call is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from numclip.core.errors import NumclipError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes artifacts and logs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each process its own GPU (cuda:LOCAL_RANK); CPU stays CPU."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def gather_batch(self, local: torch.Tensor) -> torch.Tensor:
        """The global batch from each rank's part (rank r holds items r, r+W, ...), in one-process
        order, so batch-coupled losses (OrdinalCLIP's KL, L2RCLIP's pairs) see the whole batch.

        Gradients flow into this rank's part only, multiplied by W: DistributedDataParallel then
        averages the ranks' gradients into exactly the one-process gradient."""
        if not self.enabled:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.detach().contiguous())
        if local.requires_grad:
            parts[self.rank] = local + (self.world_size - 1) * (local - local.detach())
        return torch.stack(parts, dim=1).reshape(-1, *local.shape[1:])

    def gather_interleaved(self, local: torch.Tensor) -> torch.Tensor:
        """Undo `shard` (rank r holds items r, r+W, ...): every rank gets all items in order."""
        if not self.enabled:
            return local
        parts: list[torch.Tensor] = [None] * self.world_size  # type: ignore[list-item]
        dist.all_gather_object(parts, local.cpu())
        total = sum(p.shape[0] for p in parts)
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        for r, part in enumerate(parts):
            out[r::self.world_size] = part
        return out

    def shard(self, n: int) -> list[int]:
        """The indices of n items this rank handles (interleaved, so gathering restores the order)."""
        return list(range(self.rank, n, self.world_size))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def env_rank() -> int:
    """This process's rank as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    ctx = Dist(env_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device.type == "cuda":
            if torch.cuda.device_count() <= ctx.local_rank:
                here = os.environ.get("LOCAL_WORLD_SIZE", str(world))  # this machine's share of the processes
                raise NumclipError(f"torchrun started {here} processes on this machine but it has "
                                   f"{torch.cuda.device_count()} GPUs (LOCAL_RANK {ctx.local_rank})")
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx
