"""The mlp module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig
from ..modules import ComponentModule
from .spec import ACTIVATIONS


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GeLU's tanh approximation (GPT-2's gelu_new, Gemma's gelu_pytorch_tanh)."""
    return nn.functional.gelu(x, approximate="tanh")


TORCH_ACTIVATIONS = {"silu": nn.functional.silu, "gelu": nn.functional.gelu, "relu": nn.functional.relu,
                     "gelu_tanh": gelu_tanh}


class MLPModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d, f = model.d_model, cfg["d_ff"]
        act, self.gated = ACTIVATIONS[cfg["activation"]]
        self.act = TORCH_ACTIVATIONS[act]
        self.std, self.out_std = model.init_std, model.out_proj_std
        if self.gated:
            self.gate_proj = nn.Linear(d, f, bias=cfg["bias"])
        self.up_proj = nn.Linear(d, f, bias=cfg["bias"])
        self.down_proj = nn.Linear(f, d, bias=cfg["bias"])

    def reset_parameters(self):
        for lin in ([self.gate_proj] if self.gated else []) + [self.up_proj]:
            nn.init.normal_(lin.weight, std=self.std)
        nn.init.normal_(self.down_proj.weight, std=self.out_std)
        for lin in self.children():
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))
