"""Zamba2's checkpoint names <-> the archspec build of its import (families._zamba2).

Layer L of a Zamba2 checkpoint is a Mamba2 layer (model.layers.L.mamba, input_layernorm) or,
when hybrid, the shared transformer block's use before one (model.layers.L.linear: the per-use
output projection; mamba_decoder.*: the Mamba2 layer). Each of the num_mem_blocks blocks is one
module used at every num_mem_blocks-th hybrid layer; transformers saves its weights once, under
the first layer that uses it, adapters included: its LoRA adapter list is indexed by the use's
position among all hybrid layers (the other blocks' entries are identities, without weights).
"""
from __future__ import annotations

from .weights import Entry, _copy

_LORA = {"q": "self_attn.linear_q_adapter_list", "k": "self_attn.linear_k_adapter_list",
         "v": "self_attn.linear_v_adapter_list", "gate_up": "feed_forward.gate_up_proj_adapter_list"}


def zamba2_mapping(model) -> list[Entry]:
    spec = model.spec
    out = [_copy("embedding.weight", "model.embed_tokens.weight")]
    first: dict[str, int] = {}  # share group -> the checkpoint layer holding its weights
    layer, use, feed = 0, 0, None
    for sub in spec.sublayers:
        (m,) = sub.members
        if m.type == "feed_block":
            feed = (sub.index, m)
            continue
        prefix = f"model.layers.{layer}." + ("mamba_decoder." if feed is not None else "")
        module = model.sublayers[sub.index].members[m.name]
        out += [_copy(f"sublayers.{sub.index}.members.{m.name}.{n}", f"{prefix}mamba.{n}") for n, _ in module.named_parameters()]
        out.append(_copy(f"sublayers.{sub.index}.norm.weight", f"{prefix}input_layernorm.weight"))
        if feed is not None:
            index, block = feed
            group = block.config["share"]  # None: a block used once holds its own weights (`block.`)
            home = first.setdefault(group, layer) if group is not None else layer
            ours = f"sublayers.{index}.members.{block.name}."
            theirs = f"model.layers.{home}.shared_transformer."
            use_module = model.sublayers[index].members[block.name]
            for n, _ in use_module.named_parameters():
                if n == "linear.weight":
                    out.append(_copy(ours + n, f"model.layers.{layer}.linear.weight"))
                elif n.startswith("lora."):
                    _, target, part, leaf = n.split(".")
                    out.append(_copy(ours + n, f"{theirs}{_LORA[target]}.{use}.{0 if part == 'down' else 1}.{leaf}"))
                elif n.startswith("block."):
                    out.append(_copy(ours + n, theirs + n[len("block."):]))
            if group is not None and home == layer:  # the shared block's weights, once
                shared = f"shared.feed_block_{group}"
                out += [_copy(f"{shared}.{n}", theirs + n) for n, _ in model.shared[f"feed_block_{group}"].named_parameters()]
            use, feed = use + 1, None
        layer += 1
    return out
