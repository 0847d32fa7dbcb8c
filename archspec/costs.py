"""FLOP accounting shared by the ops and the components (a neutral module: ops never import
components; it imports nothing heavy): the types, and the elementwise costs every formula
counts with. 1 FLOP = one multiply or one add; a multiply-accumulate is 2 FLOPs; an exp, log,
erf or compare is 1."""
from __future__ import annotations

from dataclasses import dataclass

# per element, stated once: components and ops import these rather than restating them
SOFTMAX_FLOPS_PER_ELEMENT = 5   # scale, subtract the row max, exp, sum, divide
ROPE_FLOPS_PER_ELEMENT = 3      # x cos + rotate(x) sin: two multiplies, an add
SOFTCAP_FLOPS_PER_ELEMENT = 3   # c tanh(x / c): divide, tanh, multiply
# silu = x / (1 + exp(-x)): negate+exp, add, divide, multiply; gelu = 0.5 x (1 + erf(x / sqrt 2)):
# scale, erf, add, two multiplies; relu: a compare; gelu_tanh = 0.5 x (1 + tanh(sqrt(2/pi) (x +
# 0.044715 x^3))): x^3 (2), its scale (1), the add (1), the scale (1), tanh, the add, two multiplies
ACTIVATION_FLOPS = {"silu": 4, "gelu": 5, "relu": 1, "gelu_tanh": 9}
SOFTPLUS_FLOPS_PER_ELEMENT = 3  # exp, add, log
# RMSNorm, y = x / sqrt(mean(x^2) + eps) * w: square, sum, scale and weight per element, and the
# mean's division and the eps add once per normalised group (row)
RMSNORM_FLOPS_PER_ELEMENT = 4
RMSNORM_FLOPS_PER_GROUP = 2


@dataclass(frozen=True)
class FlopConvention:
    """How FLOPs are counted. 1 FLOP = one multiply or one add, so a multiply-accumulate (MAC)
    is 2 FLOPs. `causal_attention='attended'` counts only the query-key pairs a causal mask
    keeps (T(T+1)/2 for full attention; fewer with a window); 'dense' counts all T^2 pairs,
    as torch's FlopCounterMode and fvcore do for SDPA."""

    causal_attention: str = "attended"

    def pairs(self, seq_len: int, window: int | None = None) -> int:
        """Query-key pairs scored in one head for a sequence of length `seq_len`."""
        if self.causal_attention == "dense":
            return seq_len * seq_len
        return causal_pairs(seq_len, window)


def causal_pairs(seq_len: int, window: int | None = None) -> int:
    """sum over t of min(t + 1, window): pairs a causal (sliding-window) mask keeps."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


@dataclass
class Flops:
    """Forward FLOPs of one sequence, by kind. `matmul` and `attention` are what torch's
    FlopCounterMode measures; `other` is elementwise work (norms, activations, softmax, RoPE,
    gates, residual adds) at the per-element costs each component states."""

    matmul: int = 0
    attention: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.attention + self.other

    def __add__(self, o: "Flops") -> "Flops":
        return Flops(self.matmul + o.matmul, self.attention + o.attention, self.other + o.other)

    def to_dict(self) -> dict:
        return {"matmul": self.matmul, "attention": self.attention, "other": self.other,
                "total": self.total}
