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
        self.weight = nn.Parameter(torch.empty(model.d_model))

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm(x, self.weight, self.eps, backend=self.backend)

    def forward_add(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(h), h) with h = x + delta (x when delta is None): one kernel with `triton`."""
        return add_rmsnorm(x, delta, self.weight, self.eps, backend=self.backend)
