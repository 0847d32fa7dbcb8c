"""The training loop behind `archspec train` and archspec.train (archspec/train/__init__.py)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from . import checkpoints as ck
from .config import ORDER_SETTINGS, TrainConfig, TrainResult, check_config
from .data import Order, Windows, batch_rows, read_stream
from .errors import TrainError
from .schedule import lr_factor
from .throughput import human_flops, peak_flops

def init_distributed(cfg: TrainConfig) -> bool:
    """Under torchrun (WORLD_SIZE > 1 in the environment) join the process group, unless the
    caller already did: nccl on CUDA, gloo on CPUs. Returns whether this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def pick_device(cfg: TrainConfig) -> torch.device:
    """The device this process trains on (under torchrun with CUDA: cuda:LOCAL_RANK), and a
    TrainError when it is absent or lacks --dtype."""
    name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device: unknown device '{name}' (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif device.type != "cpu":
        raise TrainError(f"--device {name}: training runs on cpu or cuda")
    check_dtype(device, cfg.dtype)
    return device


def check_dtype(device: torch.device, dtype: str) -> None:
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise TrainError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                         "use --dtype fp32")


def load_model(source: str, device: torch.device, seed: int):
    """(model in fp32 on `device`, resolved spec): a fresh build of a spec file, or the weights of
    a saved model directory (a warm start: `archspec build --save`, or an earlier run's OUT)."""
    from ..checkpoint import load_saved
    from ..codegen.build import build
    from ..spec import load
    if Path(source).is_dir():
        model, spec = load_saved(source, device=device)
        return model.float(), spec
    spec = load(source)
    try:
        return build(spec, device=device, dtype="float32", seed=seed), spec
    except ValueError as e:
        raise TrainError(f"{source}: {e}") from None


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for matrices (>= 2-D: projections, embeddings, experts), none for
    1-D parameters (norm scales, biases, gates); frozen parameters (requires_grad False) are
    left out, so no optimizer step touches them."""
    decay, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _all_mean(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The mean over ranks of a small CPU tensor of metrics (sent via `device`: nccl needs CUDA)."""
    world = ck.rank_world()[1]
    if world > 1:
        values = values.to(device)
        dist.all_reduce(values)  # SUM: gloo has no AVG
        values = values.cpu() / world
    return values


class Run:
    """One training run: everything checked and loaded by __init__, then `loop`."""

    def __init__(self, source: str, cfg: TrainConfig, on_step: Callable[[dict], None] | None = None):
        check_config(cfg, ck.rank_world()[1])
        self.cfg, self.on_step = cfg, on_step
        self.rank, self.world = ck.rank_world()
        self.device = pick_device(cfg)
        self.model, self.spec = load_model(source, self.device, cfg.seed)
        self.plain = self.model  # unsharded, uncompiled: what the final model is saved from
        cfg.seq_len = cfg.seq_len or min(256, self.spec.model.max_seq_len)
        if cfg.seq_len > self.spec.model.max_seq_len:
            raise TrainError(f"--seq-len {cfg.seq_len} exceeds the model's max_seq_len "
                             f"{self.spec.model.max_seq_len}")
        tokenizer = None
        if cfg.tokenizer is not None:
            from ..tokenizer import TokenizerError, load_tokenizer
            try:
                tokenizer = load_tokenizer(cfg.tokenizer)
            except TokenizerError as e:
                raise TrainError(str(e)) from None
        streams = [read_stream(p, self.spec.model.vocab_size, tokenizer) for p in cfg.data]
        self.windows = Windows(streams, cfg.seq_len, cfg.eval_fraction)
        self.order = Order(len(self.windows.train), cfg.seed)
        self.spec_json = ck.spec_text(self.plain)
        self.out = ck.on_rank0(ck.prepare_out, cfg.out, cfg.resume) or Path(cfg.out)
        self.resume_from = None
        if cfg.resume:
            self.resume_from = ck.complete_checkpoints(self.out)[-1][1]
            ck.check_spec(self.resume_from, self.spec)
        if self.world > 1:
            from ..parallel import shard
            self.model = shard(self.model, mixed_precision=cfg.dtype == "bf16",
                               activation_checkpointing=cfg.activation_checkpointing,
                               compile_sublayers=cfg.compile)
        elif cfg.activation_checkpointing:
            from ..parallel import checkpoint_sublayers
            checkpoint_sublayers(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(0.9, 0.95), eps=1e-8, fused=False)
        self.step, self.position, self.tokens = 0, 0, 0
        torch.manual_seed(cfg.seed)  # a resumed run's RNG state comes from its checkpoint
        if self.resume_from is not None:
            state = ck.load_checkpoint(self.resume_from, self.model, self.optimizer)
            self.step, self.position, self.tokens = state["step"], state["position"], state["tokens"]
            if self.step >= cfg.steps:
                raise TrainError(f"--steps {cfg.steps}: the run already reached step {self.step}; give "
                                 "a larger --steps to train on")
            self._note_changes(state.get("config", {}))
        # one process compiles the whole model; FSDP compiles each sublayer (parallel.shard)
        self.forward = torch.compile(self.model) if cfg.compile and self.world == 1 else self.model
        from ..accounting import account, training_flops_per_token
        self.flops_per_token = training_flops_per_token(account(self.spec, cfg.seq_len))
        self.peak = peak_flops(self.device, cfg.dtype)
        # one process: bf16 autocast over fp32 weights; under FSDP its mixed-precision policy does it
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if cfg.dtype == "bf16" and self.world == 1 else nullcontext())

    def _note_changes(self, saved: dict) -> None:
        now = self._config_record()
        changed = [k for k in ORDER_SETTINGS if k in saved and saved[k] != now[k]]
        if changed and self.rank == 0:
            print("archspec train: note: resuming with other " + ", ".join(
                f"--{k.replace('_', '-')} ({saved[k]} -> {now[k]})" for k in changed)
                + ": the batches differ from the interrupted run's", file=sys.stderr)

    def _config_record(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in ("resume", "progress")}

    # --- one step ---------------------------------------------------------------------------------
    def _batch(self) -> torch.Tensor:
        """This rank's rows of the next global batch, [batch_size / world, seq_len + 1]."""
        rows = batch_rows(self.position, self.cfg.batch_size, self.rank, self.world)
        return self.windows.tokens([self.windows.train[self.order.window(p)] for p in rows])

    def train_step(self) -> dict:
        cfg, model = self.cfg, self.model
        factor = lr_factor(self.step, cfg.steps, cfg.warmup, cfg.schedule, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        batch = self._batch().to(self.device)
        micro = batch.shape[0] // cfg.grad_accum
        sums = torch.zeros(2, dtype=torch.float64)  # loss, lm_loss
        aux: dict[str, float] = {}
        model.train()
        for k in range(cfg.grad_accum):
            part = batch[k * micro:(k + 1) * micro]
            with self.autocast:
                out = self.forward(part[:, :-1], labels=part[:, 1:])
            (out.loss / cfg.grad_accum).backward()
            sums += torch.tensor([float(out.loss.detach()), float(out.lm_loss.detach())], dtype=torch.float64)
            for name, value in out.aux_losses.items():
                aux[name] = aux.get(name, 0.0) + float(value.detach()) / cfg.grad_accum
        params = [p for p in model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        if not math.isfinite(float(norm)):  # stop before the optimizer step spoils the weights
            self._diverged(f"step {self.step + 1}: the gradient norm is {float(norm)}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(aux)
        values = _all_mean(torch.cat([sums / cfg.grad_accum,
                                      torch.tensor([aux[n] for n in names], dtype=torch.float64)]), self.device)
        self.step += 1
        self.position += cfg.batch_size
        self.tokens += cfg.batch_size * cfg.seq_len
        return {"step": self.step, "loss": float(values[0]), "lm_loss": float(values[1]),
                "aux": {n: float(v) for n, v in zip(names, values[2:])}, "lr": cfg.lr * factor,
                "grad_norm": float(norm), "tokens": self.tokens}

    def _diverged(self, what: str) -> None:
        last = ck.complete_checkpoints(self.out)
        raise TrainError(f"{what}: training diverged; " + (
            f"resume from step {last[-1][0]} (--resume) with a lower --lr" if last
            else "start again with a lower --lr"))

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean LM loss over the first eval_sequences held-out windows (each rank a share).
        Every rank runs the same number of forwards (FSDP's gathers are collective): a rank
        whose share is shorter repeats a window with weight 0."""
        held = self.windows.held_out[:self.cfg.eval_sequences]
        if not held:
            return None
        self.model.eval()
        mine = held[self.rank::self.world]
        rows = -(-len(held) // self.world)  # the longest share
        weights = [1.0] * len(mine) + [0.0] * (rows - len(mine))
        mine = mine + [held[0]] * (rows - len(mine))
        total = torch.zeros(2, dtype=torch.float64)
        micro = max(1, self.cfg.batch_size // (self.world * self.cfg.grad_accum))
        for i in range(0, rows, micro):
            part = self.windows.tokens(mine[i:i + micro]).to(self.device)
            with self.autocast:
                logits = self.forward(part[:, :-1]).logits.float()
            per_row = torch.nn.functional.cross_entropy(logits.transpose(1, 2), part[:, 1:],
                                                        reduction="none").mean(1).double().cpu()
            w = torch.tensor(weights[i:i + micro], dtype=torch.float64)
            total += torch.stack([(per_row * w).sum(), w.sum()])
        if self.world > 1:
            total = total.to(self.device)
            dist.all_reduce(total)
            total = total.cpu()
        self.model.train()
        return float(total[0] / total[1])

    # --- checkpoints and the saved model ----------------------------------------------------------
    def checkpoint(self) -> None:
        state = {"step": self.step, "position": self.position, "tokens": self.tokens,
                 "world_size": self.world, "config": self._config_record()}
        ck.save_checkpoint(self.out, self.step, self.model, self.optimizer, state, self.spec_json,
                           self.cfg.keep_checkpoints)
        self.export()

    def export(self) -> None:
        """OUT's saved model, written by rank 0 (the full weights gathered from every rank)."""
        if self.world == 1:
            ck.export_model(self.out, self.plain)
            return
        state = ck.full_state_dict(self.model)
        if self.rank == 0:
            if not hasattr(self, "_export_model"):
                from ..codegen.build import build
                self._export_model = build(self.spec, device="cpu", dtype="float32")
            ck.export_model(self.out, self._export_model, state)
        ck.barrier()

    # --- the loop ---------------------------------------------------------------------------------
    def loop(self) -> TrainResult:
        cfg = self.cfg
        result = TrainResult(self.out, self.step)
        if self.rank == 0:
            ck.remove_partials(self.out)
            _keep_metrics_until(self.out / ck.METRICS_FILE, self.step)
        bar = _progress_bar(cfg, self.step, self.rank)
        metrics = open(self.out / ck.METRICS_FILE, "a") if self.rank == 0 else None
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                m = self.train_step()
                seconds = time.perf_counter() - start
                m["tokens_per_s"] = cfg.batch_size * cfg.seq_len / seconds
                m["flops_per_s"] = m["tokens_per_s"] * self.flops_per_token
                if self.peak is not None:
                    m["mfu"] = m["flops_per_s"] / (self.peak * self.world)
                m["peak_memory_bytes"] = _peak_memory(self.device)  # this rank's (rank 0 logs)
                result.losses.append(m["loss"])
                self._log(metrics, m)
                bar.set_postfix_str(_postfix(m), refresh=False)
                bar.update(1)
                evaluate_now = (cfg.eval_every and self.step % cfg.eval_every == 0)
                save_now = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                if self.step == cfg.steps or evaluate_now or (save_now and not cfg.eval_every):
                    result.eval_loss = self._evaluate(metrics)
                if save_now or self.step == cfg.steps:
                    self.checkpoint()
                if self.on_step is not None:
                    self.on_step(m)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        result.step = self.step
        return result

    def _evaluate(self, metrics) -> float | None:
        loss = self.evaluate()
        if loss is not None:
            self._log(metrics, {"step": self.step, "eval_loss": loss})
        return loss

    def _log(self, metrics, m: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(m) + "\n")
            metrics.flush()


def _peak_memory(device: torch.device) -> int | None:
    """CUDA: the allocator's peak; CPU: the process's peak resident set (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    from ..smoke import _cpu_peak
    return _cpu_peak()


def _postfix(m: dict) -> str:
    speed = f"MFU {100 * m['mfu']:.1f}%" if "mfu" in m else human_flops(m["flops_per_s"])
    aux = "".join(f" {k} {v:.3g}" for k, v in m["aux"].items())
    return f"loss {m['loss']:.4f}{aux} | {m['tokens_per_s']:,.0f} tok/s | {speed}"


def _progress_bar(cfg: TrainConfig, start: int, rank: int):
    from tqdm import tqdm
    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                disable=not cfg.progress or rank != 0, file=sys.stderr)


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the metrics of steps after `step` (a resumed run logs them again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
