"""The mamba module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...ops.conv import causal_conv1d, causal_conv1d_step
from ...ops.ssm import selective_scan, selective_scan_step
from ..base import ModelConfig
from ..modules import ComponentModule, at_least_float32, fresh, init_dt_bias, state_device_dtype
from .spec import Mamba


class _ScaleOnly(nn.Module):
    """Holds one RMSNorm weight under the name Jamba's checkpoints use ('<name>.weight')."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))


class MambaModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d, e, n, r, k = Mamba._dims(cfg, model)
        self.inner, self.d_state, self.dt_rank, self.d_conv = e, n, r, k
        self.cfg = dict(cfg)
        self.std, self.out_std = model.init_std, model.out_proj_std
        self.in_proj = nn.Linear(d, 2 * e, bias=cfg["bias"])
        # only holds conv1d.weight [E, 1, k] and conv1d.bias as the reference names them;
        # the convolution itself is archspec.ops.conv.causal_conv1d
        self.conv1d = nn.Conv1d(e, e, k, groups=e, bias=cfg["conv_bias"])
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        self.out_proj = nn.Linear(e, d, bias=cfg["bias"])
        self.inner_norm_eps = float(cfg["inner_norm_eps"]) if cfg["inner_norms"] else None
        if cfg["inner_norms"] and cfg["inner_norm_weights"]:
            self.dt_layernorm = _ScaleOnly(r)
            self.b_layernorm = _ScaleOnly(n)
            self.c_layernorm = _ScaleOnly(n)

    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.cfg
        nn.init.normal_(self.in_proj.weight, std=self.std)
        nn.init.normal_(self.x_proj.weight, std=self.std)
        nn.init.normal_(self.out_proj.weight, std=self.out_std)
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.conv1d.reset_parameters()
        dt_std = cfg["dt_scale"] * self.dt_rank ** -0.5
        if cfg["dt_init"] == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        init_dt_bias(self.dt_proj.bias, cfg["dt_min"], cfg["dt_max"], cfg["dt_init_floor"])
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(a).expand(self.inner, -1))
        nn.init.ones_(self.D)
        if self.inner_norm_eps is not None and self.cfg["inner_norm_weights"]:
            for norm in (self.dt_layernorm, self.b_layernorm, self.c_layernorm):
                nn.init.ones_(norm.weight)

    def _inner_norm(self, v: torch.Tensor, name: str) -> torch.Tensor:
        # float32 as archspec's RMSNorm (Jamba's casts back before the scale: same to rounding);
        # float64 stays float64. Weightless (Falcon-Mamba): no scale.
        norm = getattr(self, name, None)
        weight = None if norm is None else at_least_float32(norm.weight)
        y = nn.functional.rms_norm(at_least_float32(v), (v.shape[-1],), weight, self.inner_norm_eps)
        return y.to(v.dtype)

    def _ssm_inputs(self, u: torch.Tensor):
        dt0, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norm_eps is not None:
            dt0 = self._inner_norm(dt0, "dt_layernorm")
            b = self._inner_norm(b, "b_layernorm")
            c = self._inner_norm(c, "c_layernorm")
        dt = nn.functional.softplus(at_least_float32(self.dt_proj(dt0)))
        return dt, -torch.exp(at_least_float32(self.A_log)), b, c

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        u, z = self.in_proj(x).split(self.inner, dim=-1)
        u = causal_conv1d(u, self.conv1d.weight, self.conv1d.bias, activation="silu")
        dt, a, b, c = self._ssm_inputs(u)
        y, _ = selective_scan(u, dt, a, b, c, self.D)
        return self.out_proj(y.to(x.dtype) * nn.functional.silu(z))

    # --- decoding (modules.py gives the contract) ---------------------------------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "SSMState":
        """conv: the last k - 1 conv inputs [B, E, k-1] in the model dtype (oldest first);
        ssm: the scan state [B, E, N] float32; zeros. Neither grows with max_len."""
        device, dtype = state_device_dtype(self, device, dtype)
        return SSMState(torch.zeros(batch, self.inner, self.d_conv - 1, dtype=dtype, device=device),
                        torch.zeros(batch, self.inner, self.d_state, dtype=torch.float32, device=device))

    def prefill(self, x: torch.Tensor, state: "SSMState", ctx=None) -> torch.Tensor:
        """The forward over the prompt x [B, T, d] (the chunked scan), keeping its final scan
        state and its last k - 1 conv inputs."""
        fresh(state)
        u0, z = self.in_proj(x).split(self.inner, dim=-1)
        u = causal_conv1d(u0, self.conv1d.weight, self.conv1d.bias, activation="silu")
        dt, a, b, c = self._ssm_inputs(u)
        y, final = selective_scan(u, dt, a, b, c, self.D)
        state.conv.copy_(last_inputs(u0, self.d_conv - 1))
        state.ssm.copy_(final)
        state.pos = x.shape[1]
        return self.out_proj(y.to(x.dtype) * nn.functional.silu(z))

    def step(self, x_t: torch.Tensor, state: "SSMState", ctx=None) -> torch.Tensor:
        """One token: x_t [B, d] -> y_t [B, d]; the recurrent form."""
        u, z = self.in_proj(x_t).split(self.inner, dim=-1)
        u, conv = causal_conv1d_step(u, state.conv, self.conv1d.weight, self.conv1d.bias, "silu")
        dt, a, b, c = self._ssm_inputs(u)
        y, ssm = selective_scan_step(state.ssm, u, dt, a, b, c, self.D)
        state.conv.copy_(conv)
        state.ssm.copy_(ssm)
        state.pos += 1
        return self.out_proj(y.to(x_t.dtype) * nn.functional.silu(z))


@dataclass
class SSMState:
    """A state-space layer's decoding state (mamba, mamba2): the conv window [B, C, k-1]
    (oldest first), the scan state (float32) and `pos`, the tokens consumed."""
    conv: torch.Tensor
    ssm: torch.Tensor
    pos: int = 0


def last_inputs(u: torch.Tensor, n: int) -> torch.Tensor:
    """The conv window after u [B, T, C]: its last n rows as [B, C, n], oldest first, zeros
    before the first token (a prompt shorter than the window)."""
    window = u[:, -n:].transpose(1, 2) if n else u[:, :0].transpose(1, 2)
    return nn.functional.pad(window, (n - window.shape[-1], 0))
