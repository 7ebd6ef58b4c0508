"""Data parallelism on PyTorch distributed, the same under `torchrun` and `accelerate launch`.

Both launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we read those
and nothing launcher-specific, so a recipe runs unchanged under either, or as one process.
Every rank shuffles with the same seed (identical global order) and takes its own slice of
each global batch; losses are normalised by global counts so that the update does not
depend on how a batch is split over ranks or micro-batches.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched with several processes (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def all_reduce_sum(value: float | torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """The sum over ranks as float64 (``value`` itself in one process or with ``info`` None)."""
    t = torch.as_tensor(value, dtype=torch.float64).clone()
    if info is not None and info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """Every rank's ``t`` (the same shape on every rank) concatenated along dim 0 in rank order."""
    if info is None or not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_reduce_gradients(params, info: DistInfo, bucket_elements: int = 1 << 24) -> None:
    """Sum the gradients of ``params`` over ranks in place (buckets of flattened tensors, one
    collective per bucket). For updates whose loss is already normalised by global counts, the
    sum is the gradient of the whole global batch (DDP's mean would divide it by the world
    size). A parameter without a gradient on this rank takes part with zeros, so every rank
    reduces the same tensors in the same order."""
    if not info.enabled:
        return
    grads = []
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket: list[torch.Tensor] = []
    size = 0

    def flush():
        if not bucket:
            return
        by_dtype: dict = {}
        for g in bucket:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in group:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        bucket.clear()

    for g in grads:
        bucket.append(g)
        size += g.numel()
        if size >= bucket_elements:
            flush()
            size = 0
    flush()


def broadcast_from_main(obj, info: DistInfo | None):
    """Rank 0's ``obj`` (a picklable value) on every rank; ``obj`` itself in one process."""
    if info is None or not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _block_lists(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """The transformer block lists (a ModuleList of same-class children, e.g. `model.layers`)."""
    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            if len({type(child) for child in module}) == 1:
                found.append(module)
    return found


def wrap_model(model: torch.nn.Module, info: DistInfo, strategy: str = "ddp") -> torch.nn.Module:
    """DDP (replicated weights) or FSDP2 (`fully_shard`: weights, gradients and optimiser state
    sharded over ranks, for models that do not fit one device; runs on CPU with gloo too).

    FSDP2 replaces the parameters with sharded DTensors in place, so build the optimiser
    *after* wrapping, and gather state with `full_model_state` / `full_optimizer_state`.
    """
    if not info.enabled or strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for blocks in _block_lists(model):
            for block in blocks:
                fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel strategy {strategy!r} (ddp, fsdp, none)")


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_model_state(model: torch.nn.Module) -> dict:
    """The whole (unsharded) model state dict on CPU. Collective under FSDP: call on every
    rank; rank 0 gets the tensors (other ranks an empty dict)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return getattr(model, "module", model).state_dict()


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimiser state (collective under FSDP, like `full_model_state`)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole optimiser state saved by `full_optimizer_state` (each rank keeps its shard)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def grad_sync_context(model: torch.nn.Module, sync: bool):
    """Skip the gradient reduction on accumulation micro-steps (DDP `no_sync`, FSDP2
    `set_requires_gradient_sync`)."""
    import contextlib

    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def toggled():
            model.set_requires_gradient_sync(sync)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return toggled()
    return contextlib.nullcontext()


def cleanup(info: DistInfo) -> None:
    """Leave the process group once every rank is done.

    Why the barrier and the pause: gloo's worker threads drop their last reference to a finished
    collective's tensors a moment after the collective has returned, and a tensor that Python no
    longer holds then takes the GIL to free its Python object. If that moment falls in
    interpreter shutdown, the thread is killed inside a destructor and the process aborts
    ("terminate called without an active exception"; seen here about once in 25 two-process
    runs, always on a rank with nothing left to do while rank 0 still saved; pytorch/pytorch
    PR 179291 describes it). ``destroy_process_group`` does not join those threads (cached
    references keep the group alive), so we give them that moment: every rank waits for the
    others, then yields the CPU briefly."""
    if info.enabled and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()
        dist.destroy_process_group()
        time.sleep(0.02)
