"""``torch.distributed`` helpers for data-parallel trials (layer L0: torch only, no Ray).

A trial with ``search.resources.workers`` > 1 runs one process per worker in a process group
that Ray Train initialises (NCCL on GPUs, gloo on CPUs), or that a test initialises with
``torch.multiprocessing`` and gloo. The engine, the methods and the metrics call these helpers
unconditionally: in a single process (no process group, or a group of one) every collective is
the identity, so the single-process code path is unchanged.

Gradients through :func:`all_reduce_sum` and :func:`gather_cat` follow DistributedDataParallel's
convention: each process's loss is differentiated as if the *sum* of all processes' losses
depended on its inputs, and DDP then averages the gradients over the processes. A loss whose
value is the same global quantity on every process (a statistic of the global batch) therefore
gets exactly the single-process gradient, and so does a per-process mean over equal shards.

:class:`SyncBatchNorm` is BatchNorm with statistics over the global batch on any device;
:func:`convert_sync_batchnorm` uses ``torch.nn.SyncBatchNorm`` on CUDA (whose fused kernels need
a GPU) and it elsewhere.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "SyncBatchNorm",
    "all_gather_objects",
    "all_reduce_",
    "all_reduce_sum",
    "broadcast_",
    "broadcast_object",
    "collective_device",
    "convert_sync_batchnorm",
    "gather_cat",
    "global_mean",
    "is_distributed",
    "rank",
    "shard",
    "spawn",
    "world_size",
]


def world_size() -> int:
    """Processes in the default group (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_distributed() -> bool:
    """True in a process group of more than one process."""
    return world_size() > 1


def collective_device() -> torch.device:
    """Where tensors of a collective must live: this process's GPU for NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(count: int) -> slice:
    """This process's contiguous part of ``range(count)``: near-equal parts in rank order
    (the first ``count % world`` parts one longer), so the parts concatenate to the whole."""
    size, extra = divmod(count, world_size())
    start = rank() * size + min(rank(), extra)
    return slice(start, start + size + (rank() < extra))


def all_reduce_(tensor: torch.Tensor, *, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced (``sum``, ``max`` or ``min``) over the processes, in place, without
    gradient; returned for chaining."""
    if is_distributed():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def broadcast_(tensor: torch.Tensor, *, src: int = 0) -> torch.Tensor:
    """``tensor`` replaced, in place, by the one of process ``src``; returned for chaining."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(value: Any, *, src: int = 0) -> Any:
    """Process ``src``'s ``value`` (any picklable object), on every process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if not is_distributed():
        return [value]
    # Through a byte tensor rather than all_gather_object, so that the pickle protocol (and
    # nothing else) decides what travels.
    payload = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8).to(collective_device())
    sizes = [torch.zeros(1, dtype=torch.long, device=payload.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([payload.numel()], device=payload.device))
    longest = int(max(size.item() for size in sizes))
    padded = F.pad(payload, (0, longest - payload.numel()))
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return [
        pickle.loads(bytes(part[: int(size.item())].cpu().numpy()))  # noqa: S301 - our own processes
        for part, size in zip(gathered, sizes, strict=True)
    ]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _GatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]  # type: ignore[attr-defined]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rows: int = ctx.rows  # type: ignore[attr-defined]
        return grad[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes, differentiable (gradients summed over the
    processes, see the module docstring); ``tensor`` itself in a single process."""
    return _AllReduceSum.apply(tensor) if is_distributed() else tensor  # type: ignore[no-any-return]


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (the same shape on each) concatenated along dim 0 in rank
    order, differentiable; ``tensor`` itself in a single process. With the batch split across
    processes in rank order this is the global batch."""
    return _GatherCat.apply(tensor) if is_distributed() else tensor  # type: ignore[no-any-return]


def global_mean(tensor: torch.Tensor, *, dim: int) -> torch.Tensor:
    """The mean along ``dim`` over every process's ``tensor`` (the global batch, when ``dim`` is
    the batch dimension), differentiable; ``tensor.mean(dim)`` in a single process."""
    if not is_distributed():
        return tensor.mean(dim=dim)
    count = all_reduce_(torch.tensor(float(tensor.shape[dim]), device=tensor.device))
    return all_reduce_sum(tensor.sum(dim=dim)) / count


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all processes).

    The mean and the biased variance come from two differentiable all-reduces (sums, then the
    sum of squared deviations: no cancellation); the running statistics get the global mean and
    the unbiased global variance, as a single process with the whole batch computes them. In
    eval mode, or in a single process, it is ``F.batch_norm``. For CPU (gloo) processes, where
    ``torch.nn.SyncBatchNorm`` refuses to run.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = all_reduce_(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_reduce_sum(x.sum(dim=dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dim=dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        assert self.num_batches_tracked is not None and self.running_mean is not None
        assert self.running_var is not None
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer computing global-batch statistics: torch's
    ``SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm` elsewhere; weights and running statistics
    kept. A no-op in a single process."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def spawn(fn: Callable[..., Any], *args: Any, world_size: int, threads: int = 1, backend: str = "gloo") -> list[Any]:
    """``fn(*args)`` in ``world_size`` fresh processes joined in a process group on 127.0.0.1
    (each with ``threads`` torch threads); their return values (picklable), by rank.

    For tests and benchmarks of the data-parallel code without Ray (a trial's processes come
    from Ray Train). ``backend`` ``"gloo"`` (CPU) or ``"nccl"`` (rank r on GPU r, its current
    device). ``fn`` must be importable by name (a module-level function). An exception in any
    process is raised here (``torch.multiprocessing.ProcessRaisedException``).
    """
    import torch.multiprocessing as mp

    with socket.socket() as probe:  # a free port; the tiny race with other users is acceptable
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="sweeper-spawn-") as directory:
        mp.start_processes(
            _spawned,
            args=(fn, args, world_size, port, threads, backend, directory),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [pickle.loads(Path(directory, f"{r}.pkl").read_bytes()) for r in range(world_size)]  # noqa: S301


def _spawned(
    rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    world: int,
    port: int,
    threads: int,
    backend: str,
    directory: str,
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(*args)
        Path(directory, f"{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        for parameter, original in zip(converted.parameters(), module.parameters(), strict=True):
            parameter.requires_grad_(original.requires_grad)
        return converted.to(next(iter(module.state_dict().values()), torch.empty(0)).device)
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
