"""Generation with the model's decoding state (CausalLM.init_state / prefill / step).

    new = archspec.generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=20)   # greedy
    new = archspec.generate(model, prompts, 20, temperature=0.8, top_k=50, top_p=0.95, seed=0)

Each row's prompt is prefilled (the parallel forms), then one `step` per new token. The next
token: greedy argmax when temperature is 0 (the default); otherwise a sample of
softmax(logits / temperature) restricted to the top_k most likely tokens and to the smallest set
whose probability reaches top_p (nucleus), drawn from a torch.Generator seeded with `seed`, so a
seed gives the same tokens on every run.

Prompts of different lengths decode as one batch in one step loop: each group of prompts of
equal length is prefilled whole (the parallel form) into its own state, then the states merge
into one (model.cat_states), where every row keeps its own position (its RoPE position, its KV
slots and the keys it may read), so no padding ever enters a KV cache, a RoPE position or a
recurrent state, and no prompt token goes through `step`. Every step then feeds each row the
token just chosen for it. Rows are returned in the order given; with a seed, each step draws the
rows still generating from one generator in row order.

A row stops at `eos_token_id` (included in its output) or after max_new_tokens. Every argument is
checked before any work: a clear ValueError names the first problem.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def generate(model, prompts, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float = 1.0, eos_token_id: int | None = None, seed: int | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """The new tokens of every row (list of int lists, prompt excluded, EOS included).

    prompts: a list of token-id lists, or an int tensor [B, T] (or [T]: one prompt).
    on_token(row, token) is called for every token as it is chosen (streaming)."""
    rows = check_prompts(model, prompts, max_new_tokens)
    check_sampling(model, temperature, top_k, top_p, eos_token_id)
    device = model.embedding.weight.device
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if seed is None else seed)
    out: list[list[int]] = [[] for _ in rows]
    if max_new_tokens == 0:
        return out
    done = [False] * len(rows)

    def choose(i: int, logits: torch.Tensor) -> torch.Tensor:
        """Every row's new token i: sampled for the rows still generating, recorded, streamed."""
        live = [r for r, finished in enumerate(done) if not finished]
        if len(live) == len(rows):  # the common case: no gather, no scatter
            nxt = next_tokens(logits, temperature, top_k, top_p, gen)
            chosen = nxt.tolist()
        else:
            index = torch.tensor(live, device=device)
            nxt = torch.zeros(len(rows), dtype=torch.long, device=device)
            nxt[index] = next_tokens(logits[index], temperature, top_k, top_p, gen)
            chosen = nxt[index].tolist()
        for r, token in zip(live, chosen):
            out[r].append(token)
            if on_token is not None:
                on_token(r, token)
            if len(out[r]) == max_new_tokens or (eos_token_id is not None and token == eos_token_id):
                done[r] = True
        return nxt

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ragged_decode(model, rows, max_new_tokens, choose, lambda: all(done))
    finally:
        model.train(was_training)
    return out


def ragged_decode(model, rows: list[list[int]], max_new_tokens: int,
                  choose: Callable[[int, torch.Tensor], torch.Tensor],
                  finished: Callable[[], bool]) -> None:
    """One batched decoding loop over prompts of any lengths (module docstring).

    Prefills each group of equal-length prompts with its own state, merges the states, then
    for i = 0, 1, ...: `choose(i, logits [B, V])` (every row's prediction of its new token i,
    rows in the order given) returns the tokens [B] each row is fed next. Stops when
    `finished()` is true or after max_new_tokens choices."""
    device = model.embedding.weight.device
    groups: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        groups.setdefault(len(row), []).append(r)
    max_len = max(groups) + max_new_tokens
    states, logits, order = [], [], []
    for members in groups.values():
        state = model.init_state(len(members), max_len)
        tokens = torch.tensor([rows[r] for r in members], dtype=torch.long, device=device)
        logits.append(model.prefill(tokens, state)[:, -1])
        states.append(state)
        order += members
    state = model.cat_states(states) if len(states) > 1 else states[0]
    logits = torch.cat(logits)
    # the merged state's row j is row order[j]: logits go back to the given order, tokens forth
    ordered = order == sorted(order)
    to_state = torch.tensor(order, device=device)
    to_rows = to_state.argsort()
    for i in range(max_new_tokens):
        nxt = choose(i, logits if ordered else logits[to_rows])
        if i == max_new_tokens - 1 or finished():
            return
        logits = model.step(nxt if ordered else nxt[to_state], state)


def next_tokens(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float,
                gen: torch.Generator) -> torch.Tensor:
    """logits [B, V] -> token ids [B]: argmax at temperature 0, else a sample of
    softmax(logits / temperature) kept to the top_k largest and the nucleus top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the more likely ones already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]


def check_prompts(model, prompts, max_new_tokens) -> list[list[int]]:
    """The prompts as int lists, or a ValueError: none given, an empty one, an id outside
    the vocabulary, or a prompt plus max_new_tokens beyond the model's max_seq_len."""
    vocab, max_len = model_limits(model)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if isinstance(prompts, torch.Tensor):
        if prompts.dtype.is_floating_point or prompts.dtype == torch.bool or prompts.dim() not in (1, 2):
            raise ValueError(f"prompts as a tensor must be integer ids [B, T] or [T], got {prompts.dtype} "
                             f"of shape {list(prompts.shape)}")
        prompts = (prompts[None] if prompts.dim() == 1 else prompts).tolist()
    if not isinstance(prompts, Sequence) or isinstance(prompts, (str, bytes)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists (or an int tensor [B, T])")
    rows = []
    for i, row in enumerate(prompts):
        if isinstance(row, torch.Tensor):
            row = row.tolist()
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
            raise ValueError(f"prompt {i} must be a list of token ids, got {type(row).__name__}")
        if not row:
            raise ValueError(f"prompt {i} is empty: generation needs at least one token to start from")
        bad = [v for v in row if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]!r} outside the vocabulary [0, {vocab})")
        if len(row) + max_new_tokens > max_len:
            raise ValueError(f"prompt {i} has {len(row)} tokens; with max_new_tokens={max_new_tokens} that is "
                             f"{len(row) + max_new_tokens}, beyond the model's max_seq_len {max_len}")
        rows.append(list(row))
    return rows


def check_sampling(model, temperature, top_k, top_p, eos_token_id) -> None:
    """A ValueError for a sampling parameter out of range."""
    vocab, _ = model_limits(model)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int)
                                     or not 0 <= eos_token_id < vocab):
        raise ValueError(f"eos_token_id must be a token id in [0, {vocab}) or None, got {eos_token_id!r}")


def model_limits(model) -> tuple[int, int]:
    """(vocabulary size, max_seq_len) of a built CausalLM."""
    if getattr(model, "spec", None) is None:
        raise ValueError("generate needs a model built by archspec (archspec.build or load_saved)")
    return model.spec.model.vocab_size, model.spec.model.max_seq_len
