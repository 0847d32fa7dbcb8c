"""The pkm module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ...ops import pkm as PK
from ..base import ModelConfig
from ..modules import ComponentModule
from .spec import values_key


class ValueTable(ComponentModule):
    """The value rows [n^2, v] one group of PKM layers shares (model.shared[key])."""

    def __init__(self, rows: int, v_dim: int):
        super().__init__()
        self.v_dim = v_dim
        self.weight = nn.Parameter(torch.empty(rows, v_dim))

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.weight, mean=0.0, std=self.v_dim ** -0.5)


class PKMModule(ComponentModule):
    # "fast": product-key top-k (two half-key searches, then the k x k candidates) and an
    # embedding-bag read; "reference": score all n^2 slots and index the values (ground truth)
    forms = ("fast", "reference")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d = model.d_model
        self.h, self.k, self.n = cfg["n_heads"], cfg["k_dim"], cfg["n_keys"]
        self.knn, self.v, self.d = cfg["knn"], cfg["v_dim"], d
        self.query_proj = nn.Linear(d, self.h * self.k, bias=cfg["query_bias"])
        self.query_bn = nn.BatchNorm1d(self.h * self.k) if cfg["query_batchnorm"] else None
        self.keys = nn.Parameter(torch.empty(self.h, 2, self.n, self.k // 2))
        self.shared_key = values_key(cfg)
        # XLM's EmbeddingBag(n^2, v, mode='sum'); given its (empty) weight so the constructor
        # does not initialise it (reset_parameters does; a normal_ over a large table is slow
        # even on the meta device)
        self.values = (nn.EmbeddingBag(self.n ** 2, self.v, mode="sum",
                                       _weight=torch.empty(self.n ** 2, self.v))
                       if self.shared_key is None else None)
        self.gate_proj = nn.Linear(d, self.v) if cfg["output_gate"] else None
        self.out_proj = nn.Linear(self.v, d) if cfg["out_proj"] else None

    @torch.no_grad()
    def reset_parameters(self):
        self.query_proj.reset_parameters()  # nn.Linear's: U(+-1/sqrt(d)), as XLM
        if self.query_bn is not None:
            self.query_bn.reset_parameters()
        bound = (self.k // 2) ** -0.5
        nn.init.uniform_(self.keys, -bound, bound)
        if self.values is not None:
            nn.init.normal_(self.values.weight, mean=0.0, std=self.v ** -0.5)
        for lin in (self.gate_proj, self.out_proj):
            if lin is not None:
                lin.reset_parameters()
                nn.init.normal_(lin.weight, mean=0.0, std=self.d ** -0.5)

    def value_table(self, ctx) -> torch.Tensor:
        if self.shared_key is None:
            return self.values.weight
        if ctx is None or self.shared_key not in ctx.shared:
            raise RuntimeError(f"this PKM layer reads the shared value table '{self.shared_key}'; "
                               "call it with the model's ForwardContext (ctx.shared)")
        return ctx.shared[self.shared_key].weight

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, d] -> (scores [N, H, knn], slots int64 [N, H, knn]) by the module's form."""
        q = self.query_proj(x)
        if self.query_bn is not None:
            q = self.query_bn(q)
        q = q.view(x.shape[0], self.h, self.k)
        select = PK.product_topk if self.form == "fast" else PK.full_topk
        return select(q, self.keys, self.knn)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        scores, slots = self.lookup(flat)
        weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
        read = PK.read_values if self.form == "fast" else PK.read_values_plain
        m = read(slots.reshape(b * t, -1), weights.reshape(b * t, -1), self.value_table(ctx))
        m = m.to(x.dtype)
        if self.gate_proj is not None:
            m = m * nn.functional.silu(self.gate_proj(flat))
        if self.out_proj is not None:
            m = self.out_proj(m)
        return m.view(b, t, -1)
