"""Multi-process training set-up: ``torchrun --nproc_per_node=N -m coordgan_cli train RECIPE``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; with WORLD_SIZE > 1
the process group is started (NCCL on GPUs, gloo on CPU) and every process takes GPU
``LOCAL_RANK``. Multi-node: run the same torchrun line on every node with ``--nnodes``,
``--node_rank`` and a common ``--rdzv_endpoint`` (or ``--master_addr``/``--master_port``).

Gradients are synchronised explicitly, module by module, after each backward pass
(:meth:`Distributed.average_gradients`) rather than through DistributedDataParallel wrappers:
the training step calls several methods of each network (``map_structure``, ``synthesize``,
``extract_features`` …), which DDP's forward hooks would not see, and the explicit form makes it
plain that *every* trained network — the patch discriminator included — is averaged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from coordgan_cli.errors import UserError


@dataclass
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce and average the gradients of ``params`` (one flat buffer: one message)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def average_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of each named scalar over all processes (for logging and the NaN check)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every process if it is true on any."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def setup(device: torch.device) -> Distributed:
    """Join the torchrun job described by the environment (or run alone without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        return Distributed(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type != "cpu":
        if device.index is None or world > 1:
            device = torch.device(device.type, local_rank)
        torch.cuda.set_device(device)
    backend = "gloo" if device.type == "cpu" else "nccl"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the distributed job (rank {rank} of {world}, backend {backend}): {exc}") from exc
    return Distributed(rank, world, device)


def teardown(ctx: Distributed) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
