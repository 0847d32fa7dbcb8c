"""What the linear-attention rules cost and what their kernels take, without torch: the rules,
the FLOPs of the chunked and recurrent forms, the state size, and the range of the Triton
kernels (the part a component's accounting and config checks read).

FLOPs (1 FLOP = one multiply or one add; per head). `matmul` is exactly what torch's
FlopCounterMode counts (with archspec.flopcount.flopcounter_mapping(), which adds the triangular
solve), including the padding of each sequence to a multiple of C; n_c = sum_i ceil(L_i / C):
    chunk, linear / gla:       n_c * (2C^2 (K + V) + 4CKV)
        q k^T and P V per chunk; k^T v (the chunk's write) and q S (the state's read).
    chunk, delta / gated_delta: n_c * (4C^2 K + 2C^2 V + C(C-1)(K + V) + 6CKV)
        k k^T, q k^T, P U; the unit-triangular solve with K + V right-hand sides; W S, k^T U, q S.
    recurrent: T * 2KV (linear / gla: S^T q) or T * 4KV (delta rules: S^T k as well).
`other` is an estimate of the elementwise work, counting what the code does (an exp, multiply,
add or subtract is 1 per element, a cumsum or sum 1 per input element; masks, copies, padding 0),
per chunk and head, C = chunk_size, c = gcd(C, SUB_CHUNK), n = C / c:
    linear:       CK + CV + KV          (scale q; add the two output terms; state add)
    gla:          13CK + 6CcK + 3nCK + 2n^2 K + K + CV + 2KV   (cumsums and exps of the decays
                  and the factored q / k; 6 per element of the pairwise diagonal blocks; 3 per
                  element of the per-block key factors; decay and add of the state)
    delta:        C^2 + 2CK + 3CV + KV  (scale q, beta A, beta [V | K], U - W S, output add, state)
    gated_delta:  delta + 5C^2 + 3CK + 4C + KV + 1  (pairwise decays and their use on k k^T and
                  q k^T, decays from the start / to the end and their use, the state's decay)
and per token and head for the recurrent form: linear K + 2KV; gla 2K + 3KV; delta K + 2V + 2KV;
gated_delta 1 + K + 2V + 3KV (scale q, decay, error and beta, outer product, add).
"""
from __future__ import annotations

import math
from collections import Counter

from ...costs import Flops

RULES = ("gated_delta", "delta", "gla", "linear")
DECAYED = ("gated_delta", "gla")  # rules that take the log-space decay g
WITH_BETA = ("delta", "gated_delta")  # rules that take the write strength beta

# gla's sub-chunk c in chunk.py. Elementwise work per chunk and head ~ (6c + 3C/c) C K (pairwise
# diagonal blocks vs per-block key factors): least near c = sqrt(C), so 8 for C = 64 or 128.
SUB_CHUNK = 8

# The range of the Triton kernels (triton_chunk.py)
KERNEL_RULES = ("linear", "gla", "delta", "gated_delta")
CHUNK_SIZES = (16, 32, 64)  # tl.dot needs >= 16 rows; a [C, C] fp32 tile of C = 64 is the most
                            # the WY and backward programs hold beside their key blocks
MAX_HEAD_DIM = 256  # keys in at most 4 blocks of 64; the state passes hold two tiles of 128 rows
KERNEL_DTYPE_NAMES = ("float32", "bfloat16", "float16")  # model dtypes the kernels take
# model dtypes `auto` takes the kernels for: float32 inputs compute right but spill registers
# (triton_chunk.GATE_DTYPES, `archspec kernels --compile`)
GATE_DTYPE_NAMES = ("bfloat16", "float16")


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown linear-attention rule {rule!r}; expected one of {RULES}")


def state_elements(rule: str, n_heads: int, k_dim: int, v_dim: int) -> int:
    """Elements of one sequence's recurrent state (the decoding cache): H K V for every rule."""
    check_rule(rule)
    return n_heads * k_dim * v_dim


def chunk_flops(rule: str, seq_lens: list[int], n_heads: int, k_dim: int, v_dim: int,
                chunk_size: int) -> Flops:
    """Forward FLOPs of chunk_rule over sequences of these lengths (module docstring)."""
    check_rule(rule)
    c, k, v = chunk_size, k_dim, v_dim
    # lengths repeat (balanced routing has two values over all memories): count each once
    n_chunks = sum(-(-length // c) * times for length, times in Counter(seq_lens).items())
    if rule in WITH_BETA:
        matmul = 4 * c * c * k + 2 * c * c * v + c * (c - 1) * (k + v) + 6 * c * k * v
        other = c * c + 2 * c * k + 3 * c * v + k * v
        if rule == "gated_delta":
            other += 5 * c * c + 3 * c * k + 4 * c + k * v + 1
    elif rule == "gla":
        matmul = 2 * c * c * (k + v) + 4 * c * k * v
        sub = math.gcd(c, SUB_CHUNK)
        n = c // sub
        other = 13 * c * k + 6 * c * sub * k + 3 * n * c * k + 2 * n * n * k + k + c * v + 2 * k * v
    else:
        matmul = 2 * c * c * (k + v) + 4 * c * k * v
        other = c * k + c * v + k * v
    return Flops(matmul=n_heads * n_chunks * matmul, attention=0, other=n_heads * n_chunks * other)


def recurrent_flops(rule: str, seq_lens: list[int], n_heads: int, k_dim: int, v_dim: int) -> Flops:
    """Forward FLOPs of recurrent_rule (or as many recurrent_step calls) over these lengths."""
    check_rule(rule)
    k, v = k_dim, v_dim
    tokens = sum(seq_lens)
    matmul = (4 if rule in WITH_BETA else 2) * k * v
    other = {"linear": k + 2 * k * v, "gla": 2 * k + 3 * k * v, "delta": k + 2 * v + 2 * k * v,
             "gated_delta": 1 + k + 2 * v + 3 * k * v}[rule]
    return Flops(matmul=n_heads * tokens * matmul, attention=0, other=n_heads * tokens * other)


def kernels_unsupported(rule: str, k_dim: int, v_dim: int, chunk_size: int) -> str | None:
    """None when the kernels take this rule, head sizes and chunk size, else why not and what
    to do: the one statement of their range (check_kernel_arguments and MoM's `supports`; the
    model dtypes are KERNEL_DTYPE_NAMES)."""
    if rule not in KERNEL_RULES:
        return (f"rule {rule!r} has no Triton kernel yet (kernels: {', '.join(KERNEL_RULES)}); "
                "use backend 'reference'")
    if max(k_dim, v_dim) > MAX_HEAD_DIM:
        return (f"the Triton kernels take key and value head sizes up to {MAX_HEAD_DIM}, got "
                f"K={k_dim}, V={v_dim}; use backend 'reference'")
    if chunk_size not in CHUNK_SIZES:
        return (f"the Triton kernels take chunk_size in {CHUNK_SIZES}, got {chunk_size}; "
                "set chunk_size to one of them or use backend 'reference'")
    return None
