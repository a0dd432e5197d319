"""Process-group setup under torchrun and a feature gather that keeps the local gradient."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; world_size 1 without torchrun."""

    rank: int  # global rank, 0 for a single process
    local_rank: int  # rank on this host, selects cuda:LOCAL_RANK
    world_size: int  # number of processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group that torchrun describes in RANK, LOCAL_RANK and WORLD_SIZE.

    Without those variables the run is a single process and no group is created. The backend is
    NCCL on CUDA and Gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(rank=0, local_rank=0, world_size=1)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    logger.info("joined process group: rank %d of %d (local rank %d)", rank, world_size, local_rank)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size)


def gather_with_local_grad(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate ``tensor`` [B, D] from every rank into [world_size * B, D].

    ``all_gather`` returns copies without autograd history, so the local shard is put back in
    its slot: gradients reach this rank's features, and DistributedDataParallel's all-reduce
    adds the other ranks' contributions to the parameters. Every rank must pass the same B.
    """
    if not context.enabled:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    gathered[context.rank] = tensor
    return torch.cat(gathered, dim=0)


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
