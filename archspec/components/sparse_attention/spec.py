"""Sparse causal self-attention: a sliding window with global tokens, or block-sparse top-k
selection (MoBA / NSA style). GQA and RoPE as in `attention`.

    x: [B, T, d]
    q = x W_q^T: [B, T, H, D];  k = x W_k^T, v = x W_v^T: [B, T, H_kv, D];  q, k <- RoPE(q, k)
    o_h[i] = sum_{j in R(i)} softmax_j(q_h[i] . k_g[j] / sqrt(D)) v_g[j],   g = h // (H / H_kv)
    y = concat_h(o_h) W_o^T: [B, T, d]

The read set R(i) (always j <= i, and always i itself):

  pattern window     R(i) = {j : i - j < w}  U  {global j}  U  ({all j} if i is global and
                     global_reads = prefix).  Global positions: the first `global_first` ones
                     (attention sinks) and, with `global_every` = N, positions N-1, 2N-1, ...
                     A global position is read by every later position; with global_reads =
                     prefix (default) it also reads its whole prefix, with `window` it reads
                     like any other position (window plus earlier global tokens).
  pattern block_topk blocks of b = block_size positions; R(i) = i's own block up to i, plus all
                     keys of the top-k earlier blocks m < blk(i) by the gate q_h[i] . mean(k_g
                     over block m) (per query and head, after RoPE, float32). The selection has
                     no gradient; the attention over the selected keys has.

Fast reference paths (archspec/ops/sparse_attention): the window is computed in query blocks of
b rows, each against its own key list: the band of b + w - 1 keys (strided windows of the
padded keys) followed by the global keys, one joint softmax per row; the global queries are
scored densely over their prefix. Block top-k scores each query block's own block densely and
packs the selected (query, block) pairs by block into tiles of max(16, b) query rows, each
scored against its block's b keys, merged with the own block by an online softmax. Both run in
chunks of about 2^22 score elements, checkpointed when gradients are needed (scores recomputed
in backward): memory O(T (b + w + n_global)) for the window and O(T (b + T / b)) for block
top-k (its gate scores every earlier block's pooled key), never [T, T]; what backward keeps
is O(T) per head. `module.form = "dense"` switches to the ground truth: dense masked
softmax over the explicit [T, T] mask of the definition.

FLOPs for one sequence (1 FLOP = one multiply or one add): projections 2 T d D (2H + 2H_kv);
attention 4 D H P for P query-key pairs per head (q k^T and p v), where P depends on the
FlopConvention:
  dense     the pairs the fast path computes, masked slack included, which is what
            FlopCounterMode measures (never T^2: that is the point of the component).
            window: n_b b (b + w - 1) + n_b b n_gk + n_gq (g_last + 1)  (ops/sparse_attention/window.py);
            block_topk: n_b b^2 + b R / H, plus the gate 2 D H (T - b)(n_b - 1), R the padded
            selection rows: H S selections plus the padding of each (head, block) group of
            queries to a multiple of max(16, b) rows, which depends on the data. `flops`
            assumes half a tile per head and block; flops_bounds gives the range;
            `flops(..., realized={"padded_rows": R})` the exact count for the R a forward reports.
  attended  the pairs the mask keeps: window `attended_pairs` (exact), block_topk
            sum over blocks of L(L+1)/2 plus b S (S selections per head), and the gate over the
            candidate blocks only.
Elementwise (`other`): softmax 5 per pair, RoPE 3 per rotated element, q scaling 1 per element,
biases 1 per element; block_topk adds key pooling (1 per pooled element plus 1 per mean) and
the merge of its two parts (2 D per selection row).
Inference state: KV (2 H_kv D elements per token) of what later positions can still read: the
window's last w - 1 tokens plus the older global tokens (window pattern; the whole sequence
when global_every is set and global tokens read their prefix, since a later global position
reads every earlier key), or every token (block_topk: any earlier block can be selected).
The decoding state made for T tokens holds that many slots from the start (a fixed capacity, so
that step has static shapes): a ring of min(T, w - 1) and one slot per global position older
than it; the figure for T is what it holds.
"""
from __future__ import annotations

import math

from ...costs import ROPE_FLOPS_PER_ELEMENT, SOFTMAX_FLOPS_PER_ELEMENT
from ...ops import sparse_attention as SA
from ..attention.spec import HEADS_SCHEMA, check_heads, derive_heads, projection_shapes
from ... import limits as L
from ..base import CheckIssue, Component, Flops, register
WINDOW_KEYS = ("window", "global_first", "global_every", "global_reads")
TOPK_KEYS = ("topk",)


def _window_plan(cfg, seq_len):
    """What the banded form computes, positions included (the module's forward reads it)."""
    return SA.plan_window(seq_len, cfg["window"], cfg["block_size"], cfg["global_first"],
                          cfg["global_every"], cfg["global_reads"])


def _window_counts(cfg, seq_len) -> SA.WindowCounts:
    """The sizes of what the banded form computes (SA.plan_window's, in O(1): accounting at a
    long context must not list its global positions)."""
    return SA.window_counts(seq_len, cfg["window"], cfg["block_size"], cfg["global_first"],
                            cfg["global_every"], cfg["global_reads"])


def _keeps_everything(cfg) -> bool:
    """Decoding must keep every key: a later position may read any earlier block (block_topk),
    or a later global position its whole prefix (global_every with global_reads = prefix)."""
    return cfg["pattern"] == "block_topk" or (cfg["global_every"] is not None and cfg["global_reads"] == "prefix")


def kept_tokens(cfg, seq_len: int) -> int:
    """Tokens whose K and V a later position can read after `seq_len` tokens (window:
    j >= T + 1 - w, plus the older global ones): the slots of a decoding state made for seq_len."""
    if _keeps_everything(cfg):
        return seq_len
    w = cfg["window"]
    recent = min(seq_len, w - 1)
    older = SA.GlobalSet(seq_len - recent, cfg["global_first"], cfg["global_every"])
    return recent + older.count(0, seq_len - recent)


@register
class SparseAttention(Component):
    type = "sparse_attention"
    module = "archspec.components.sparse_attention.module:SparseAttentionModule"
    summary = "causal sparse attention: sliding window + global tokens, or block top-k; GQA, RoPE"
    schema = {
        "properties": {
            "pattern": {"enum": ["window", "block_topk"], "default": "window",
                        "description": "window: sliding window plus global tokens; block_topk: own "
                                       "block plus the top-k earlier blocks by pooled keys"},
            **HEADS_SCHEMA,
            "window": {"type": "integer", "minimum": 1, **L.SEQ_LEN.schema(), "default": 4096,
                       "description": "window pattern: query i reads keys i - window < j <= i "
                                      "(4096: Mistral-7B)"},
            "global_first": {"type": "integer", "minimum": 0, **L.SEQ_LEN.schema(), "default": 0,
                             "description": "window pattern: the first N positions are global "
                                            "(attention sinks)"},
            "global_every": {"type": ["integer", "null"], "minimum": 1, **L.SEQ_LEN.schema(), "default": None,
                             "description": "window pattern: every N-th position (N-1, 2N-1, ...) is "
                                            "global; null = none"},
            "global_reads": {"enum": ["prefix", "window"], "default": "prefix",
                             "description": "window pattern: a global position reads its whole prefix "
                                            "(prefix) or only its window and earlier global tokens "
                                            "(window, so decoding keeps no more than window + globals)"},
            "block_size": {"type": "integer", "minimum": 1, **L.CHUNK.schema(), "default": 64,
                           "description": "block_topk: positions per block (64: NSA); window: query "
                                          "rows per band block of the fast path"},
            "topk": {"type": "integer", "minimum": 1, **L.SEQ_LEN.schema(), "default": 16,
                     "description": "block_topk: earlier blocks each query reads besides its own "
                                    "(16: NSA's selected-block count)"},
        },
        "required": ["n_heads"],
    }
    example = {"pattern": "window", "n_heads": 4, "n_kv_heads": 2, "window": 8, "global_first": 1,
               "global_every": 16, "block_size": 4}

    def derive(self, cfg, model):
        return derive_heads(cfg, model)

    def check(self, cfg, model, written=frozenset()):
        issues = check_heads(cfg, model, written)
        t_max = model.max_seq_len
        if cfg["pattern"] == "window":
            for key in TOPK_KEYS:
                if key in written:
                    issues.append(CheckIssue(key, f"'{key}' applies to pattern block_topk, not window",
                                             f"remove '{key}' or set `pattern: block_topk`"))
            if cfg["window"] >= t_max:
                issues.append(CheckIssue("window", f"window={cfg['window']} covers every position up to "
                                         f"max_seq_len={t_max}: this is full causal attention",
                                         "use a window below max_seq_len, or type `attention`"))
            if cfg["global_first"] >= t_max:
                issues.append(CheckIssue("global_first", f"global_first={cfg['global_first']} makes every "
                                         f"position up to max_seq_len={t_max} global",
                                         "use a few sink positions (e.g. 1 to 4)"))
            if cfg["global_every"] is not None and cfg["global_every"] > t_max:
                issues.append(CheckIssue("global_every", f"global_every={cfg['global_every']} exceeds "
                                         f"max_seq_len={t_max}: no position is ever global",
                                         "use a period below max_seq_len, or null"))
        else:
            for key in WINDOW_KEYS:
                if key in written:
                    issues.append(CheckIssue(key, f"'{key}' applies to pattern window, not block_topk",
                                             f"remove '{key}' or set `pattern: window`"))
            b = cfg["block_size"]
            earlier = math.ceil(t_max / b) - 1
            if earlier < 1:
                issues.append(CheckIssue("block_size", f"block_size={b} leaves one block at "
                                         f"max_seq_len={t_max}: nothing to select",
                                         "use a block size well below max_seq_len"))
            elif cfg["topk"] >= earlier:
                issues.append(CheckIssue("topk", f"topk={cfg['topk']} selects every earlier block "
                                         f"({earlier} at max_seq_len={t_max}, block_size={b}): this "
                                         "is full causal attention at extra cost",
                                         f"use topk below {earlier}, or type `attention`"))
        return issues

    def own_param_shapes(self, cfg, model):
        return projection_shapes(cfg, model)

    # --- FLOPs ---------------------------------------------------------------------------
    def _common(self, cfg, model, seq_len) -> Flops:
        d, hd, h, hkv = model.d_model, cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
        other = seq_len * h * hd  # q * scale
        if cfg["rope"]:
            other += ROPE_FLOPS_PER_ELEMENT * seq_len * (h + hkv) * hd
        if cfg["bias"]:
            other += seq_len * ((h + 2 * hkv) * hd + d)
        return Flops(matmul=2 * seq_len * d * hd * (2 * h + 2 * hkv), other=other)

    @staticmethod
    def _blocks(cfg, seq_len):
        b = min(cfg["block_size"], seq_len)
        n_b = math.ceil(seq_len / b)
        return b, n_b

    def _flops_for_rows(self, cfg, model, seq_len: int, padded_rows: int) -> Flops:
        """block_topk under the dense convention for one sequence whose selected-block part
        packed `padded_rows` R rows (all heads; a forward of one sequence reports its R as
        `module.last_padded_rows`)."""
        hd, h = cfg["head_dim"], cfg["n_heads"]
        b, n_b = self._blocks(cfg, seq_len)
        gate = 2 * hd * h * (seq_len - b) * (n_b - 1) if n_b > 1 else 0
        own_pairs = h * n_b * b * b
        flops = self._common(cfg, model, seq_len)
        flops.attention = gate + 4 * hd * (own_pairs + b * padded_rows)
        flops.other += self._topk_other(cfg, seq_len, own_pairs + b * padded_rows, padded_rows)
        return flops

    def expected_rows(self, cfg, seq_len: int) -> int:
        """R the report assumes: H S selection rows plus half a tile of padding per head and
        selectable block (each block's last tile is on average half full)."""
        _, n_b = self._blocks(cfg, seq_len)
        per_head = SA.selections_per_head(seq_len, cfg["block_size"], cfg["topk"])
        pad = (n_b - 1) * (SA.tile_rows(cfg["block_size"]) - 1) // 2 if per_head else 0
        return cfg["n_heads"] * (per_head + pad)

    def _topk_other(self, cfg, seq_len, pairs, rows):
        b, n_b = self._blocks(cfg, seq_len)
        pooled = cfg["n_kv_heads"] * cfg["head_dim"] * (n_b - 1) * (b + 1)
        return SOFTMAX_FLOPS_PER_ELEMENT * pairs + pooled + 2 * cfg["head_dim"] * rows

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        """realized (block_topk): {"padded_rows": R the forward packed (one sequence's:
        `module.last_padded_rows` after a forward of batch 1)}: the work that ran, counted as
        the dense convention counts."""
        hd, h = cfg["head_dim"], cfg["n_heads"]
        if realized is not None and cfg["pattern"] == "block_topk":
            return self._flops_for_rows(cfg, model, seq_len, realized["padded_rows"])
        if cfg["pattern"] == "window":
            if conv.causal_attention == "dense":
                pairs = _window_counts(cfg, seq_len).computed_pairs()
            else:
                pairs = SA.attended_pairs(seq_len, cfg["window"], cfg["global_first"], cfg["global_every"],
                                          cfg["global_reads"])
            flops = self._common(cfg, model, seq_len)
            flops.attention = 4 * hd * h * pairs
            flops.other += SOFTMAX_FLOPS_PER_ELEMENT * h * pairs
            return flops
        s = h * SA.selections_per_head(seq_len, cfg["block_size"], cfg["topk"])
        if conv.causal_attention == "dense":
            return self._flops_for_rows(cfg, model, seq_len, self.expected_rows(cfg, seq_len))
        b, n_b = self._blocks(cfg, seq_len)
        last = seq_len - (n_b - 1) * b  # every block holds b queries but the last
        own_pairs = h * ((n_b - 1) * b * (b + 1) // 2 + last * (last + 1) // 2)
        gate_pairs = h * (b * (n_b - 1) * n_b // 2 - (b - last) * (n_b - 1))  # sum of m len_m, m >= 1
        flops = self._common(cfg, model, seq_len)
        flops.attention = 2 * hd * gate_pairs + 4 * hd * (own_pairs + b * s)
        flops.other += self._topk_other(cfg, seq_len, own_pairs + b * s, s)
        return flops

    def own_flops_bounds(self, cfg, model, seq_len, conv):
        if cfg["pattern"] == "window":
            return None
        if conv.causal_attention != "dense":
            f = self.flops(cfg, model, seq_len, conv)
            return f.matmul + f.attention, f.matmul + f.attention
        h, tile = cfg["n_heads"], SA.tile_rows(cfg["block_size"])
        per_head = SA.selections_per_head(seq_len, cfg["block_size"], cfg["topk"])
        _, n_b = self._blocks(cfg, seq_len)
        least = self._flops_for_rows(cfg, model, seq_len, h * tile * math.ceil(per_head / tile))
        most = self._flops_for_rows(cfg, model, seq_len, h * (per_head + (n_b - 1) * (tile - 1)))
        return least.matmul + least.attention, most.matmul + most.attention

    def own_notes(self, cfg, model):
        if cfg["pattern"] == "block_topk":
            tile = SA.tile_rows(cfg["block_size"])
            return [f"block_topk: a forward pads each (head, key block) group of selecting queries to "
                    f"a multiple of {tile} rows; dense-convention FLOPs assume half a tile of "
                    f"padding per head and block (the measured count lies within flops_bounds: "
                    f"0 to {tile - 1} rows per head and block)"]
        notes = ["window: dense-convention FLOPs are the pairs the banded path "
                 "computes (band slack and padding included), not T^2"]
        if _keeps_everything(cfg):
            notes.append("window with global_every and global_reads = prefix: decoding "
                         "keeps every key, since a later global position reads its whole prefix "
                         "(global_reads: window bounds it to window + global tokens)")
        return notes

    # --- memory --------------------------------------------------------------------------
    def own_state_bytes(self, cfg, model, seq_len):
        return 2 * cfg["n_kv_heads"] * cfg["head_dim"] * kept_tokens(cfg, seq_len) * model.dtype_bytes

    def own_activation_bytes(self, cfg, model, seq_len):
        """What the fast path saves for backward per sequence, item by item (checked against
        saved_tensors_hooks in tests/test_contract.py). Both: the input x and the
        attention output (o_proj's input). window: the chunks of query blocks are checkpointed,
        so only their inputs stay: the padded, blocked queries, the keys and values padded with
        w - 1 zero rows, the global keys and values, the block mask (1 byte per row and key
        column), plus the global queries' dense part (k, v, its probabilities). block_topk: the
        tiles' chunks are checkpointed too: the scaled queries and the own block's keys and
        values broadcast over the G heads of a group, its probabilities, the padded keys and
        values, the running numerators and sums, two rescale factors per chunk, and the tile
        plan's indices, with R = expected_rows.
        Not per sequence, so not counted: the RoPE tables (and their casts in low precision).
        q, k, v after RoPE are not kept otherwise (the RoPE multiplies keep only the tables)."""
        d, hd, h, hkv = model.d_model, cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
        e = model.dtype_bytes
        soft = max(4, e)
        cast = e if e < 4 else 0
        if cfg["pattern"] == "window":
            plan = _window_counts(cfg, seq_len)
            rows, n_gk, n_gq, tk = plan.rows, plan.n_global_keys, plan.n_global_queries, plan.query_key_len
            # chunks are checkpointed: their inputs (blocked queries, padded keys and values,
            # global keys and values, the block mask) are kept, their scores recomputed
            elems = seq_len * (d + h * hd) + rows * h * hd + 2 * hkv * (rows + plan.window - 1 + n_gk) * hd
            if n_gq:  # the global queries' dense part: k, v, the gathered queries, its output
                elems += 2 * hkv * seq_len * hd + 2 * h * n_gq * hd
            masks = rows * (plan.band + n_gk) + n_gq * tk + 8 * (n_gk + n_gq)
            return elems * e + h * n_gq * tk * (soft + cast) + masks
        b, n_b = self._blocks(cfg, seq_len)
        tp = n_b * b
        rows = h * tp  # query rows of the own-block part (and of the running sums)
        r = self.expected_rows(cfg, seq_len)
        tile = SA.tile_rows(cfg["block_size"])
        tiles = math.ceil(r / tile)
        chunks = math.ceil(tiles / max(1, SA.CHUNK_ELEMENTS // (tile * b))) if r else 0
        # x, o; scaled queries and the key/value blocks broadcast over the G heads of a group
        # (own block); the padded keys and values the checkpointed chunks gather from
        elems = seq_len * (d + h * hd) + 3 * rows * hd + (2 * hkv * tp * hd if r else 0)
        # own-block probabilities (and their cast when narrower); with selections: the final
        # numerators and sums, the numerators' previous value, two rescale factors per chunk
        probs = rows * b * (soft + cast)
        sums = (2 * rows * hd + rows + 2 * rows * chunks) * soft if r else 0
        small = 9 * r + 8 * tiles + b * b  # row and tile indices, row validity, causal mask
        return elems * e + probs + sums + small
