"""Several processes training one model: the process-group plumbing for `torchrun` (data parallelism).

    torchrun --nproc_per_node=N -m minidiff train RECIPE [key=value ...]

torchrun starts N copies of the program and gives each the environment variables RANK (0..N-1), WORLD_SIZE (N),
LOCAL_RANK (its GPU on this machine), MASTER_ADDR and MASTER_PORT. init_from_environment() joins them into one
process group: NCCL between GPUs, gloo between CPU processes. Without those variables (a plain `minidiff train`)
everything here is a no-op: rank 0 of a world of 1, so the training loop reads the same either way.

The loop (minidiff.training.loop) splits each step's batch across the processes, DistributedDataParallel averages
their gradients, and only rank 0 (is_main) writes logs, sample grids and checkpoints.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(ValueError):
    """Several processes cannot train this run; the message says why and what to do."""


class DataParallel(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that also lets the objective reach the model's other methods and attributes (a
    text-to-image model's encode_tokens): they run outside DDP's forward, and the gradients of the weights they use
    are averaged across the processes all the same."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def init_from_environment() -> bool:
    """Join torchrun's process group if this process was started by torchrun; True if it did (or had already).

    Tensors on CUDA GPUs travel by NCCL (each process on its own GPU, cuda:LOCAL_RANK), tensors on the CPU by gloo,
    so device=cpu works on a GPU machine too."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not all(name in os.environ for name in ENVIRONMENT) or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed; run `minidiff train` without torchrun")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's number, 0..world_size()-1 (0 without torchrun)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """How many processes train together (1 without torchrun)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's GPU on its machine (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True in the one process that writes files and prints: rank 0."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for without torchrun)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all processes (a new tensor; `value` itself without torchrun)."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def shard(batch_size: int) -> slice:
    """This process's examples of a global batch of batch_size: consecutive blocks, rank 0 first.

    (B,) -> rank r takes [r * B/N, (r + 1) * B/N); B must divide evenly, so every process weighs the same."""
    n = world_size()
    if batch_size % n:
        raise DistributedError(f"batch_size={batch_size} does not split evenly across {n} processes; use a multiple "
                               f"of {n}, e.g. batch_size={batch_size - batch_size % n or n}")
    size = batch_size // n
    return slice(rank() * size, (rank() + 1) * size)


def close() -> None:
    """Leave the process group (at the end of a torchrun run)."""
    if is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- sharded training (TrainConfig.shard)
# FSDP (torch.distributed.fsdp.fully_shard): each process keeps 1/N of every weight, gradient and AdamW moment, and
# gathers a layer's full weights only while it computes. Checkpoints hold the full tensors in the usual layout, so a
# sharded run's checkpoint loads anywhere (and a run may be resumed with or without shard).

def shard_model(module: torch.nn.Module) -> None:
    """Split the module's weights across the processes, in place (the whole module is one FSDP unit)."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(module)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gathered_state(module: torch.nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded module: on rank 0 only, on the CPU ({} elsewhere), or in every process on
    its device. Every process must call it (the shards travel)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(cpu_offload=not everywhere))


def gathered_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """{parameter name: its AdamW state} with full tensors, on rank 0 only ({} elsewhere). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True)).get("state", {})


def scatter_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (the same in every process) into a sharded module: each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options())


def scatter_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, dict]) -> None:
    """Load {parameter name: full AdamW state} (the same in every process) into the sharded module's optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = [name for name, _ in module.named_parameters()]
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": names}
              for group in optimizer.param_groups]       # the loop has one group: all the parameters
    set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": groups}, options=_options())
