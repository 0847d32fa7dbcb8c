"""The largest value each hyperparameter may take, and why: the bounds that keep validation,
accounting, reporting and building tractable for any spec (issue 17). One `Limit` per kind of
quantity; a schema fragment takes `**L.schema()`, which adds `maximum` and the reason
(`x-maximum-why`, an annotation JSON Schema ignores) that the validator shows as the hint when
the maximum is crossed. docs/spec.md lists them all (a test checks the table against the
schemas).

Each limit is well beyond any published model (the reasons give the largest in use), so a spec
that crosses one holds a typo, not a model: d_model 10**9 or n_memories 10**8 would have the
report hang or print 10**34 parameters. On top of them, PARAMS_CEILING bounds the whole model
(checked in validation, before the report's per-node work), and layout.MAX_SUBLAYERS its depth.
Numbers of every kind are also finite and at most 2**62 in size (expr.MAX_ABS_VALUE).
"""
from __future__ import annotations

from dataclasses import dataclass

WHY_KEY = "x-maximum-why"  # the schema annotation holding a maximum's reason


@dataclass(frozen=True)
class Limit:
    """A maximum and the reason for it (one sentence, shown as the hint of the error)."""

    value: int | float
    why: str

    def schema(self) -> dict:
        return {"maximum": self.value, WHY_KEY: self.why}


# --- sizes of the model ------------------------------------------------------------------------
D_MODEL = Limit(131_072, "the widest published models are about 20,000 wide (PaLM: 18,432); one "
                         "d_model x d_model matrix at this limit is already 17G parameters")
VOCAB = Limit(16_777_216, "the largest vocabularies in use hold about 256k tokens; 2**24 is 64 times "
                          "that")
SEQ_LEN = Limit(16_777_216, "the longest published contexts are about 10M tokens (2**24 = 16.8M); "
                            "windows, positions and chunks are bounded by it too")
WIDTH = Limit(1_048_576, "hidden widths in use are below 100,000 (PaLM's MLP: 73,728); 2**20 is 8 times "
                         "d_model's limit")
HEADS = Limit(4_096, "models in use have at most a few hundred heads or groups (Falcon-180B: 232)")
HEAD_DIM = Limit(4_096, "per-head widths in use are 64 to 256 (512 for some memories); 16 times the "
                        "largest")
STATE = Limit(4_096, "SSM states in use are 16 (Mamba) to 256 wide; the state is this times the "
                     "inner width per sequence")
CONV = Limit(256, "short convolutions in use are 2 to 4 wide")
EXPAND = Limit(16, "expansion factors in use are 1 to 2 (4 at most); the inner width is this times "
                   "d_model")
CHUNK = Limit(4_096, "chunked forms hold a chunk x chunk block per head (64 to 256 in use); 4,096 is "
                     "16M elements per head")

# --- routing -----------------------------------------------------------------------------------
EXPERTS = Limit(4_096, "MoE layers in use have a few hundred routed experts at most (DeepSeek-V3: 256, "
                       "Kimi K2: 384); the router scores every expert for every token, and accounting "
                       "and the module keep per-expert figures")
MEMORIES = Limit(256, "MoM uses 2 to 8 memories; each is its own projections and state (four "
                      "parameter tensors and a state per memory in the module, the state dict and "
                      "the report's accounting)")
SHARED_EXPERTS = Limit(64, "shared experts in use number 1 to 4")
CAPACITY = Limit(64.0, "capacity factors in use are 1 to 2; null (the default) is dropless")
LOSS_SCALE = Limit(100.0, "auxiliary loss coefficients in use are 1e-4 to 1e-2")
KEYS = Limit(16_384, "product-key memories in use have 512 to a few thousand sub-keys per half; "
                     "16,384 gives 268M value slots")
ADAPTERS = Limit(64, "mixtures of domain adapters in use hold 1 to 8 adapters (a few domains and a task "
                     "adapter); each is its own mlp, accounted for and built on its own")
KNN = Limit(1_024, "each head scores knn x knn candidate slots per token (32 in use)")

# --- rates and scales --------------------------------------------------------------------------
INIT_STD = Limit(1.0, "initialisation stds in use are 0.002 to 0.05; above 1 a projection's outputs "
                      "outgrow its inputs by sqrt(d_model) and training diverges")
EPS = Limit(1.0, "an epsilon guards a division (1e-6 to 1e-5 in use); above 1 it swamps the variance "
                 "it regularises")
ROPE_THETA = Limit(1e12, "RoPE bases in use are 1e4 to 1e7")
SOFTCAP = Limit(1e4, "soft-caps in use are 30 (Gemma-2's logits) to 50 (its attention scores); "
                     "above 1e4 tanh never bends a score in float32 range")
SOFTMAX_SCALE = Limit(100.0, "attention scales in use are 1 / sqrt(head_dim), 0.04 to 0.25 (Zamba2: "
                      "1 / sqrt(head_dim / 2)); above 100 the softmax is a hard max from the start")
DT = Limit(10.0, "Mamba's step sizes start in 1e-3 to 0.1; a step of 10 already forgets the state "
                 "within one token")
INIT_SCALE = Limit(100.0, "scales of initial weights in use are about 1")
DECAY = Limit(1e4, "Mamba2 starts -A in [1, 16] and leaves dt unclamped; beyond 1e4 a state forgets "
                   "everything at any step")

# --- the layout ---------------------------------------------------------------------------------
SUBLAYERS = Limit(16_384, "the deepest published networks have about 2,500 sublayers (DeepNet's 1,000 "
                          "layers); the report lists every sublayer and every component in it, and at "
                          "this limit takes seconds and tens of megabytes (100,000 sublayers made 160 MB "
                          "of JSON)")

COMPONENTS = Limit(4_096, "specs define a handful of components (a model with a distinct one per layer "
                          "has a few hundred); each distinct config is validated and accounted for on "
                          "its own")
OVERRIDES = Limit(4_096, "overrides change a few sublayers (`at` takes a list of them); each makes "
                         "distinct configs to validate and account for")
FREEZE = Limit(4_096, "a freeze list names model parts and components (at most 4,096 of those) and "
                      "their children: a few entries in use")

# --- the whole model ---------------------------------------------------------------------------
PARAMS_CEILING = 10**15  # 500 times the largest published models (about 2T parameters)
PARAMS_WHY = "the largest published models have about 2T parameters; the ceiling is 500 times that"
