"""Checkpoint names of a transformers family <-> the parameter names of an archspec build.

    entries = mapping(family, spec, names)        # names: the checkpoint's tensor names
    load_tensors(model, entries, get)             # into an archspec build (shapes checked)
    tensors = export_tensors(model, entries)      # back to transformers' names

An Entry ties one or more archspec parameters to one or more checkpoint tensors:

    copy       one to one (q_proj, norms, the SSM parameters: transformers' and archspec's agree)
    split      one checkpoint tensor to several archspec ones along `dim`, in order, each its own
               size (Phi-3's qkv_proj [(h + 2 kv) hd, d] and gate_up_proj [2f, d]; GPT-2's c_attn;
               transformers 5's fused experts gate_up_proj [E, 2f, d] along dim 1)
    stack      several checkpoint tensors (one per expert, [f, d]) to one [E, f, d]

and `transpose` marks a checkpoint tensor stored [in, out] (GPT-2's Conv1D).

Exporting inverts each (cat, transpose back, unstack). Layer i of an attention family is
sublayers 2i (its attention: input_layernorm is that sublayer's norm) and 2i + 1 (its
feed-forward: post_attention_layernorm is that norm, or, with sandwich norms, the attention's
post norm); layer i of an SSM family is sublayer i.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .families import HFImportError


@dataclass(frozen=True)
class Entry:
    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    kind: str = "copy"   # copy | split | stack
    dim: int = 0
    transpose: bool = False  # the checkpoint stores the (2-d) tensor transposed (GPT-2's Conv1D)


def _copy(ours: str, theirs: str) -> Entry:
    return Entry((ours,), (theirs,))


# --- per component type -------------------------------------------------------------------------

def _attention(ours: str, theirs: str, module, fused_qkv: bool = False) -> list[Entry]:
    """q, k, v, o (with their biases), QK-norms: the same names, or Phi-3's fused qkv_proj."""
    names = [n for n, _ in module.named_parameters()]
    out = []
    if fused_qkv:
        for kind in ("weight", "bias"):
            if f"q_proj.{kind}" in names:
                out.append(Entry(tuple(f"{ours}{p}_proj.{kind}" for p in "qkv"), (f"{theirs}qkv_proj.{kind}",), "split"))
        names = [n for n in names if n.split(".")[0] not in ("q_proj", "k_proj", "v_proj")]
    return out + [_copy(ours + n, theirs + n) for n in names]


def _mlp(ours: str, theirs: str, module, fused_gate_up: bool = False) -> list[Entry]:
    """gate/up/down by archspec's names (Llama's), Phi-3's fused gate_up_proj."""
    out = []
    params = [n for n, _ in module.named_parameters()]
    if fused_gate_up:
        out.append(Entry((f"{ours}gate_proj.weight", f"{ours}up_proj.weight"), (f"{theirs}gate_up_proj.weight",), "split"))
        params = [n for n in params if not n.startswith(("gate_proj.", "up_proj."))]
    for n in params:
        proj, _, leaf = n.partition(".")
        out.append(_copy(ours + n, f"{theirs}{proj}.{leaf}"))
    return out


def _moe(ours: str, theirs: str, module, n_experts: int, fused: bool, *, router: str = "gate",
         expert_names=("gate_proj", "up_proj", "down_proj"), shared: str = "shared_expert") -> list[Entry]:
    """The router, the experts (one tensor per expert on disk, or transformers 5's fused
    gate_up_proj / down_proj), the shared expert and its gate."""
    out = [_copy(f"{ours}router.weight", f"{theirs}{router}.weight")]
    g, u, dn = (f"{ours}experts.{p}" for p in ("gate_proj", "up_proj", "down_proj"))
    if fused:
        out.append(Entry((g, u), (f"{theirs}experts.gate_up_proj",), "split", dim=1))
        out.append(_copy(dn, f"{theirs}experts.down_proj"))
    else:
        for target, name in zip((g, u, dn), expert_names):
            out.append(Entry((target,), tuple(f"{theirs}experts.{e}.{name}.weight" for e in range(n_experts)), "stack"))
    for n, _ in module.named_parameters():
        if n.startswith("shared."):
            out.append(_copy(ours + n, f"{theirs}{shared}." + n[len("shared."):]))
        elif n.startswith("shared_expert_gate."):
            out.append(_copy(ours + n, theirs + n))
    return out


def _plain(ours: str, theirs: str, module) -> list[Entry]:
    """Every parameter under the same local name (Mamba, Mamba2: archspec kept transformers')."""
    return [_copy(ours + n, theirs + n) for n, _ in module.named_parameters()]


# --- per family ---------------------------------------------------------------------------------

def mapping(family: str, model, names: set[str] | frozenset = frozenset()) -> list[Entry]:
    """The entries of `family`'s checkpoint for the archspec build `model` (its spec:
    model.spec). `names` (the checkpoint's) tells the fused expert layout from the per-expert
    one; exports write per expert, as transformers' save_pretrained does."""
    spec = model.spec
    fused = any(n.endswith("experts.gate_up_proj") for n in names)
    subs = model.sublayers
    if family in ("mamba", "falcon_mamba", "mamba2"):
        out = [_copy("embedding.weight", "backbone.embeddings.weight")]
        for i, sub in enumerate(spec.sublayers):
            (m,) = sub.members
            out.append(_copy(f"sublayers.{i}.norm.weight", f"backbone.layers.{i}.norm.weight"))
            out += _plain(f"sublayers.{i}.members.{m.name}.", f"backbone.layers.{i}.mixer.", subs[i].members[m.name])
        return out + _head(model, "backbone.norm_f.")
    if family == "gpt2":
        return _gpt2(model)
    if family in ("jamba", "bamba"):
        return _hybrid(family, model, fused)
    if family == "zamba2":
        from .zamba2 import zamba2_mapping
        return zamba2_mapping(model) + _head(model, final="model.final_layernorm.")
    sandwich = spec.model.post_norm
    out = [_copy("embedding.weight", "model.embed_tokens.weight")]
    for i in range(len(spec.sublayers) // 2):
        a, f = spec.sublayers[2 * i], spec.sublayers[2 * i + 1]
        layer = f"model.layers.{i}."
        (am,), (fm,) = a.members, f.members
        out += _norms(f"sublayers.{2 * i}.", subs[2 * i], layer + "input_layernorm.", layer + "post_attention_layernorm."
                      if sandwich else None)
        out += _norms(f"sublayers.{2 * i + 1}.", subs[2 * i + 1], layer + ("pre_feedforward_layernorm." if sandwich
                      else "post_attention_layernorm."), layer + "post_feedforward_layernorm." if sandwich else None)
        out += _attention(f"sublayers.{2 * i}.members.{am.name}.", layer + "self_attn.", subs[2 * i].members[am.name],
                          fused_qkv=family == "phi3")
        ours, module = f"sublayers.{2 * i + 1}.members.{fm.name}.", subs[2 * i + 1].members[fm.name]
        if fm.type == "moe":
            if family == "mixtral" and not fused:  # on disk: Mixtral's original names (w1 gate, w3 up, w2 down)
                out += _moe(ours, layer + "block_sparse_moe.", module, fm.config["n_experts"], fused,
                            expert_names=("w1", "w3", "w2"))
            else:
                out += _moe(ours, layer + "mlp.", module, fm.config["n_experts"], fused)
        else:
            out += _mlp(ours, layer + "mlp.", module, fused_gate_up=family == "phi3")
    return out + _head(model, "model.norm.")


def _norms(ours: str, sub, pre: str, post: str | None) -> list[Entry]:
    out = [_copy(ours + "norm." + n, pre + n) for n, _ in sub.norm.named_parameters()]
    if post is not None:
        out += [_copy(ours + "post_norm." + n, post + n) for n, _ in sub.post_norm.named_parameters()]
    return out


def _head(model, final: str) -> list[Entry]:
    """The final norm and, untied, the LM head (tied: the checkpoint's lm_head.weight, if it
    keeps one, is the embedding: see load)."""
    out = [_copy("final_norm." + n, final + n) for n, _ in model.final_norm.named_parameters()]
    if not model.spec.model.tie_embeddings:
        out.append(_copy("lm_head.weight", "lm_head.weight"))
    return out


def _gpt2(model) -> list[Entry]:
    spec = model.spec
    out = [_copy("embedding.weight", "transformer.wte.weight"), _copy("embedding.position_weight", "transformer.wpe.weight"),
           _copy("final_norm.weight", "transformer.ln_f.weight"), _copy("final_norm.bias", "transformer.ln_f.bias")]
    for i in range(len(spec.sublayers) // 2):
        a, f, h = f"sublayers.{2 * i}.", f"sublayers.{2 * i + 1}.", f"transformer.h.{i}."
        at, ml = f"{a}members.{spec.sublayers[2 * i].members[0].name}.", f"{f}members.{spec.sublayers[2 * i + 1].members[0].name}."
        for kind in ("weight", "bias"):
            out += [_copy(f"{a}norm.{kind}", f"{h}ln_1.{kind}"), _copy(f"{f}norm.{kind}", f"{h}ln_2.{kind}")]
        out += [Entry(tuple(f"{at}{p}_proj.weight" for p in "qkv"), (f"{h}attn.c_attn.weight",), "split", transpose=True),
                Entry(tuple(f"{at}{p}_proj.bias" for p in "qkv"), (f"{h}attn.c_attn.bias",), "split"),
                Entry((f"{at}o_proj.weight",), (f"{h}attn.c_proj.weight",), transpose=True), _copy(f"{at}o_proj.bias", f"{h}attn.c_proj.bias"),
                Entry((f"{ml}up_proj.weight",), (f"{h}mlp.c_fc.weight",), transpose=True), _copy(f"{ml}up_proj.bias", f"{h}mlp.c_fc.bias"),
                Entry((f"{ml}down_proj.weight",), (f"{h}mlp.c_proj.weight",), transpose=True), _copy(f"{ml}down_proj.bias", f"{h}mlp.c_proj.bias")]
    if not spec.model.tie_embeddings:
        out.append(_copy("lm_head.weight", "lm_head.weight"))
    return out


def _hybrid(family: str, model, fused: bool) -> list[Entry]:
    """Jamba and Bamba: layer i is a mixer (mamba or self_attn; input_layernorm) then a
    feed-forward (feed_forward; pre_ff_layernorm)."""
    spec, subs = model.spec, model.sublayers
    out = [_copy("embedding.weight", "model.embed_tokens.weight")]
    for i in range(len(spec.sublayers) // 2):
        (mm,), (fm,) = spec.sublayers[2 * i].members, spec.sublayers[2 * i + 1].members
        layer = f"model.layers.{i}."
        out += _norms(f"sublayers.{2 * i}.", subs[2 * i], layer + "input_layernorm.", None)
        out += _norms(f"sublayers.{2 * i + 1}.", subs[2 * i + 1], layer + "pre_ff_layernorm.", None)
        ours, module = f"sublayers.{2 * i}.members.{mm.name}.", subs[2 * i].members[mm.name]
        out += _attention(ours, layer + "self_attn.", module) if mm.type == "attention" else _plain(ours, layer + "mamba.", module)
        ours, module = f"sublayers.{2 * i + 1}.members.{fm.name}.", subs[2 * i + 1].members[fm.name]
        out += _moe(ours, layer + "feed_forward.", module, fm.config["n_experts"], fused, router="router") \
            if fm.type == "moe" else _mlp(ours, layer + "feed_forward.", module)
    return out + _head(model, final="model.final_layernorm.")


# --- moving tensors -----------------------------------------------------------------------------

def _sizes(params: dict, entry: Entry) -> list[int]:
    return [params[n].shape[entry.dim] for n in entry.ours]


def expected_shape(params: dict, entry: Entry) -> tuple[int, ...]:
    """The checkpoint tensor's shape an entry expects (per tensor: stacks expect each expert's)."""
    shape = list(params[entry.ours[0]].shape)
    if entry.kind == "stack":
        shape = shape[1:]
    if entry.kind == "split":
        shape[entry.dim] = sum(_sizes(params, entry))
    return tuple(shape[::-1] if entry.transpose else shape)


def load_tensors(model, entries: list[Entry], get: Callable[[str], torch.Tensor]) -> None:
    """Write each entry's checkpoint tensors into the build; a shape that does not fit is an
    HFImportError naming the tensor and both shapes."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for e in entries:
            want = expected_shape(params, e)
            tensors = [get(n) for n in e.theirs]
            for name, t in zip(e.theirs, tensors):
                if tuple(t.shape) != want:
                    raise HFImportError(f"checkpoint tensor {name} has shape {list(t.shape)} but the archspec build "
                                        f"of the imported spec needs {list(want)} (for {', '.join(e.ours)}): the "
                                        "checkpoint does not match its config.json")
            tensors = [t.T if e.transpose else t for t in tensors]
            if e.kind == "copy":
                parts = [tensors[0]]
            elif e.kind == "stack":
                parts = [torch.stack(tensors)]
            else:
                parts = torch.split(tensors[0], _sizes(params, e), dim=e.dim)
            for name, value in zip(e.ours, parts):
                params[name].copy_(value)


def export_tensors(model, entries: list[Entry]) -> dict[str, torch.Tensor]:
    """The build's parameters under the checkpoint's names (contiguous, detached)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for e in entries:
        ours = [params[n].detach() for n in e.ours]
        if e.kind == "copy":
            values = ours
        elif e.kind == "stack":
            values = list(ours[0].unbind(0))
        else:
            values = [torch.cat(ours, dim=e.dim)]
        values = [v.T if e.transpose else v for v in values]
        for name, v in zip(e.theirs, values):
            out[name] = v.contiguous().clone()
    return out
