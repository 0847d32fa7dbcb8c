"""FLOP accounting types shared by the ops and the components (a neutral module: ops never
import components). 1 FLOP = one multiply or one add; a multiply-accumulate is 2 FLOPs."""
from __future__ import annotations

from dataclasses import dataclass


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
