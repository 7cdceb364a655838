"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`) for the trainer.

Launched with an Accelerate config whose `distributed_type` is FSDP (configs/accelerate/fsdp*.yaml), the trainer
shards each transformer block and the root of the model over all processes, on GPUs (NCCL) and on CPUs (gloo,
which is how the tests check it). Parameters, gradients and AdamW moments are sharded; the EMA keeps only this
rank's shard of the running average (`EMA.shard_like`) and gathers a full copy for sampling, evaluation, SRA's
teacher and checkpoints. Checkpoints hold full, unsharded tensors keyed by parameter name, the same format as a
DDP run's, so a run may move between DDP and FSDP (or another process count) and every sampling/eval command
reads FSDP runs unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

TRUE = {"1", "true", "yes"}


@dataclass(frozen=True)
class FSDPSettings:
    reshard_after_forward: bool = True  # FULL_SHARD (ZeRO-3); False keeps gathered params to backward (ZeRO-2)


def fsdp_settings(distributed_type: str, env: dict[str, str] | None = None) -> FSDPSettings | None:
    """FSDP settings from what `accelerate launch --config_file …` exports, or None for DDP/one process.

    On CPU, Accelerate reports MULTI_CPU even for an FSDP config; the launcher's ACCELERATE_USE_FSDP says it.
    Raises ValueError, naming the config key, for settings this trainer does not implement."""
    env = os.environ if env is None else env
    if distributed_type != "FSDP" and env.get("ACCELERATE_USE_FSDP", "").lower() not in TRUE:
        return None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(f"fsdp_config.fsdp_version is {version}: this trainer shards with FSDP2 "
                         "(torch fully_shard); set `fsdp_version: 2` (see configs/accelerate/fsdp.yaml)")
    if env.get("FSDP_OFFLOAD_PARAMS", "false").lower() in TRUE:
        raise ValueError("fsdp_config.fsdp_offload_params is not supported; SiT-XL/2 fits on one GPU sharded")
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() in TRUE:
        raise ValueError("fsdp_config.fsdp_activation_checkpointing is not used; set "
                         "--model.grad_checkpointing=true instead (it keeps LayerSync's captured blocks)")
    strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "1", "2"):
        raise ValueError(f"fsdp_config.fsdp_sharding_strategy {strategy} is not supported; use FULL_SHARD or "
                         "SHARD_GRAD_OP (or DDP: configs/accelerate/multi_node.yaml)")
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "").lower()
    if reshard:
        reshard_after_forward = reshard in TRUE or reshard == "full_shard"
    else:
        reshard_after_forward = strategy in ("FULL_SHARD", "1")
    return FSDPSettings(reshard_after_forward=reshard_after_forward)


def device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (torch.distributed.get_world_size(),))


def shard(module: nn.Module, mesh, settings: FSDPSettings) -> nn.Module:
    """fully_shard every transformer block (one all-gather per block, overlapped with compute), then the rest."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(module, "blocks", None)
    for block in blocks if isinstance(blocks, nn.ModuleList) else ():
        fully_shard(block, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(module, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (the tensor itself when it is not sharded)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for sharded ones: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


# ------------------------------------------------------------------------------------------ state dicts
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict on the CPU (collective for a sharded module; then only rank 0 receives the tensors)."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(cpu_offload=True))


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict; a sharded module keeps this rank's slice of each tensor."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options())


def optimizer_state(modules: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name (the same for DDP and FSDP runs, so either resumes the
    other); `modules` must hold every parameter the optimizer updates. Collective when sharded."""
    if not is_sharded(modules):
        return _named_optimizer_state(modules, optimizer, optimizer.state_dict())
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(modules, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(modules: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load `optimizer_state`'s format, or a plain `optimizer.state_dict()` (integer ids) from older runs."""
    named = not (any(isinstance(k, int) for k in state.get("state", {})) or any(
        isinstance(p, int) for g in state.get("param_groups", ()) for p in g["params"]))
    if not is_sharded(modules):
        optimizer.load_state_dict(_indexed_optimizer_state(modules, optimizer, state) if named else state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = state if named else _named_optimizer_state(modules, optimizer, state)
    set_optimizer_state_dict(modules, optimizer, state, options=_options(strict=False))


def _param_names(modules: nn.Module, optimizer) -> list[str]:
    """The parameter names in the optimizer's order (the positions `optimizer.state_dict()` uses)."""
    names = {id(p): n for n, p in modules.named_parameters(remove_duplicate=False)}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _named_optimizer_state(modules: nn.Module, optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """`optimizer.state_dict()` ids (positions in the param groups) → parameter names."""
    order = _param_names(modules, optimizer)
    if len(order) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ValueError("the checkpoint's optimizer covers a different number of parameters than this model")
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def _indexed_optimizer_state(modules: nn.Module, optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """Parameter names → `optimizer.state_dict()` positions, for a model that is not sharded."""
    position = {n: i for i, n in enumerate(_param_names(modules, optimizer))}
    missing = [n for g in state["param_groups"] for n in g["params"] if n not in position]
    if missing:
        raise ValueError(f"the checkpoint's optimizer has state for {missing[0]}, which this model lacks")
    groups = [{**g, "params": [position[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {position[n]: v for n, v in state["state"].items()}, "param_groups": groups}
