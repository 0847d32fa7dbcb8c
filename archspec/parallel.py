"""Sharding a built model over processes with FSDP2 (torch.distributed.fsdp.fully_shard).

    torch.distributed.init_process_group("nccl")          # or "gloo" on CPUs; torchrun sets the env
    model = archspec.build(spec, device=f"cuda:{local_rank}", dtype="float32")
    model = archspec.parallel.shard(model, mixed_precision=True, activation_checkpointing=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)   # after shard: it sees the shards

Units: each sublayer (model.sublayers[i]: its norm, members and residual gates) is one FSDP unit,
all-gathered just before it runs and freed after; the root unit holds the rest: the embedding
(tied to the LM head, which reads embedding.weight: one parameter in one unit), the final norm,
the head, and model.shared, the weights several sublayers read (PKM value tables shared under
`share_values`). Those stay gathered through the forward (the root unit is gathered first and
resharded after the backward), so every sublayer that reads them sees the whole tensor and their
gradients from all readers add up before one reduce-scatter. MoE experts live in their sublayer's
unit: every rank holds a shard of every expert and gathers all of them (experts are not split
over ranks; expert parallelism is not done here), so an expert no token on a rank chose still
gets a gradient (zero) there and the reduce-scatter averages it correctly.

Gradients are averaged over ranks (the reduce-scatter divides by the world size), so with each
rank's loss the mean over its equal share of the global batch, a step equals the one-process step
on the whole batch up to summation order.
"""
from __future__ import annotations

import torch


def checkpoint_sublayers(model) -> None:
    """Activation checkpointing per sublayer: each sublayer's activations are recomputed in the
    backward instead of kept (torch.utils.checkpoint, non-reentrant)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    blocks = set(model.sublayers)
    apply_activation_checkpointing(model, check_fn=lambda m: m in blocks)


def shard(model, mesh=None, *, mixed_precision: bool | object = False, activation_checkpointing: bool = False,
          compile_sublayers: bool = False, reshard_after_forward: bool = True):
    """Shard `model` (an archspec CausalLM, unsharded, on this rank's device) in place with
    FSDP2 and return it. `mesh`: a 1-D DeviceMesh (default: every rank of the default process
    group). `mixed_precision`: True for bf16 compute with fp32 gradient reduction and fp32 master
    weights, or a torch MixedPrecisionPolicy; `activation_checkpointing` recomputes each
    sublayer's activations in the backward; `compile_sublayers` torch.compiles each sublayer."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("archspec.parallel.shard needs torch.distributed initialised "
                           "(torch.distributed.init_process_group, e.g. under torchrun)")
    if getattr(model, "spec", None) is None or not hasattr(model, "sublayers"):
        raise ValueError("archspec.parallel.shard needs a model built by archspec (a CausalLM)")
    if mesh is None:
        device_type = next(model.parameters()).device.type
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = mixed_precision
    if mixed_precision is True:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif mixed_precision is False or mixed_precision is None:
        policy = MixedPrecisionPolicy()
    if activation_checkpointing:
        checkpoint_sublayers(model)
    for i, block in enumerate(model.sublayers):
        if compile_sublayers:
            block.compile()  # in place: the module stays the one FSDP wraps
        # after checkpoint_sublayers, sublayers[i] is its checkpoint wrapper: the unit wraps that
        fully_shard(model.sublayers[i], mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model

