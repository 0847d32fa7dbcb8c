"""The rmsnorm module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ...ops.norm import add_rmsnorm, rmsnorm
from ..base import ModelConfig
from ..modules import ComponentModule


class RMSNormModule(ComponentModule):
    backends = ("reference", "triton")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        self.eps = float(cfg["eps"])
        self.unit_offset = bool(cfg.get("unit_offset"))
        self.weight = nn.Parameter(torch.empty(model.d_model))

    def reset_parameters(self):
        (nn.init.zeros_ if self.unit_offset else nn.init.ones_)(self.weight)

    def scale(self) -> torch.Tensor:
        """w, or (Gemma) 1 + w in float32 (float64 stays float64)."""
        if not self.unit_offset:
            return self.weight
        return 1.0 + self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm(x, self.scale(), self.eps, backend=self.backend)

    def forward_add(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(h), h) with h = x + delta (x when delta is None): one kernel with `triton`."""
        return add_rmsnorm(x, delta, self.scale(), self.eps, backend=self.backend)
