"""Any archspec spec as a Hugging Face transformers model (issue 20, part 2: the generic half).

    import archspec
    from archspec.hf.model import ArchspecForCausalLM       # registers with the Auto classes
    hf = ArchspecForCausalLM.from_spec(archspec.load("specs/hydra-tiny.yaml"), seed=0)
    hf.save_pretrained("out/")                              # config.json + model.safetensors
    hf = AutoModelForCausalLM.from_pretrained("out/")       # the same model, the same weights
    ids = hf.generate(prompt_ids, max_new_tokens=20, do_sample=False)

ArchspecConfig holds the resolved spec as the `archspec` entry of config.json: the same record
archspec.json holds for archspec.save (checkpoint_json.record: every config with its defaults
filled and overrides applied, the dtype), so `from_pretrained` rebuilds exactly the saved model,
whatever archspec's defaults are by then, and checks that record as load_saved does.
ArchspecForCausalLM wraps the module `archspec.build` emits (`.model`), so its parameter names
are the archspec build's, prefixed `model.`. Weights an archspec model shares (a tied head reads
the embedding's weight; a `share:` group's weights sit once under `shared.<key>`) are one
parameter already, so the state dict holds each once: nothing is tied by transformers
(`_tied_weights_keys` is empty) and nothing is dropped or duplicated on save. `from_pretrained`
is strict: a missing, unexpected or mismatched tensor is an error naming them, never a model
that is silently partly random.

forward(input_ids, attention_mask=None, labels=None, cache=None, use_cache=None):

    training / scoring (no cache):  archspec's forward; labels are HF's (unshifted, -100 ignored):
        the model shifts them, so logits[:, t] is scored against labels[:, t + 1]; targets under
        attention_mask == 0 are ignored too. loss = the mean cross-entropy + the components'
        auxiliary losses (MoE load balance...): the same `loss` archspec's forward returns and
        the Trainer minimises; `lm_loss` and `aux_loss` come apart in the output.
        Padding: none, or on the right (a causal model's real positions then see no padding,
        so their logits are exact; auxiliary losses still count the padded positions). Left
        padding here is an error: it would run padding through recurrent states.
    decoding (a cache, or use_cache=True):  ArchspecCache holds archspec's decoding state
        (CausalLM.init_state); the first call prefills the prompt (CausalLM.prefill, once),
        every later call is one CausalLM.step per new token. `generate` does this by itself.

Padding in generate: left padding (padding_side='left') is exact. archspec's state keeps every
row of a batch at one position and never holds padding, so rows are grouped by prompt length:
each group is prefilled with its prompts unpadded and steps in its own state (the logits of
the padded positions are 0). A batch of k distinct prompt lengths thus costs k steps per new
token, where archspec.generate's own ragged decoding costs one (it feeds long prompts' tails
through `step` while the short rows generate, which transformers' loop cannot express).
Right-padded prompts, beam search (num_beams > 1), assisted/contrastive decoding and
inputs_embeds are refused with an error that says so; sampling, greedy, num_return_sequences
and every logits processor work, since they only read the logits.

transformers is an optional extra (`pip install archspec[hf]`): archspec's core never imports
this module; importing it registers the two classes with AutoConfig / AutoModelForCausalLM
(model_type "archspec"), as `register()` does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import transformers
from torch import nn

MIN_TRANSFORMERS = (5, 24)  # the Cache interface and generate's `cache=` this module follows
if tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit()) < MIN_TRANSFORMERS:
    raise ImportError(f"archspec.hf.model needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))}, "
                      f"found {transformers.__version__}: pip install -U 'archspec[hf]'")

# checked before the names below are imported: an older transformers lacks some of them
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin  # noqa: E402
from transformers import PreTrainedConfig, PreTrainedModel  # noqa: E402
from transformers.cache_utils import Cache  # noqa: E402
from transformers.utils import ModelOutput  # noqa: E402

from ..checkpoint_json import read_record, record  # noqa: E402
from ..codegen.build import build  # noqa: E402
from ..codegen.model import Block, CausalLM  # noqa: E402
from ..components.modules import DTYPE_NAMES, ComponentModule  # noqa: E402
from ..errors import CheckpointError  # noqa: E402

MODEL_TYPE = "archspec"
CONFIG_FILE = "config.json"


class ArchspecConfig(PreTrainedConfig):
    """A transformers config holding an archspec resolved spec (`archspec`: archspec.json's
    record, checkpoint_json.record) and, read from it for tools that look for them, the usual
    sizes: vocab_size, hidden_size, num_hidden_layers (sublayers), max_position_embeddings."""

    model_type = MODEL_TYPE

    def __init__(self, archspec: dict | None = None, **kwargs):
        self.archspec = archspec
        if archspec is not None:
            model = archspec.get("model") or {}
            self.vocab_size = model.get("vocab_size")
            self.hidden_size = model.get("d_model")
            self.max_position_embeddings = model.get("max_seq_len")
            self.num_hidden_layers = len(archspec.get("sublayers") or [])
            kwargs.setdefault("dtype", (archspec.get("build") or {}).get("dtype"))
        # archspec's head reads the embedding's weight itself: transformers ties nothing
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)

    @classmethod
    def from_model(cls, model: CausalLM, **kwargs) -> "ArchspecConfig":
        """The config of a model archspec built (its `.spec`)."""
        if getattr(model, "spec", None) is None:
            raise ValueError("ArchspecConfig.from_model needs a model built by archspec.build "
                             "(it carries its resolved spec); this one has no `.spec`")
        data = record(model, {})
        del data["weights"]  # the weights live in transformers' own files
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot describe '{model.spec.name}' in config.json: its resolved "
                                  f"spec does not fit in JSON ({e})") from None
        return cls(archspec=data, **kwargs)

    def resolved(self):
        """(ResolvedSpec, dtype) of the record, checked as load_saved checks archspec.json; a
        CheckpointError (located in the record's JSON text) for a damaged or foreign one."""
        if not isinstance(self.archspec, dict):
            raise CheckpointError(f"{CONFIG_FILE}: no 'archspec' entry (the resolved spec): not a "
                                  "config written by ArchspecConfig; save the model again")
        data = {**self.archspec, "weights": {"aliases": {}}}
        saved = read_record(data, f"{CONFIG_FILE}['archspec']", json.dumps(data, indent=2))
        return saved.spec, saved.dtype


@dataclass
class ArchspecCausalLMOutput(ModelOutput):
    """loss = lm_loss + aux_loss (what the Trainer minimises); logits [B, T, V]; cache when
    decoding."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class ArchspecCache(Cache):
    """archspec's decoding state behind transformers' Cache interface.

    Empty until the first forward (the prefill): it then holds, per group of rows with the same
    number of left-padding columns, the rows and their CausalLM.init_state, made for `max_len`
    positions. `seen` counts the columns fed so far (padding included: the length of
    transformers' attention mask). Nothing in it is a per-layer key/value tensor, so it has no
    transformers layers; it cannot be cropped or reordered (a recurrent state cannot go back)."""

    def __init__(self, max_len: int):
        super().__init__(layers=[])
        self.max_len = max_len
        self.groups: list[tuple[torch.Tensor, object]] | None = None
        self.batch = -1
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_len

    @property
    def batch_size(self) -> int:
        return self.batch

    @property
    def is_croppable(self) -> bool:
        return False

    def prefill(self, model: CausalLM, input_ids: torch.Tensor, starts: list[int]) -> torch.Tensor:
        """Fill the fresh states from a left-padded prompt batch (row r's tokens start at
        starts[r]); logits [B, T, V], 0 at padded positions."""
        if self.groups is not None:
            raise ValueError("this ArchspecCache already holds a prefilled batch; start a new "
                             "one for a new prompt")
        batch, length = input_ids.shape
        if length > self.max_len:
            raise ValueError(f"a prompt of {length} tokens does not fit this cache, made for "
                             f"{self.max_len} positions")
        self.groups, logits = [], None
        for start in sorted(set(starts)):
            rows = torch.tensor([r for r in range(batch) if starts[r] == start], device=input_ids.device)
            state = model.init_state(len(rows), self.max_len - start)
            group_logits = model.prefill(input_ids[rows, start:], state)
            if logits is None:
                logits = group_logits.new_zeros(batch, length, group_logits.shape[-1])
            logits[rows, start:] = group_logits
            self.groups.append((rows, state))
        self.batch, self.seen = batch, length
        return logits

    def step(self, model: CausalLM, input_ids: torch.Tensor) -> torch.Tensor:
        """One CausalLM.step per column of input_ids [B, k] (k new tokens of every row);
        logits [B, k, V]."""
        if input_ids.shape[0] != self.batch:
            raise ValueError(f"this ArchspecCache holds {self.batch} sequences, got a batch of "
                             f"{input_ids.shape[0]}")
        if self.seen + input_ids.shape[1] > self.max_len:
            raise ValueError(f"this ArchspecCache was made for {self.max_len} positions; "
                             f"{self.seen + input_ids.shape[1]} do not fit")
        columns = []
        for t in range(input_ids.shape[1]):
            logits = None
            for rows, state in self.groups:
                group_logits = model.step(input_ids[rows, t], state)
                if logits is None:
                    logits = group_logits.new_empty(self.batch, group_logits.shape[-1])
                logits[rows] = group_logits
            columns.append(logits)
            self.seen += 1
        return torch.stack(columns, dim=1)

    def _refuse(self, what: str):
        raise ValueError(f"{what} is not supported by ArchspecForCausalLM: archspec's decoding "
                         "state (recurrent states, KV caches) can be neither reordered nor rolled "
                         "back; use greedy or sampled decoding with num_beams=1")

    def reorder_cache(self, beam_idx):
        self._refuse("beam search (reordering the cache)")

    def batch_repeat_interleave(self, repeats: int):
        self._refuse("repeating a filled cache's rows")

    def batch_select_indices(self, indices):
        self._refuse("selecting a filled cache's rows")

    def crop(self, tokens_to_remove: int) -> None:
        self._refuse("cropping the cache (assisted or speculative decoding)")

    def reset(self):
        self.groups, self.batch, self.seen = None, -1, 0


class ArchspecForCausalLM(PreTrainedModel, GenerationMixin):
    """An archspec model (`.model`, the module archspec.build emits) as a transformers causal
    LM: save_pretrained / from_pretrained, generate, the Trainer (module docstring)."""

    config_class = ArchspecConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # refuses assisted generation, which needs a cache it can roll back
    # The Trainer passes num_items_in_batch only to models that sum their loss themselves;
    # archspec's loss is the mean cross-entropy (plus the aux losses), as its own trainer's.
    accepts_loss_kwargs = False
    _tied_weights_keys = None  # archspec shares weights as one parameter (module docstring)

    def __init__(self, config: ArchspecConfig, model: CausalLM | None = None):
        super().__init__(config)
        if model is None:
            spec, dtype = config.resolved()
            # from_pretrained constructs under `torch.device("meta")`, with the dtype it was
            # asked for as torch's default (the saved one unless `dtype=` says otherwise), and
            # loads the weights afterwards; a direct construction builds (and initialises) real
            # weights in the spec's dtype
            device = torch.get_default_device()
            meta = device.type == "meta"
            if meta and torch.get_default_dtype() in DTYPE_NAMES:
                dtype = DTYPE_NAMES[torch.get_default_dtype()]
            model = build(spec, device="cpu" if meta else device, dtype=dtype, meta=meta)
        if next(model.parameters()).device.type != "meta":
            # archspec initialised these weights (or they are a trained model's): post_init's
            # transformers initialisation must not redo them
            for m in model.modules():
                m._is_hf_initialized = True
        self.model = model
        self.post_init()

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_archspec(cls, model: CausalLM) -> "ArchspecForCausalLM":
        """Wrap a model archspec built (archspec.build, archspec.load_saved): the same module
        and weights, not a copy."""
        return cls(ArchspecConfig.from_model(model), model=model)

    @classmethod
    def from_spec(cls, spec, device: str | torch.device = "cpu", dtype: str | None = None,
                  seed: int | None = None, **build_kwargs) -> "ArchspecForCausalLM":
        """archspec.build(spec, ...) wrapped (a path or a ResolvedSpec)."""
        if not hasattr(spec, "sublayers"):
            from ..spec import load
            spec = load(spec)
        return cls.from_archspec(build(spec, device=device, dtype=dtype, seed=seed, **build_kwargs))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' from_pretrained, strict: every tensor of the build loaded, none left
        over, each of its shape; otherwise a ValueError naming them."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {what: sorted(map(str, info.get(key) or ())) for what, key in
                    (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                     ("of another shape", "mismatched_keys"))}
        problems = {what: names for what, names in problems.items() if names}
        if problems:
            listed = "; ".join(f"{what}: {', '.join(names[:5])}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                               for what, names in problems.items())
            raise ValueError(f"{args[0] if args else 'the checkpoint'}: its weights do not match the "
                             f"model its config.json describes ({listed}); save the model again")
        return (model, info) if want_info else model

    def _init_weights(self, module: nn.Module) -> None:
        """archspec's own initialisation, for what transformers did not load (from_pretrained
        refuses missing weights; this recomputes the RoPE tables, which are not saved)."""
        if isinstance(module, ComponentModule):
            module.reset_parameters()
        elif isinstance(module, Block):
            module.reset_gates()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embedding

    def get_output_embeddings(self):
        return None  # archspec's head (tied or not) is its own module: nothing for transformers to tie

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: Cache | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> ArchspecCausalLMOutput:
        """The module docstring's two modes; kwargs are transformers' optional ones, refused
        when they ask for something archspec does not return (hidden states, attentions...)."""
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        _refuse_extras(inputs_embeds, kwargs)
        if input_ids is None:
            raise ValueError("ArchspecForCausalLM.forward needs input_ids [batch, length]")
        if cache is not None or use_cache:
            if labels is not None:
                raise ValueError("labels with a cache: compute a loss without one (use_cache=False)")
            cache = cache if cache is not None else ArchspecCache(self.model.spec.model.max_seq_len)
            if not isinstance(cache, ArchspecCache):
                raise ValueError(f"ArchspecForCausalLM decodes with an ArchspecCache, got "
                                 f"{type(cache).__name__}")
            logits = self._decode(input_ids, attention_mask, cache)
            return ArchspecCausalLMOutput(logits=logits, cache=cache)
        _check_right_padded(attention_mask, input_ids.shape)
        targets = None
        if labels is not None:
            targets = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
            if attention_mask is not None:
                targets = targets.masked_fill(nn.functional.pad(attention_mask[:, 1:], (0, 1)) == 0, -100)
        out = self.model(input_ids, labels=targets)
        return ArchspecCausalLMOutput(loss=out.loss, logits=out.logits, lm_loss=out.lm_loss,
                                      aux_loss=out.aux_loss)

    def _decode(self, input_ids: torch.Tensor, attention_mask, cache: ArchspecCache) -> torch.Tensor:
        if cache.groups is None:
            return cache.prefill(self.model, input_ids, _left_padding(attention_mask, input_ids.shape))
        if attention_mask is not None and not bool((attention_mask[:, -input_ids.shape[1]:] != 0).all()):
            raise ValueError("attention_mask masks a token after the prompt; ArchspecForCausalLM "
                             "supports padding on the left of the prompt only")
        return cache.step(self.model, input_ids)

    # --- generate -------------------------------------------------------------------------------
    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, generation_mode,
                                      batch_size: int, max_cache_length: int) -> None:
        """An ArchspecCache for every generate (transformers would make a DynamicCache), made
        for the prompt and the new tokens (max_length), refused beyond max_seq_len."""
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return
        if generation_config.num_beams > 1:
            raise ValueError("beam search (num_beams > 1) is not supported by ArchspecForCausalLM: "
                             "archspec's decoding state cannot be reordered by beam; use num_beams=1")
        max_len = self.model.spec.model.max_seq_len
        if max_cache_length + 1 > max_len:
            raise ValueError(f"generate asks for {max_cache_length + 1} positions (prompt and new "
                             f"tokens), beyond the model's max_seq_len {max_len}")
        model_kwargs["cache"] = ArchspecCache(max_cache_length + 1)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None,
                                      attention_mask=None, inputs_embeds=None, **kwargs):
        """The prompt on the first call, then the last token: what ArchspecCache has not seen."""
        if inputs_embeds is not None:
            raise ValueError("ArchspecForCausalLM generates from input_ids, not inputs_embeds")
        if cache is not None and cache.groups is not None:
            input_ids = input_ids[:, cache.seen:]
        inputs = {"input_ids": input_ids, "cache": cache, "attention_mask": attention_mask}
        for key in ("use_cache", "return_dict"):
            if key in kwargs:
                inputs[key] = kwargs[key]
        return inputs


_IGNORED_FALSE = ("output_attentions", "output_hidden_states", "output_router_logits", "logits_to_keep")


def _refuse_extras(inputs_embeds, kwargs: dict) -> None:
    if inputs_embeds is not None:
        raise ValueError("ArchspecForCausalLM takes input_ids, not inputs_embeds")
    asked = sorted(k for k, v in kwargs.items()
                   if v is not None and not (k in _IGNORED_FALSE and v in (False, 0)))
    if asked:
        raise ValueError(f"ArchspecForCausalLM.forward does not support {', '.join(asked)} "
                         "(it returns the loss, the logits and the cache)")


def _check_mask(attention_mask: torch.Tensor, shape) -> None:
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {list(attention_mask.shape)}, input_ids "
                         f"{list(shape)}: they must match")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")


def _check_right_padded(attention_mask, shape) -> None:
    """No padding, or padding after each row's tokens (a forward without a cache)."""
    if attention_mask is None:
        return
    _check_mask(attention_mask, shape)
    rising = (attention_mask[:, 1:] > attention_mask[:, :-1]).any(dim=1)
    if bool(rising.any()) or not bool(attention_mask[:, 0].all()):
        row = int((rising | (attention_mask[:, 0] == 0)).nonzero()[0])
        raise ValueError(f"attention_mask row {row} has padding before a token: a forward without "
                         "a cache takes no padding or right padding (padding_side='right'); left "
                         "padding would run through the recurrent states (generate supports it)")


def _left_padding(attention_mask, shape) -> list[int]:
    """Each row's first token column: all 0 without a mask; a mask must be left padding."""
    if attention_mask is None:
        return [0] * shape[0]
    _check_mask(attention_mask, shape)
    falling = (attention_mask[:, 1:] < attention_mask[:, :-1]).any(dim=1)
    empty = attention_mask[:, -1] == 0
    if bool((falling | empty).any()):
        row = int((falling | empty).nonzero()[0])
        raise ValueError(f"attention_mask row {row} has padding after a token: ArchspecForCausalLM "
                         "decodes left-padded prompts only (padding_side='left'), each with at "
                         "least one token")
    return (shape[1] - attention_mask.sum(dim=1)).tolist()


def register() -> None:
    """Register ArchspecConfig / ArchspecForCausalLM (model_type 'archspec') with AutoConfig
    and AutoModelForCausalLM; importing this module does it too."""
    AutoConfig.register(MODEL_TYPE, ArchspecConfig, exist_ok=True)
    AutoModelForCausalLM.register(ArchspecConfig, ArchspecForCausalLM, exist_ok=True)


register()
