"""The `archspec` command: a thin layer over the Python API.

Exit codes: 0 success; 1 an invalid spec (every error printed) or a refused build;
2 a usage error, a file that cannot be read or a --save directory refused; 3 an internal error
(a bug: please report it).
`archspec diff` follows diff(1): 0 no difference, 1 different, 2 trouble (an invalid spec
included), 3 internal error, 4 a budget (--max-params-delta, --max-flops-delta) crossed.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import BuildRefused, CheckpointError, FileProblem, KernelFallbackWarning, SpecError

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    pass


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archspec", description="Declarative model-architecture compiler "
                                "for PyTorch: validate, account for, graph and build model specs.")
    p.add_argument("--version", action="version", version=f"archspec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check specs; print every error with file:line:column")
    v.add_argument("specs", nargs="+", metavar="SPEC")
    v.add_argument("--format", choices=["text", "json"], default="text")

    r = sub.add_parser("report", help="parameters, FLOPs, state and memory per component and in total")
    r.add_argument("spec", metavar="SPEC")
    r.add_argument("--seq-len", type=positive_int, help="sequence length (default: max_seq_len)")
    r.add_argument("--format", choices=["table", "json", "markdown"], default="table")
    r.add_argument("--attention-flops", choices=["attended", "dense"], default="attended",
                   help="count causal attention's attended pairs (default) or all T^2 pairs")
    r.add_argument("--device", default="cpu", help="device whose backends the report shows")
    r.add_argument("--backend", help="the backend `build --backend` would force, to show its choices")

    b = sub.add_parser("build", help="instantiate the model and run a smoke forward+backward")
    b.add_argument("spec", metavar="SPEC")
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    b.add_argument("--meta", action="store_true", help="structural build on the meta device (no memory), "
                   "with the backends chosen for --device")
    b.add_argument("--save", metavar="DIR", help="save the model to DIR: weights (model.safetensors) "
                   "and the resolved spec (archspec.json); archspec.load_saved(DIR) loads it")
    b.add_argument("--overwrite", action="store_true",
                   help="with --save: replace the saved model already in DIR")
    b.add_argument("--force", action="store_true", help="build even if the weights may not fit in memory")
    b.add_argument("--backend",
                   help="force one kernel backend for every component and the norm (e.g. reference)")
    b.add_argument("--batch", type=positive_int, default=2, help="smoke batch size (default 2)")
    b.add_argument("--seq-len", type=positive_int, help="smoke sequence length (default min(64, max_seq_len))")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-smoke", action="store_true", help="skip the smoke forward+backward")

    g = sub.add_parser("graph", help="the component graph as JSON or Graphviz DOT")
    g.add_argument("spec", metavar="SPEC")
    g.add_argument("--format", choices=["json", "dot"], default="json")
    g.add_argument("--seq-len", type=positive_int)
    g.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    c = sub.add_parser("components", help="the component types, or one type's hyperparameters")
    c.add_argument("type", nargs="?", metavar="TYPE")
    c.add_argument("--format", choices=["text", "json"], default="text")

    s = sub.add_parser("schema", help="print the spec JSON Schema (for editors), or --write it")
    s.add_argument("--write", action="store_true", help="regenerate archspec/schema/archspec.schema.json")

    df = sub.add_parser("diff", help="what changed between two specs and what it costs; exit 0 same, "
                        "1 different, 2 trouble, 4 a budget crossed",
                        description="Structural diff of two resolved specs: changed model fields, "
                        "components and sublayers (matched by identity, so an insertion is one "
                        "entry), parameter/FLOP/state deltas, and which checkpoint tensors a warm "
                        "start can reuse. Exit 0 no difference, 1 different, 2 trouble (an invalid "
                        "spec, an unreadable file, a bad option), 4 a --max-*-delta budget crossed. "
                        "See docs/diff.md.")
    df.add_argument("a", metavar="A", help="the spec before")
    df.add_argument("b", metavar="B", help="the spec after")
    df.add_argument("--seq-len", type=_seq_lens, metavar="N[,N...]",
                    help="sequence lengths for FLOPs and state (default: the smaller max_seq_len)")
    df.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    df.add_argument("--ignore", action="append", default=[], metavar="PATH",
                    help="leave a field out: model.FIELD, model.norm.KEY, TYPE.KEY or *.KEY "
                         "(repeat or comma-separate)")
    df.add_argument("--max-params-delta", type=_budget, metavar="LIMIT",
                    help="exit 4 when total parameters change by more than LIMIT ('5%%' of A, or "
                         "absolute: '10M', '2.5e9')")
    df.add_argument("--max-flops-delta", type=_budget, metavar="LIMIT",
                    help="exit 4 when forward FLOPs per token change by more than LIMIT at any "
                         "--seq-len")
    df.add_argument("--attention-flops", choices=["attended", "dense"], default="attended",
                    help="count causal attention's attended pairs (default) or all T^2 pairs")
    k = sub.add_parser("kernels", help="every Triton kernel launch configuration the specs use; with "
                       "--compile, the ahead-of-time gate (exit 1 when a configuration fails)",
                       description="List every Triton kernel launch configuration (block sizes, "
                       "warps, stages, dtype) that the specs' components use, and the extremes each "
                       "kernel family accepts. With --compile, compile each for each GPU target (no "
                       "GPU needed) and check it: it compiles, shared memory within the target's "
                       "per-block limit, no register spills, tensor cores for 16-bit dots. Exit 0 all "
                       "pass, 1 a configuration fails, 2 a usage error or a bad spec. See docs/kernels.md.")
    k.add_argument("specs", nargs="*", metavar="SPEC", help="spec files (default: every shipped spec)")
    k.add_argument("--compile", metavar="TARGETS", dest="targets",
                   help="compile for these targets, e.g. sm_80,sm_90")
    k.add_argument("--dtypes", default=None,
                   help="input dtypes, e.g. float32,bfloat16 (default: each spec's own dtype)")
    k.add_argument("--format", choices=["table", "json"], default="table")
    k.add_argument("--jobs", type=positive_int, help="parallel compiles (default: the CPU count)")
    k.add_argument("--timeout", type=positive_int, default=300, metavar="S",
                   help="seconds one compile may take before it counts as failed (default 300)")
    k.add_argument("--only", metavar="NAME[,NAME...]",
                   help="only kernels whose name starts with one of these (e.g. norm,dispatch)")
    k.add_argument("--no-extremes", action="store_true",
                   help="only the specs' configurations, not the families' extremes")
    gen = sub.add_parser("generate", help="continue a prompt with a saved model (byte-level tokens), "
                         "streaming the text", description="Load a model saved by `archspec build --save` "
                         "(or archspec.save) and continue --prompt, printing the new text as it comes. "
                         "Tokens are the prompt's UTF-8 bytes (ids 0-255; the model's vocabulary must "
                         "hold them); a generated id above 255 prints as U+FFFD. Greedy unless "
                         "--temperature > 0. Exit 2 for bad input.")
    gen.add_argument("directory", metavar="DIR", help="a saved model directory")
    gen.add_argument("--prompt", required=True, help="the text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                     help="tokens to generate (default 64; prompt + N must fit max_seq_len)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set of probability "
                     ">= P (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--eos", type=int, default=None, metavar="ID", help="stop at this token id")
    gen.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    gen.add_argument("--tokenizer", default=None, metavar="TOKDIR",
                     help="a directory holding a Hugging Face tokenizer.json (needs the `tokenizers` "
                     "package) to use instead of byte-level tokens")
    _train_parser(sub)
    _hf_parsers(sub)
    return p


def _train_parser(sub) -> None:
    """`archspec train`: the flags are archspec.train.TrainConfig's fields (defaults from there)."""
    from .train.config import DTYPES, TrainConfig
    from .train.schedule import SCHEDULES
    d = TrainConfig(data=[])
    t = sub.add_parser(
        "train", help="train a spec (or a saved model) on text or token files, with checkpoints",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train SPEC (a fresh build) or DIR (a saved model: its weights) on --data files. "
        "Shows a progress bar (loss, tokens/s, MFU on known GPUs or FLOP/s), writes OUT/metrics.jsonl, "
        "checkpoints (model, optimizer, data position, RNG) to OUT/checkpoints, and the trained model "
        "to OUT, so `archspec generate OUT` and archspec.load_saved(OUT) read it. Under `torchrun "
        "--nproc_per_node N archspec train ...` the model is sharded with FSDP2. Exit 2 for bad input.",
        epilog="data files: NAME.u16 / NAME.u32 hold pre-tokenized little-endian uint16 / uint32 ids "
        "(memory-mapped); any other file is text: its UTF-8 bytes are the tokens (ids 0-255), or "
        "--tokenizer's ids.\nexamples:\n"
        "  archspec train specs/hydra-tiny.yaml --data notes.txt --steps 200 --seq-len 128 --out runs/h\n"
        "  archspec train specs/hydra-tiny.yaml --data notes.txt --steps 400 --seq-len 128 --out runs/h --resume\n"
        "  archspec generate runs/h --prompt 'The '\n"
        "  torchrun --nproc_per_node 2 -m archspec train specs/tiny.yaml --data tokens.u16 --out runs/t")
    t.add_argument("source", metavar="SPEC|DIR", help="a spec file, or a saved model directory to start from")
    t.add_argument("--data", nargs="+", required=True, metavar="PATH", help="training files (text, .u16, .u32)")
    t.add_argument("--out", default=d.out, metavar="DIR", help=f"output directory (default {d.out})")
    t.add_argument("--steps", type=positive_int, default=d.steps, help=f"optimizer steps in all (default {d.steps})")
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size, metavar="B",
                   help=f"sequences per step over all processes and micro-batches (default {d.batch_size})")
    t.add_argument("--seq-len", type=positive_int, metavar="T", help="tokens per sequence (default "
                   "min(256, max_seq_len))")
    t.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    t.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help=f"final lr / peak for cosine and linear (default {d.min_lr_ratio})")
    t.add_argument("--warmup", type=int, default=d.warmup, metavar="N", help=f"linear warmup steps (default {d.warmup})")
    t.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help=f"after warmup (default {d.schedule})")
    t.add_argument("--grad-accum", type=positive_int, default=d.grad_accum, metavar="K",
                   help="micro-batches per step (default 1)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW decoupled weight decay of >= 2-D weights (default {d.weight_decay})")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help=f"max global gradient norm, 0: none (default {d.grad_clip})")
    t.add_argument("--dtype", choices=DTYPES, default=d.dtype,
                   help="compute dtype: bf16 (autocast / FSDP mixed precision, fp32 weights) or fp32 (default)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each sublayer's activations in the backward")
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="N",
                   help="checkpoint every N steps (default 0: at the end only)")
    t.add_argument("--keep-checkpoints", type=positive_int, default=d.keep_checkpoints, metavar="N",
                   help=f"newest checkpoints kept (default {d.keep_checkpoints})")
    t.add_argument("--eval-fraction", type=float, default=d.eval_fraction, metavar="F",
                   help=f"share of each file's sequences held out for the eval loss (default {d.eval_fraction})")
    t.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N",
                   help="eval loss every N steps (default 0: at each checkpoint and the end)")
    t.add_argument("--eval-sequences", type=positive_int, default=d.eval_sequences, metavar="N",
                   help=f"held-out sequences an evaluation reads (default {d.eval_sequences})")
    t.add_argument("--tokenizer", default=None, metavar="TOKDIR",
                   help="a directory holding a Hugging Face tokenizer.json for text files")
    t.add_argument("--seed", type=int, default=d.seed, help=f"initialisation and data order (default {d.seed})")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last "
                   "complete checkpoint (the same spec, exactly as if never stopped)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _hf_parsers(sub) -> None:
    """import-hf, convert, export-hf (archspec/hf/cli.py: it loads only when one runs)."""
    from .hf.cli import add_parsers
    add_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FileProblem as e:
        print(e.format(), file=sys.stderr)
        return EXIT_USAGE
    except SpecError as e:
        print(e.format(), file=sys.stderr)
        return EXIT_INVALID
    except BuildRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except (UsageError, CheckpointError) as e:
        print(f"archspec: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `archspec report ... | head`: the reader left, not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail too
        return EXIT_OK
    except Exception as e:  # a bug in archspec, not in the spec
        if os.environ.get("ARCHSPEC_DEBUG"):
            raise
        print(f"archspec: internal error: {type(e).__name__}: {e}\n"
              "  this is a bug in archspec; rerun with ARCHSPEC_DEBUG=1 for the traceback and report it",
              file=sys.stderr)
        return EXIT_INTERNAL


def _load(path: str):
    from .spec import load
    return load(path)


def cmd_validate(args) -> int:
    from .accounting import account
    results, worst = [], EXIT_OK
    for path in args.specs:
        try:
            spec = _load(path)
            total = account(spec).total()
            results.append({"file": path, "valid": True, "errors": [],
                            "sublayers": len(spec.sublayers), "params": total.params})
            if args.format == "text":
                print(f"{path}: ok ({len(spec.sublayers)} sublayers, {total.params:,} parameters)")
        except SpecError as e:
            code = EXIT_USAGE if isinstance(e, FileProblem) else EXIT_INVALID
            worst = max(worst, code)
            results.append({"file": path, "valid": False, "errors": [p.to_dict() for p in e.problems]})
            if args.format == "text":
                print(e.format(), file=sys.stderr)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    return worst


def _check_seq_len(spec, seq_len):
    if seq_len is not None and seq_len > spec.model.max_seq_len:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's max_seq_len {spec.model.max_seq_len}")


# torch's device types, to check --device where only its name matters (report: which backends
# would run there) without importing torch
DEVICE_TYPES = ("cpu", "cuda", "meta", "mps", "xpu", "hip", "xla", "mtia", "ipu", "hpu", "ve", "fpga",
                "maia", "lazy", "vulkan", "privateuseone")
DEVICE_NAME = re.compile(rf"({'|'.join(DEVICE_TYPES)})(:\d+)?")


def _check_device_name(text: str) -> str:
    if not DEVICE_NAME.fullmatch(text):
        raise UsageError(f"unknown device '{text}' (e.g. cpu, cuda, cuda:1, meta)")
    return text


def _parse_device(text: str, must_exist: bool = True):
    import torch
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"unknown device '{text}' (e.g. cpu, cuda, cuda:1, meta)") from None
    if must_exist and device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text} requested but CUDA is not available here")
    return device


def cmd_report(args) -> int:
    from .components.base import FlopConvention
    from .report import render, report
    _check_device_name(args.device)  # the report only asks what would run there
    spec = _load(args.spec)
    _check_seq_len(spec, args.seq_len)
    try:
        rep = report(spec, args.seq_len, FlopConvention(args.attention_flops), args.device, args.backend)
    except ValueError as e:  # a --backend no component has
        raise UsageError(str(e)) from None
    sys.stdout.write(render(rep, args.format))
    return EXIT_OK


def cmd_graph(args) -> int:
    from .accounting import account
    from .graph import component_graph, to_dot, to_json
    spec = _load(args.spec)
    _check_seq_len(spec, args.seq_len)
    g = component_graph(spec, account(spec, args.seq_len))
    text = to_json(g) + "\n" if args.format == "json" else to_dot(g)
    if args.output:
        _write_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_components(args) -> int:
    from . import components as C
    from .schema import component_schema
    if args.type is None:
        rows = [{"type": t, "role": C.get(t).role, "summary": C.get(t).summary,
                 "backends": sorted(C.get(t).backends)} for t in sorted(C.REGISTRY)]
        if args.format == "json":
            print(json.dumps(rows, indent=2))
        else:
            width = max(len(r["type"]) for r in rows)
            for r in rows:
                print(f"{r['type'].ljust(width)}  {r['role']:<9}  {r['summary']}")
        return EXIT_OK
    if args.type not in C.REGISTRY:
        near = difflib.get_close_matches(args.type, list(C.REGISTRY), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UsageError(f"unknown component type '{args.type}'{hint} (`archspec components` lists them)")
    schema = component_schema(args.type)
    if args.format == "json":
        print(json.dumps(schema, indent=2))
        return EXIT_OK
    comp = C.get(args.type)
    print(f"{args.type} ({comp.role}): {comp.summary}")
    required = set(schema.get("required", []))
    for key, prop in schema["properties"].items():
        if key == "type":
            continue
        kind = prop.get("enum") or prop.get("type", "")
        kind = "|".join(k if isinstance(k, str) else json.dumps(k) for k in kind) if isinstance(kind, list) else kind
        default = "required" if key in required else (
            f"default {json.dumps(prop['default'])}" if "default" in prop else "derived")
        print(f"  {key:<16} {kind:<24} {default:<22} {prop.get('description', '')}")
    if comp.example:
        print(f"example: {json.dumps({'type': args.type, **comp.example})}")
    return EXIT_OK


def cmd_schema(args) -> int:
    from .schema import editor_schema, write_editor_schema
    if args.write:
        print(f"wrote {write_editor_schema()}")
    else:
        print(json.dumps(editor_schema(), indent=2))
    return EXIT_OK


def cmd_build(args) -> int:
    import torch

    from .accounting import account
    from .checkpoint import check_target, save
    from .codegen.build import build, check_memory, weight_bytes
    from .smoke import smoke_run
    from .units import human_bytes
    spec = _load(args.spec)
    _check_seq_len(spec, args.seq_len)
    meta = args.meta or args.device == "meta"
    # a meta build shows the backends chosen for the device named (it need not be present here)
    _parse_device(args.device, must_exist=not meta)
    if args.save:  # refuse before spending time on a build whose result could not be saved
        if meta:
            raise UsageError("--save needs real weights; drop --meta")
        check_target(args.save, args.overwrite)
    smoke_seq = args.seq_len or min(64, spec.model.max_seq_len)
    if not meta and not args.force and not args.no_smoke:
        # the smoke step also holds gradients (one per weight) and the batch's activations
        dtype = args.dtype or spec.model.dtype
        grads = weight_bytes(spec, dtype)
        activations = args.batch * account(spec, smoke_seq).total().activation_bytes
        check_memory(spec, torch.device(args.device), dtype, grads + activations,
                     "the smoke step's gradients and activations (use --no-smoke to skip it)")
    try:
        with warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always", KernelFallbackWarning)
            model = build(spec, device="cpu" if args.device == "meta" else args.device,
                          dtype=args.dtype, meta=meta, backend=args.backend, force=args.force,
                          seed=args.seed)
    except ValueError as e:  # e.g. a forced backend that cannot run on this device
        raise UsageError(str(e)) from None
    for w in fallbacks:  # a kernel that did not compile here: say so plainly, not as source lines
        if issubclass(w.category, KernelFallbackWarning):
            print(f"archspec: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    total = account(spec).total()
    n = sum(p.numel() for p in model.parameters())
    dev = next(model.parameters()).device
    print(f"built {spec.name}: {n:,} parameters ({'matches' if n == total.params else 'DIFFERS FROM'} "
          f"the report's {total.params:,}) on {dev}, {next(model.parameters()).dtype}")
    print(f"layout: {spec.layout_text} ({len(spec.sublayers)} sublayers)")
    summary = _backend_summary(model)
    print(f"backends: {', '.join(f'{k}={v}' for k, v in sorted(summary.items()))}"
          if summary else "backends: -")
    for symbol, reason in sorted(_fallbacks(model).items()):
        print(f"fallback: {symbol}: {reason}")
    if meta:
        print("meta build: no memory allocated; no smoke run")
    elif not args.no_smoke:
        seq = smoke_seq
        res = smoke_run(model, args.batch, seq, args.seed)
        peak = human_bytes(res.peak_memory_bytes) if res.peak_memory_bytes is not None else "unknown"
        print(f"smoke forward+backward (batch {res.batch}, seq_len {res.seq_len}): "
              f"{res.forward_backward_seconds * 1000:.1f} ms, loss {res.loss:.4f}, "
              f"peak memory {peak} ({res.peak_memory_kind}), gradients {'finite' if res.grads_finite else 'NOT FINITE'}")
        if res.params_without_grad:
            shown = ", ".join(res.params_without_grad[:5])
            more = len(res.params_without_grad) - 5
            print(f"note: {len(res.params_without_grad)} parameter(s) got no gradient: {shown}"
                  + (f" and {more} more" if more > 0 else ""))
        if not res.grads_finite:
            return EXIT_INTERNAL
    if args.save:
        saved = save(model, args.save, overwrite=args.overwrite)
        print(f"saved weights and resolved spec to {saved}")
    return EXIT_OK


def _backends_by_symbol(model):
    """(symbol, backend) for each node the build chose a backend for; every norm's symbol is
    model.norm (the plan says which node is which)."""
    from .plan import plan
    nodes = plan(model.spec)
    return [(nodes[name].symbol, backend) for name, backend in model.backends.items()]


def _backend_summary(model) -> dict[str, str]:
    """Backends by component symbol, '(fallback)' after one `auto` took because the kernels did
    not compile on the device (_fallbacks says why)."""
    by_symbol: dict[str, set] = {}
    for symbol, backend in _backends_by_symbol(model):
        name = f"{backend} (fallback)" if getattr(backend, "fallback", None) else str(backend)
        by_symbol.setdefault(symbol, set()).add(name)
    return {k: ",".join(sorted(v)) for k, v in by_symbol.items()}


def _fallbacks(model) -> dict[str, str]:
    """Why each component symbol that fell back from its kernels did (the first reason)."""
    out: dict[str, str] = {}
    for symbol, backend in _backends_by_symbol(model):
        reason = getattr(backend, "fallback", None)
        if reason:
            out.setdefault(symbol, f"the {backend} backend runs: {reason}")
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write '{path}': {e.strerror or e}") from None


def _seq_lens(text: str) -> list[int]:
    values = [positive_int(t.strip()) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give one or more lengths, e.g. 2048,32768")
    return values


def _budget(text: str):
    from .diff import Budget, DiffOptionError
    try:
        return Budget.parse(text)
    except DiffOptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_diff(args) -> int:
    """Exit 0 no difference, 1 different, 2 trouble (an invalid spec prints its errors as
    `validate` does), 4 a budget crossed."""
    from .components.base import FlopConvention
    from .diff import DiffOptionError, check_ignore, diff, render
    try:
        ignore = check_ignore(args.ignore)
    except DiffOptionError as e:
        raise UsageError(str(e)) from None
    specs, failed = [], False
    for path in (args.a, args.b):
        try:
            specs.append(_load(path))
        except SpecError as e:  # both specs' errors, then exit 2: 1 means "different" here
            print(e.format(), file=sys.stderr)
            failed = True
    if failed:
        return EXIT_USAGE
    try:
        d = diff(specs[0], specs[1], seq_lens=args.seq_len, ignore=ignore,
                 max_params_delta=args.max_params_delta, max_flops_delta=args.max_flops_delta,
                 convention=FlopConvention(args.attention_flops))
    except DiffOptionError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(render(d, args.format))
    for check in d.budgets:
        if check.crossed:
            print(f"archspec diff: budget crossed: {check.describe()}", file=sys.stderr)
    return d.exit_code


def cmd_generate(args) -> int:
    """Byte-level generation from a saved model, streamed to stdout (module docstring of
    archspec/generate.py: the decoding)."""
    import codecs

    from .checkpoint import load_saved
    from .generate import check_prompts, check_sampling, generate
    device = _parse_device(_check_device_name(args.device))
    if args.tokenizer is not None:
        return _generate_with_tokenizer(args, device)
    prompt = args.prompt.encode("utf-8")
    if not prompt:
        raise UsageError("--prompt is empty: generation needs at least one token to start from")
    model, spec = load_saved(args.directory, device=device)
    if spec.model.vocab_size < 256:
        raise UsageError(f"byte-level tokens need a vocabulary of at least 256; this model's has "
                         f"{spec.model.vocab_size}")
    try:  # every argument checked before any output
        check_prompts(model, [list(prompt)], args.max_new_tokens)
        check_sampling(model, args.temperature, args.top_k, args.top_p, args.eos)
    except ValueError as e:
        raise UsageError(str(e)) from None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def show(row: int, token: int) -> None:
        text = decoder.decode(bytes([token])) if token < 256 else decoder.decode(b"", final=True) + "\ufffd"
        sys.stdout.write(text)
        sys.stdout.flush()

    generate(model, [list(prompt)], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
             top_p=args.top_p, eos_token_id=args.eos, seed=args.seed, on_token=show)
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    return EXIT_OK


def _generate_with_tokenizer(args, device) -> int:
    """cmd_generate with a tokenizer: the prompt's ids from it, and the text streamed as the
    decoding of all new ids so far (a token may only complete a character with the next one)."""
    from .checkpoint import load_saved
    from .generate import check_prompts, check_sampling, generate
    from .tokenizer import TokenizerError, load_tokenizer
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except TokenizerError as e:
        raise UsageError(str(e)) from None
    prompt = list(tokenizer.encode(args.prompt).ids)
    if not prompt:
        raise UsageError("--prompt is empty: generation needs at least one token to start from")
    model, _ = load_saved(args.directory, device=device)
    try:  # every argument checked before any output (ids outside the vocabulary included)
        check_prompts(model, [prompt], args.max_new_tokens)
        check_sampling(model, args.temperature, args.top_k, args.top_p, args.eos)
    except ValueError as e:
        raise UsageError(str(e)) from None
    new: list[int] = []
    shown = ""

    def show(row: int, token: int) -> None:
        nonlocal shown
        new.append(token)
        text = tokenizer.decode(new)
        if text.startswith(shown):  # print only what is new (a decoding can revise its tail)
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

    generate(model, [prompt], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
             top_p=args.top_p, eos_token_id=args.eos, seed=args.seed, on_token=show)
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_kernels(args) -> int:
    """Exit 0 every configuration passes (or the listing), 1 one fails the gate, 2 trouble (a
    bad option, an unreadable or invalid spec, triton missing)."""
    from .kernels import kernels_report, parse_dtypes, render, shipped_specs
    from .ops.triton_support import triton_installed
    if not triton_installed():
        raise UsageError("`archspec kernels` needs triton (pip install 'archspec[triton]')")
    targets = None
    try:
        dtypes = None if args.dtypes is None else parse_dtypes(args.dtypes)
        if args.targets is not None:
            from .ops.aot import parse_targets
            targets = parse_targets(args.targets)
    except ValueError as e:
        raise UsageError(str(e)) from None
    paths = args.specs or shipped_specs()
    if not paths:
        raise UsageError("no SPEC given and no shipped specs found beside the package; name spec files")
    specs, failed = [], False
    for path in paths:
        try:
            specs.append(_load(path))
        except SpecError as e:  # every spec's errors, then exit 2: 1 means "a kernel fails" here
            print(e.format(), file=sys.stderr)
            failed = True
    if failed:
        return EXIT_USAGE
    rep = kernels_report(specs, dtypes, targets, jobs=args.jobs, timeout=args.timeout,
                         extremes=not args.no_extremes, progress=_progress if targets else None,
                         only=[o.strip() for o in args.only.split(",") if o.strip()] if args.only else None)
    sys.stdout.write(render(rep, args.format))
    if targets is not None and not rep["ok"]:
        failed = sum(not r["ok"] for r in rep["results"])
        print(f"archspec kernels: {failed} of {len(rep['results'])} configurations fail the gate",
              file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _progress(done: int, total: int, result) -> None:
    status = "ok" if result.ok else "FAIL"
    print(f"[{done}/{total}] {status:4} {result.target} {result.kernel} ({result.compile_s}s)",
          file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    """Train with archspec.train (archspec/train/): every bad input a TrainError, exit 2."""
    from .train import TrainError, train
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "source", "data", "no_progress")}
    try:
        result = train(args.source, args.data, progress=not args.no_progress, **settings)
    except TrainError as e:
        if os.environ.get("RANK", "0") != "0":  # under torchrun every rank refuses: rank 0 says why
            return EXIT_USAGE
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print("\narchspec train: interrupted; continue from the last checkpoint with --resume",
                  file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return EXIT_OK
    last = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    print(f"trained to step {result.step}{last}; the model is in {result.out} "
          f"(archspec generate {result.out} --prompt ...)")
    return EXIT_OK


COMMANDS = {"validate": cmd_validate, "kernels": cmd_kernels, "report": cmd_report, "build": cmd_build, "graph": cmd_graph,
            "schema": cmd_schema, "components": cmd_components,
            "diff": cmd_diff, "generate": cmd_generate, "train": cmd_train}


def _hf_command(name: str):
    def run(args) -> int:
        from .hf import cli as hf_cli
        return getattr(hf_cli, name)(args)
    return run


COMMANDS.update({"import-hf": _hf_command("cmd_import_hf"), "convert": _hf_command("cmd_convert"),
                 "export-hf": _hf_command("cmd_export_hf")})


def entry() -> None:
    sys.exit(main())
