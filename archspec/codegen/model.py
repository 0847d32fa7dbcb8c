"""The emitted causal language model.

    tokens [B, T] -> embedding -> sublayers -> final norm -> LM head -> logits [B, T, V]
    sublayer i:  x <- x + f(norm(x))                       (one member)
                 x <- x + sum_j g_j f_j(norm(x))           (parallel group; gates g init 1)
                 x <- x + sum_j g_j(h) f_j(h), h = norm(x) (token gates: softmax or sigmoid of
                                                            a Linear(d, n) of h; residual/spec.py)
    model: post_norm (sandwich, Gemma-2): the update passes a second norm of its own before
    the add, x <- x + post_norm(f(norm(x))) (of the gated sum in a parallel group).
    a feed:      t = f(x), read with the embeddings as ctx.embeddings; the next sublayer is
                 x <- x + f'(norm(x + t)) (its residual is x) and the final norm reads x + t
                 (Component.feeds_next: Zamba2's shared block feeding a Mamba2 layer)

`labels` [B, T] are the targets of each position (already shifted; -100 is ignored). The
output carries the LM loss, the sum of the components' auxiliary losses, and their total.

Fused residual adds: when every norm module runs its kernels and offers `forward_add(x, delta)
-> (norm(x + delta), x + delta)` (the RMSNorm with backend `triton`), sublayer i returns its input x and its update delta unadded,
and the norm of sublayer i + 1 (or the final norm) adds them in its kernel:

    h_0 = embedding;  (y_i, h_i) = norm_i.forward_add(h_{i-1}, delta_{i-1});  delta_i = f_i(y_i)

The same sums in the same order (a parallel group adds all but its last gated member as the
reference does, then hands the last one on), so the same values up to the norm's own rounding.
Otherwise the reference path runs as above; both have the same modules and parameter names.

Decoding (the members' contract: archspec/components/modules.py):

    state = model.init_state(B, max_len)          every member's state, by node name
    logits = model.prefill(tokens [B, T], state)  [B, T, V]: the forward, filling the states
    logits_t = model.step(tokens_t [B], state)    [B, V]: the next position of every row

    state = model.cat_states([s_1, s_2, ...])   one state of all their rows, each at its own position

Prompts of different lengths: each group of equal length is prefilled with its own state, then
cat_states merges them (every member's cat_states: its rows keep their own positions, so no
state ever holds padding) and one step loop decodes them all (archspec/generate.py). Norms, residual
gates and the head are per token: they need no state. A module several sublayers share keeps
one state per node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..components.modules import ComponentModule, ForwardContext, at_least_float32


class BackendChoice(str):
    """The backend a build chose for one node (`model.backends[node]`): a str equal to the
    backend's name, so code that compares, sorts or saves names keeps working, plus `failures`:
    the kernel launches (ops.triton_support.KernelFailure) that did not compile on the device,
    when `auto` fell back from `triton` because of them. `fallback` says why in one line; the
    repr shows it."""

    failures: tuple

    def __new__(cls, name: str, failures: tuple = ()):
        self = super().__new__(cls, name)
        self.failures = tuple(failures)
        return self

    def __getnewargs__(self):  # copy and pickle keep the failures
        return (str(self), self.failures)

    @property
    def fallback(self) -> str | None:
        """Why this is not the `triton` backend `auto` chose first; None when it is the choice."""
        if not self.failures:
            return None
        more = len(self.failures) - 1
        return str(self.failures[0]) + (f" (and {more} more kernel configuration(s))" if more else "")

    def describe(self) -> str:
        """'reference (fallback: <kernel> [<config>] failed on sm_90: <reason>)', or the name."""
        name = str.__str__(self)
        return name if self.fallback is None else f"{name} (fallback: {self.fallback})"

    def __repr__(self) -> str:
        if self.fallback is None:
            return str.__repr__(self)
        return f"BackendChoice({str.__repr__(self)}, fallback={self.fallback!r})"


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None  # lm_loss + aux_loss: what to call backward on
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    aux_losses: dict = field(default_factory=dict)


class Block(nn.Module):
    """One pre-norm residual sublayer (with `post_norm`, a sandwich: the update normed too);
    without a norm, a feed (module docstring): it returns its member's output t, which the model
    adds to the next sublayer's norm input (`feed`)."""

    def __init__(self, norm: nn.Module | None, members: dict[str, nn.Module], post_norm: nn.Module | None = None,
                 gates: str = "scalar", d_model: int | None = None, init_std: float = 0.02):
        super().__init__()
        self.norm = norm
        self.members = nn.ModuleDict(members)
        self.gate_kind, self.init_std = gates, init_std
        if len(members) < 2:
            self.gates = None
        elif gates == "scalar":
            self.gates = nn.Parameter(torch.empty(len(members)))
        else:  # token gates: g(h) = softmax or sigmoid of gates(h)
            self.gates = nn.Linear(d_model, len(members))
        self.post_norm = post_norm  # the sandwich norm (model: post_norm), or None

    @property
    def feeds(self) -> bool:
        return self.norm is None

    def reset_gates(self) -> None:
        if isinstance(self.gates, nn.Linear):
            nn.init.normal_(self.gates.weight, std=self.init_std)
            nn.init.zeros_(self.gates.bias)
        elif self.gates is not None:
            nn.init.ones_(self.gates)

    def gate_values(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Each member's gate in h's dtype: a scalar, or per token [..., 1] (token gates) from
        the normed input h ([B, T, d] or, decoding a step, [B, d])."""
        if self.gate_kind == "scalar":
            return [g.to(h.dtype) for g in self.gates]
        logits = at_least_float32(self.gates(h))
        g = torch.softmax(logits, dim=-1) if self.gate_kind == "softmax" else torch.sigmoid(logits)
        return [g[..., j:j + 1].to(h.dtype) for j in range(g.shape[-1])]

    def forward(self, x: torch.Tensor, ctx: ForwardContext, feed: torch.Tensor | None = None) -> torch.Tensor:
        if self.feeds:
            (member,) = self.members.values()
            return member(x, ctx)
        h = self.norm(x if feed is None else x + feed)
        if self.post_norm is not None:
            return x + self._sandwiched(h, lambda name, member: member(h, ctx))
        if self.gates is None:
            (member,) = self.members.values()
            return x + member(h, ctx)
        out = x
        for gate, member in zip(self.gate_values(h), self.members.values()):
            out = out + gate.to(x.dtype) * member(h, ctx)
        return out

    def prefill(self, x: torch.Tensor, states: dict, ctx: ForwardContext, feed=None) -> torch.Tensor:
        """forward over x [B, T, d], each member filling states[symbol]."""
        return self._decode(x, states, ctx, "prefill", feed)

    def step(self, x_t: torch.Tensor, states: dict, ctx: ForwardContext, feed=None) -> torch.Tensor:
        """One position x_t [B, d] -> [B, d], each member stepping states[symbol]."""
        return self._decode(x_t, states, ctx, "step", feed)

    def _decode(self, x: torch.Tensor, states: dict, ctx: ForwardContext, how: str, feed=None) -> torch.Tensor:
        """x + sum_j g_j f_j(norm(x + feed)) (no gate for one member), f_j = member.<how>; a
        feed returns its member's output."""
        if self.feeds:
            ((name, member),) = self.members.items()
            return getattr(member, how)(x, states[name], ctx)
        h = self.norm(x if feed is None else x + feed)
        if self.post_norm is not None:
            return x + self._sandwiched(h, lambda name, member: getattr(member, how)(h, states[name], ctx))
        if self.gates is None:
            ((name, member),) = self.members.items()
            return x + getattr(member, how)(h, states[name], ctx)
        out = x
        for gate, (name, member) in zip(self.gate_values(h), self.members.items()):
            out = out + gate.to(x.dtype) * getattr(member, how)(h, states[name], ctx)
        return out

    def forward_fused(self, x: torch.Tensor, delta: torch.Tensor | None,
                      ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(x', delta'): the stream x + delta (added by the norm's kernel) and this sublayer's
        update, whose sum x' + delta' is what `forward(x + delta)` returns."""
        h, x = self.norm.forward_add(x, delta)
        if self.post_norm is not None:
            return x, self._sandwiched(h, lambda name, member: member(h, ctx))
        if self.gates is None:
            (member,) = self.members.values()
            return x, member(h, ctx)
        members, gates = list(self.members.values()), self.gate_values(h)
        out = x
        for gate, member in zip(gates[:-1], members[:-1]):
            out = out + gate.to(x.dtype) * member(h, ctx)
        return out, gates[-1].to(x.dtype) * members[-1](h, ctx)

    def _sandwiched(self, h: torch.Tensor, run) -> torch.Tensor:
        """post_norm(sum_j g_j run(name_j, member_j)) (no gate for one member; g_j from the normed
        input h): the update of a sandwich-normed sublayer."""
        if self.gates is None:
            ((name, member),) = self.members.items()
            return self.post_norm(run(name, member))
        out = None
        for gate, (name, member) in zip(self.gate_values(h), self.members.items()):
            y = run(name, member)
            y = gate.to(y.dtype) * y
            out = y if out is None else out + y
        return self.post_norm(out)


class CausalLM(nn.Module):
    def __init__(self, embedding: nn.Module, blocks: list[Block], final_norm: nn.Module,
                 lm_head: nn.Module, tied: bool, shared: dict[str, nn.Module] | None = None):
        super().__init__()
        self.embedding = embedding
        self.sublayers = nn.ModuleList(blocks)
        # weights used by several sublayers, stored (and counted, and saved) once
        self.shared = nn.ModuleDict(shared or {})
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.tied = tied
        self.backends: dict[str, BackendChoice] = {}  # node name -> kernel backend chosen at build
        self.spec = None  # the ResolvedSpec it was built from

    @property
    def fused_residual_norms(self) -> bool:
        """Whether every norm fuses the residual add before it (see the module docstring); a
        feed sublayer has no norm, so a model with one never fuses."""
        return all(hasattr(n, "forward_add") and n.backend == "triton"
                   for n in [self.final_norm, *(b.norm for b in self.sublayers)])

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every weight (used after materialising a meta-device build). A component
        resets the components it is built from (its children) itself, and may then adjust them
        (mixda zeroes its adapters' outputs): they are not reset again here."""
        nested = {id(m) for module in self.modules() if isinstance(module, ComponentModule)
                  for m in module.modules() if m is not module}
        for module in self.modules():
            if isinstance(module, ComponentModule) and id(module) not in nested:
                module.reset_parameters()
            elif isinstance(module, Block):
                module.reset_gates()

    # --- decoding (module docstring) -------------------------------------------------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "ModelState":
        """Fresh states of every member for `batch` sequences of at most max_len tokens
        (device and dtype: the model's)."""
        w = self.embedding.weight
        device, dtype = device or w.device, dtype or w.dtype
        states = {f"sublayers.{i}.{name}": member.init_state(batch, max_len, device, dtype)
                  for i, block in enumerate(self.sublayers) for name, member in block.members.items()}
        return ModelState(states, batch, max_len)

    def prefill(self, tokens: torch.Tensor, state: "ModelState") -> torch.Tensor:
        """tokens [B, T] (a prompt per row, all of length T) -> logits [B, T, V], filling the
        fresh `state` (the forward's logits, to rounding)."""
        if state.pos:
            raise ValueError(f"prefill fills a fresh state; this one is at position {state.pos}")
        state.check(tokens.shape[0], tokens.shape[1])
        logits = self._decode(self.embedding(tokens), state, "prefill")
        state.pos = tokens.shape[1]
        return logits

    def step(self, tokens_t: torch.Tensor, state: "ModelState") -> torch.Tensor:
        """tokens_t [B] at position state.pos -> logits [B, V] of the next token."""
        state.check(tokens_t.shape[0], state.pos + 1)
        logits = self._decode(self.embedding(tokens_t, state.pos), state, "step")
        state.pos += 1
        return logits

    def cat_states(self, states: list["ModelState"]) -> "ModelState":
        """One state holding the rows of `states` (made with the same max_len) in order, each
        row at its own position: every member's cat_states. `pos` is the furthest row's."""
        if len({s.max_len for s in states}) > 1:
            raise ValueError(f"cat_states needs states made for one max_len, got {[s.max_len for s in states]}")
        merged = {}
        for i, block in enumerate(self.sublayers):
            for name, member in block.members.items():
                node = f"sublayers.{i}.{name}"
                merged[node] = member.cat_states([s.states[node] for s in states])
        return ModelState(merged, sum(s.batch for s in states), states[0].max_len, max(s.pos for s in states))

    def _decode(self, x: torch.Tensor, state: "ModelState", how: str) -> torch.Tensor:
        """embedding output x ([B, T, d] or [B, d]) through every block's `how` (prefill or
        step), the final norm and the head."""
        ctx = ForwardContext(shared=self.shared)
        ctx.embeddings = x
        feed = None
        for i, block in enumerate(self.sublayers):
            states = {name: state.states[f"sublayers.{i}.{name}"] for name in block.members}
            if block.feeds:
                feed = getattr(block, how)(x, states, ctx)
                continue
            x, feed = getattr(block, how)(x, states, ctx, feed), None
        x = x if feed is None else x + feed
        return self.lm_head(self.final_norm(x), self.embedding.weight if self.tied else None)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        ctx = ForwardContext(shared=self.shared)
        x = self.embedding(tokens)
        ctx.embeddings = x
        if self.fused_residual_norms:
            delta = None
            for block in self.sublayers:
                x, delta = block.forward_fused(x, delta, ctx)
            x, _ = self.final_norm.forward_add(x, delta)
        else:
            feed = None  # a feed sublayer's output, for the next norm's input
            for block in self.sublayers:
                if block.feeds:
                    feed = block(x, ctx)
                    continue
                x, feed = block(x, ctx, feed), None
            x = self.final_norm(x if feed is None else x + feed)
        logits = self.lm_head(x, self.embedding.weight if self.tied else None)
        out = ModelOutput(logits=logits, aux_losses=dict(ctx.aux_losses))
        if ctx.aux_losses:
            out.aux_loss = sum(ctx.aux_losses.values())
        if labels is not None:
            out.lm_loss = nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
            out.loss = out.lm_loss + out.aux_loss if out.aux_loss is not None else out.lm_loss
        return out


@dataclass
class ModelState:
    """A model's decoding state: every member's state by node name ('sublayers.3.A'), the
    batch it holds, the length it was made for and the position of its furthest row (of every
    row unless cat_states merged rows at different positions)."""
    states: dict
    batch: int
    max_len: int
    pos: int = 0

    def check(self, batch: int, length: int) -> None:
        """A clear error for a batch this state does not hold or a length beyond max_len."""
        if batch != self.batch:
            raise ValueError(f"this state holds {self.batch} sequences, got a batch of {batch}")
        if length > self.max_len:
            raise ValueError(f"this state was made for {self.max_len} tokens (init_state's max_len); "
                             f"position {length - 1} is beyond it")
