"""The CLI's Hugging Face commands (archspec/cli.py registers them; this module loads on use).

    archspec import-hf PATH [-o spec.yaml]      a config.json (or model directory) -> a spec
    archspec convert PATH -o DIR                a model directory -> an archspec saved model
    archspec export-hf DIR -o OUT               a saved model (or a spec) -> a transformers checkpoint

Exit codes as every command: 1 for a model archspec cannot import or export (the message
names the family, key or tensor), 2 for a path that cannot be read or written.
"""
from __future__ import annotations

import sys
from pathlib import Path

EXIT_OK, EXIT_INVALID = 0, 1


def add_parsers(sub) -> None:
    imp = sub.add_parser("import-hf", help="a transformers config.json (or model directory) as an archspec spec",
                         description="Write the archspec spec of a transformers model: the same model, weight "
                         "for weight, or an error naming what archspec cannot express.")
    imp.add_argument("path", metavar="PATH", help="a config.json or a directory holding one")
    imp.add_argument("-o", "--output", metavar="SPEC", help="write the spec here (default: stdout)")
    conv = sub.add_parser("convert", help="a local transformers model directory (safetensors) as an archspec "
                          "saved model", description="Import the config (as import-hf) and load the "
                          "safetensors weights into the archspec build; the output loads with "
                          "archspec.load_saved / `archspec generate DIR`.")
    conv.add_argument("path", metavar="PATH", help="a transformers model directory")
    conv.add_argument("-o", "--output", required=True, metavar="DIR", help="the archspec saved model to write")
    conv.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the config's")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing saved model at DIR")
    exp = sub.add_parser("export-hf", help="an archspec saved model (or spec) as a transformers checkpoint of "
                         "its family", description="Write config.json and model.safetensors so that "
                         "transformers' AutoModelForCausalLM.from_pretrained(OUT) loads the same model. A "
                         "spec must match a transformers family exactly; others run in transformers "
                         "through the generic wrapper (archspec.hf.model's ArchspecForCausalLM).")
    exp.add_argument("path", metavar="DIR", help="an archspec saved model (or a spec: random weights)")
    exp.add_argument("-o", "--output", required=True, metavar="OUT", help="a new (or empty) directory")
    exp.add_argument("--family", help="the transformers model_type to write (default: the first that fits)")


def _fail(e) -> int:
    print(f"archspec: error: {e}", file=sys.stderr)
    return EXIT_INVALID


def _readable(path: str, what: str):
    from ..cli import UsageError
    if not Path(path).exists():
        raise UsageError(f"{path}: no such {what}")


def cmd_import_hf(args) -> int:
    from .families import HFImportError
    from .load import import_text, resolved_spec
    _readable(args.path, "file or directory")
    try:
        text = import_text(args.path)
        resolved_spec(args.path)  # archspec validates what it wrote
    except HFImportError as e:
        return _fail(e)
    if args.output:
        from ..cli import _write_atomic
        _write_atomic(Path(args.output), text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_convert(args) -> int:
    from ..checkpoint import check_target, save
    from .families import HFImportError
    from .load import from_hf
    _readable(args.path, "model directory")
    check_target(args.output, overwrite=args.overwrite)  # before the weights are read
    try:
        model, spec = from_hf(args.path, dtype=args.dtype)
    except HFImportError as e:
        return _fail(e)
    save(model, args.output, overwrite=args.overwrite)
    params = sum(p.numel() for p in model.parameters())
    print(f"converted {args.path} ({spec.model.name}: {params:,} parameters) -> {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_export_hf(args) -> int:
    from .export import export_hf, family_of
    from .families import HFImportError
    _readable(args.path, "saved model or spec")
    if Path(args.path).is_dir():
        from ..checkpoint import load_saved
        model, spec = load_saved(args.path)
    else:
        from ..spec import load
        model, spec = None, load(args.path)
    try:
        family, _ = family_of(spec, args.family)  # before building anything
        if model is None:
            from ..codegen.build import build
            model = build(spec, seed=0)
            print(f"{args.path} is a spec: exporting its random initial weights (seed 0)", file=sys.stderr)
        export_hf(model, args.output, family)
    except HFImportError as e:
        return _fail(e)
    print(f"exported {args.path} as transformers {family} -> {args.output}", file=sys.stderr)
    return EXIT_OK
