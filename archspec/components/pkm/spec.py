"""PKM: product-key memory (Lample et al., 2019, arXiv 1907.05242; facebookresearch/XLM
`memory.py` and its PKM-layer notebook), with the options of Memory Layers at Scale (Berges et
al., 2024, arXiv 2412.09764): values shared across memory layers, SiLU-gated output.

    x: [B, T, d];  H heads, K = k_dim (even), c = K / 2, n = n_keys, n^2 slots, v = v_dim
    q = x W_q^T + b_q                          [B T, H K]   (query network: one linear)
    q <- BatchNorm1d(q)                        (query_batchnorm only; see below)
    per token and head h:  q = [q1 ; q2] (halves of c),  sub-keys k1, k2 = keys[h]  [2, n, c]
        s1 = q1 k1^T, s2 = q2 k2^T             [n] each; slot (i, j) scores s1_i + s2_j
        I = top-knn(s1), J = top-knn(s2);  S = the knn best of {s1_i + s2_j : i in I, j in J}
        w = softmax(scores of S)               [knn]  (float32)
    m = sum_h sum_{(i, j) in S_h} w_ij values[i n + j]          [B, T, v]   (an embedding bag)
    y = m                                      (v == d, no gate: XLM)
    y = m W_o^T + b_o                          (v != d: a projection back to d)
    y = (m * SiLU(x W_g^T + b_g)) W_o^T + b_o  (output_gate: Memory Layers at Scale's
                                                swilu_projection + value_proj)

The lookup never scores the n^2 slots: 2n sub-key scores and knn^2 candidate sums per head.
The candidates always contain the exact top knn of all n^2 slots (argument and the plain
all-slot form in archspec/ops/pkm): `form = "full"` scores every slot and reads the values by
indexing (the ground truth); `form = "product"` (default) is the fast path.

Values: `values` is an EmbeddingBag(n^2, v, mode='sum') per layer, or, with share_values: G,
one table `shared.pkm_values_G.weight` [n^2, v] read by every PKM layer naming group G (Memory
Layers at Scale shares one table across all its memory layers): counted once, saved once,
trained by every user; the layers sharing it must agree on n_keys and v_dim (a located error).

Query batchnorm: BatchNorm1d over the B T queries. In training it normalises with the batch's
statistics, so each token's query depends on every token of the batch, later positions
included: the layer is not causal in training (and padding shifts the statistics, as XLM
warns). At inference it uses running statistics and is causal per token. Off by default (XLM's
`mem_query_batchnorm` default false; its PKM notebook turns it on), reported in the notes.

Parameters: n^2 v (values, unless shared) + H n K (keys [H, 2, n, c]) + d H K + H K (query
network with bias) [+ 2 H K batchnorm] [+ d v + v (gate, with bias)] [+ v d + d (output
projection, with bias, when gated or v != d)]. XLM's defaults (n 512, H 4, K 256, knn 32) at
d = v = 1024: 270,009,344 (270,011,392 with batchnorm), 268,435,456 of them values.

FLOPs for one sequence (1 FLOP = one multiply or one add; a comparison counts 1):
    matmul: 2 T d H K (query) + 2 T H n K (sub-key scores) [+ 2 T d v (gate)] [+ 2 T v d (out)]
            -- exactly what FlopCounterMode counts on the reference module.
    other per token: H K (query bias) [+ 4 H K batchnorm at inference]; 2 H n comparisons
            (top-knn of each half); H knn^2 candidate sums + H knn^2 comparisons (their top-knn);
            5 H knn softmax; H knn v multiplies + (H knn - 1) v adds (the embedding bag: a
            weighted sum that FlopCounterMode does not count, having no formula for
            embedding_bag); [gate: v bias + 4 v SiLU + v product]; [out: d bias].
A flat memory scoring all n^2 slots would take 2 T H n^2 K matmul FLOPs instead of 2 T H n K
(n times more: 512 x at n = 512); the all-slot ground truth here does H n^2 adds and H n^2
comparisons per token on top of the sub-key matmul (tests/test_pkm.py measures both).
Inference state: none (each token reads the memory independently): 0 bytes.
Active parameters per token: the query network (and batchnorm), all keys (every sub-key is
scored), the H knn value rows read (at most n^2), and the gate / output projection. With shared
values the instance counts only its own weights; the shared table is its own report row.
Initialisation (XLM): query network as nn.Linear (U(+-1/sqrt(d)) weight and bias); keys
U(+-1/sqrt(c)) (XLM's get_uniform_keys at dim K/2, drawn from torch's generator instead of
XLM's fixed per-head numpy seeds); values N(0, v^-1/2); batchnorm weight 1, bias 0. Gate and
output projections (Memory Layers at Scale): weights N(0, d^-1/2), biases nn.Linear's default.
"""
from __future__ import annotations

import math

from ...costs import ACTIVATION_FLOPS, SOFTMAX_FLOPS_PER_ELEMENT
from ...ops import pkm as PK
from ... import limits as L
from ..base import CheckIssue, Component, Flops, register

BATCHNORM_FLOPS = 4     # per element at inference: subtract mean, scale by 1/std, weight, bias
GROUP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def values_key(cfg: dict) -> str | None:
    """The shared-weight key of the value table (None: the layer has its own values)."""
    group = cfg.get("share_values")
    return None if group is None else f"pkm_values_{group}"


@register
class PKM(Component):
    type = "pkm"
    module = "archspec.components.pkm.module:PKMModule"
    summary = "product-key memory: top-k over n_keys^2 value slots via two sub-key halves"
    schema = {
        "properties": {
            "n_keys": {"type": "integer", "minimum": 1, **L.KEYS.schema(), "default": 512,
                       "description": "sub-keys per query half; the memory has n_keys^2 value slots"},
            "n_heads": {"type": "integer", "minimum": 1, **L.HEADS.schema(), "default": 4,
                        "description": "memory heads H (each reads knn slots; their reads are summed)"},
            "knn": {"type": "integer", "minimum": 1, **L.KNN.schema(), "default": 32,
                    "description": "slots read per head and token (top-k; at most n_keys)"},
            "k_dim": {"type": "integer", "minimum": 2, **L.HEAD_DIM.schema(), "default": 256,
                      "description": "query / product-key dimension K per head (even: two halves)"},
            "v_dim": {"type": ["integer", "null"], "minimum": 1, **L.WIDTH.schema(), "default": None,
                      "description": "value dimension (null = d_model; otherwise an output "
                                     "projection maps it back to d_model)"},
            "query_bias": {"type": "boolean", "default": True,
                           "description": "bias on the query network"},
            "query_batchnorm": {"type": "boolean", "default": False,
                                "description": "BatchNorm1d on the queries (XLM option): uses "
                                               "batch statistics in training, so not causal there"},
            "share_values": {"type": ["string", "null"], "pattern": GROUP_PATTERN, "default": None,
                             "description": "group name: PKM layers of one group share one value "
                                            "table (counted and saved once); null = own values"},
            "output_gate": {"type": "boolean", "default": False,
                            "description": "SiLU-gated output (Memory Layers at Scale): "
                                           "y = (m * SiLU(W_g x + b_g)) W_o + b_o"},
        },
    }
    example = {"n_keys": 16, "n_heads": 2, "knn": 4, "k_dim": 16}

    def derive(self, cfg, model):
        if cfg.get("v_dim") is None:
            cfg["v_dim"] = model.d_model
        cfg["out_proj"] = bool(cfg["output_gate"] or cfg["v_dim"] != model.d_model)
        return cfg

    def check(self, cfg, model, written=frozenset()):
        issues = []
        if cfg["k_dim"] % 2:
            issues.append(CheckIssue("k_dim", f"k_dim={cfg['k_dim']} is odd: the query is split "
                                     "into two halves of k_dim / 2", "use an even k_dim"))
        if cfg["knn"] > cfg["n_keys"]:
            issues.append(CheckIssue("knn", f"knn={cfg['knn']} exceeds n_keys={cfg['n_keys']}: "
                                     "each half takes its top knn of n_keys sub-keys",
                                     f"use knn <= n_keys ({cfg['n_keys']})"))
        elif cfg["knn"] == 1:
            issues.append(CheckIssue("knn", "knn=1: the softmax over one score is 1, so the keys "
                                     "and the query network would get no gradient",
                                     "use knn >= 2"))
        return issues

    # --- accounting ----------------------------------------------------------------------
    def own_param_shapes(self, cfg, model):
        d, h, k, n, v = model.d_model, cfg["n_heads"], cfg["k_dim"], cfg["n_keys"], cfg["v_dim"]
        shapes = {"query_proj.weight": (h * k, d)}
        if cfg["query_bias"]:
            shapes["query_proj.bias"] = (h * k,)
        if cfg["query_batchnorm"]:
            shapes["query_bn.weight"] = (h * k,)
            shapes["query_bn.bias"] = (h * k,)
        shapes["keys"] = (h, 2, n, k // 2)
        if values_key(cfg) is None:
            shapes["values.weight"] = (n * n, v)
        if cfg["output_gate"]:
            shapes["gate_proj.weight"] = (v, d)
            shapes["gate_proj.bias"] = (v,)
        if cfg["out_proj"]:
            shapes["out_proj.weight"] = (d, v)
            shapes["out_proj.bias"] = (d,)
        return shapes

    def shared_params(self, cfg, model):
        key = values_key(cfg)
        return {} if key is None else {key: {"weight": (cfg["n_keys"] ** 2, cfg["v_dim"])}}

    def build_shared(self, key, cfg, model):
        from .module import ValueTable
        return ValueTable(cfg["n_keys"] ** 2, cfg["v_dim"])

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d, h, k, n, knn, v = (model.d_model, cfg["n_heads"], cfg["k_dim"], cfg["n_keys"],
                              cfg["knn"], cfg["v_dim"])
        t = seq_len
        lookup = PK.lookup_flops(h, n, k, knn, v)
        matmul = 2 * t * d * h * k + t * lookup.matmul
        per_token = lookup.other + SOFTMAX_FLOPS_PER_ELEMENT * h * knn
        if cfg["query_bias"]:
            per_token += h * k
        if cfg["query_batchnorm"]:
            per_token += BATCHNORM_FLOPS * h * k
        if cfg["output_gate"]:
            matmul += 2 * t * d * v
            per_token += v + ACTIVATION_FLOPS["silu"] * v + v
        if cfg["out_proj"]:
            matmul += 2 * t * v * d
            per_token += d
        return Flops(matmul=matmul, other=t * per_token)

    def own_notes(self, cfg, model):
        notes = ["the value read (an embedding bag, H knn v multiply-adds per token) is counted "
                 "in 'other': FlopCounterMode has no formula for embedding_bag"]
        if cfg["query_batchnorm"]:
            notes.append("query_batchnorm uses batch statistics in training, so a token's query "
                         "depends on the other tokens of the batch, later ones included (not causal "
                         "in training); inference uses running statistics and is causal")
        return notes

    def own_state_bytes(self, cfg, model, seq_len):
        return 0  # no per-sequence state: each token reads the memory on its own

    def own_activation_bytes(self, cfg, model, seq_len):
        # What autograd saves per token (checked in tests/test_contract.py): the input and the query
        # halves for the two matmuls (and the query before the batchnorm); int64 indices of the
        # halves' top-knn (2 H knn), of the candidates' top-knn (H knn) and the bag's slots
        # (H knn), plus the bag's 3 per-bag int64 offsets; the softmax output (float32, or the
        # dtype if wider) and its cast to a narrower dtype; the gate's pre-activation, SiLU
        # output, read and product (4 v), or the projection's input (v).
        d, h, k, knn, v = model.d_model, cfg["n_heads"], cfg["k_dim"], cfg["knn"], cfg["v_dim"]
        e = model.dtype_bytes
        soft = max(4, e)
        per_token = (d + h * k * (2 if cfg["query_batchnorm"] else 1)) * e
        per_token += h * knn * 4 * 8 + 3 * 8 + h * knn * soft + (h * knn * e if e < soft else 0)
        if cfg["output_gate"]:
            per_token += 4 * v * e
        elif cfg["out_proj"]:
            per_token += v * e
        return seq_len * per_token

    def shared_active_param_count(self, key, cfg, model):
        # the value rows one token reads: knn per head
        return min(cfg["n_heads"] * cfg["knn"], cfg["n_keys"] ** 2) * cfg["v_dim"]

    def own_active_param_count(self, cfg, model):
        shapes = self.param_shapes(cfg, model)
        total = sum(math.prod(s) for s in shapes.values())
        if "values.weight" not in shapes:
            return total  # shared values: the table is counted in its own row
        rows = min(cfg["n_heads"] * cfg["knn"], cfg["n_keys"] ** 2)
        return total - math.prod(shapes["values.weight"]) + rows * cfg["v_dim"]
