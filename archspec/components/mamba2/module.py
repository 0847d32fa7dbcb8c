"""The mamba2 module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ...ops.conv import causal_conv1d, causal_conv1d_step
from ...ops.norm import gated_rmsnorm
from ...ops.ssm import ssd_chunked, ssd_step
from ..base import ModelConfig
from ..mamba.module import SSMState, last_inputs
from ..modules import ComponentModule, at_least_float32, fresh, init_dt_bias, state_device_dtype
from .spec import Mamba2


class GatedRMSNorm(nn.Module):
    """Holds `norm.weight` [E] (init 1) under the reference's name; archspec.ops.norm computes."""

    def __init__(self, width: int, eps: float, norm_before_gate: bool, group_size: int):
        super().__init__()
        self.eps, self.norm_before_gate, self.group_size = eps, norm_before_gate, group_size
        self.weight = nn.Parameter(torch.empty(width))

    def forward(self, y: torch.Tensor, z: torch.Tensor, backend: str = "reference") -> torch.Tensor:
        return gated_rmsnorm(y, z, self.weight, self.eps, self.norm_before_gate, self.group_size,
                             backend=backend)


class Mamba2Module(ComponentModule):
    # with `triton`, the gated RMSNorm runs as the fused kernel (archspec/ops/norm); the SSD
    # scan stays the chunked PyTorch form for now
    backends = ("reference", "triton")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d, e, h, p, g, n, k = Mamba2._dims(cfg, model)
        self.inner, self.heads, self.head_dim, self.groups, self.d_state, self.d_conv = e, h, p, g, n, k
        self.cfg = dict(cfg)
        self.std, self.out_std = model.init_std, model.out_proj_std
        self.in_proj = nn.Linear(d, 2 * e + 2 * g * n + h, bias=cfg["bias"])
        # only holds conv1d.weight [E + 2GN, 1, k] and conv1d.bias under the reference's names;
        # the convolution itself is archspec.ops.conv.causal_conv1d
        self.conv1d = nn.Conv1d(e + 2 * g * n, e + 2 * g * n, k, groups=e + 2 * g * n,
                                bias=cfg["conv_bias"])
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.empty(h))
        self.norm = GatedRMSNorm(e, float(cfg["norm_eps"]), cfg["norm_before_gate"], e // g)
        self.out_proj = nn.Linear(e, d, bias=cfg["bias"])

    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.cfg
        nn.init.normal_(self.in_proj.weight, std=self.std)
        nn.init.normal_(self.out_proj.weight, std=self.out_std)
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.conv1d.reset_parameters()
        init_dt_bias(self.dt_bias, cfg["dt_min"], cfg["dt_max"], cfg["dt_init_floor"])
        lo, hi = cfg["A_init_range"]
        a = torch.empty(self.heads, dtype=torch.float32, device=self.A_log.device).uniform_(lo, hi)
        self.A_log.copy_(torch.log(a))
        nn.init.ones_(self.D)
        nn.init.ones_(self.norm.weight)

    def _split(self, zxbcdt: torch.Tensor):
        e, gn = self.inner, self.groups * self.d_state
        return zxbcdt.split([e, e + 2 * gn, self.heads], dim=-1)

    def _dt(self, dt0: torch.Tensor) -> torch.Tensor:
        # float32 for float32 / bfloat16 models (as the reference), float64 for float64 ones
        dt = nn.functional.softplus(at_least_float32(dt0) + at_least_float32(self.dt_bias))
        limit = self.cfg["dt_limit"]
        return dt if limit is None else dt.clamp(float(limit[0]), float(limit[1]))

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        return self._run(x)[0]

    def _run(self, x: torch.Tensor):
        """(y [B, T, d], the conv's input [B, T, E + 2GN], the final SSD state [B, H, P, N])."""
        b, t, _ = x.shape
        e, gn = self.inner, self.groups * self.d_state
        z, xbc0, dt0 = self._split(self.in_proj(x))
        xbc = causal_conv1d(xbc0, self.conv1d.weight, self.conv1d.bias, activation="silu")
        u, bm, cm = xbc.split([e, gn, gn], dim=-1)
        y, final = ssd_chunked(u.reshape(b, t, self.heads, self.head_dim), self._dt(dt0),
                           -torch.exp(at_least_float32(self.A_log)),
                           bm.reshape(b, t, self.groups, self.d_state),
                           cm.reshape(b, t, self.groups, self.d_state),
                           self.cfg["chunk_size"], self.D)
        return self.out_proj(self.norm(y.reshape(b, t, e), z, self.backend).to(x.dtype)), xbc0, final

    # --- decoding (modules.py gives the contract) ---------------------------------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> SSMState:
        """conv: the last k - 1 conv inputs [B, E + 2GN, k-1] in the model dtype (oldest
        first); ssm: the SSD state [B, H, P, N] float32; zeros."""
        device, dtype = state_device_dtype(self, device, dtype)
        conv_dim = self.inner + 2 * self.groups * self.d_state
        return SSMState(torch.zeros(batch, conv_dim, self.d_conv - 1, dtype=dtype, device=device),
                        torch.zeros(batch, self.heads, self.head_dim, self.d_state, dtype=torch.float32,
                                    device=device))

    def prefill(self, x: torch.Tensor, state: SSMState, ctx=None) -> torch.Tensor:
        """The forward over the prompt x [B, T, d] (the chunked SSD), keeping its final state
        and its last k - 1 conv inputs."""
        fresh(state)
        y, xbc, final = self._run(x)
        state.conv.copy_(last_inputs(xbc, self.d_conv - 1))
        state.ssm.copy_(final)
        state.pos = x.shape[1]
        return y

    def step(self, x_t: torch.Tensor, state: SSMState, ctx=None) -> torch.Tensor:
        """One token: x_t [B, d] -> y_t [B, d]; the recurrent form."""
        b = x_t.shape[0]
        e, gn = self.inner, self.groups * self.d_state
        z, xbc, dt0 = self._split(self.in_proj(x_t))
        xbc, conv = causal_conv1d_step(xbc, state.conv, self.conv1d.weight, self.conv1d.bias, "silu")
        u, bm, cm = xbc.split([e, gn, gn], dim=-1)
        y, ssm = ssd_step(state.ssm, u.reshape(b, self.heads, self.head_dim), self._dt(dt0),
                          -torch.exp(at_least_float32(self.A_log)),
                          bm.reshape(b, self.groups, self.d_state),
                          cm.reshape(b, self.groups, self.d_state), self.D)
        state.conv.copy_(conv)
        state.ssm.copy_(ssm)
        state.pos += 1
        return self.out_proj(self.norm(y.reshape(b, e), z, self.backend).to(x_t.dtype))
