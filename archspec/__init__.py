"""archspec: a declarative model-architecture compiler for PyTorch.

    spec = archspec.load("specs/tiny.yaml")      # load -> validate -> resolve (SpecError lists all problems)
    rep = archspec.report(spec, seq_len=2048)    # accounting as a JSON-ready dict
    g = archspec.component_graph(spec)           # networkx DiGraph
    model = archspec.build(spec)                 # trainable causal LM (meta=True: free structural build)
    archspec.save(model, "out/")                 # weights (safetensors) + the resolved spec, atomically
    model, spec = archspec.load_saved("out/")    # rebuilt from the saved configs, weights loaded strictly
    d = archspec.diff(spec_a, spec_b)            # structural diff, cost deltas, checkpoint reuse
    k = archspec.kernels_report([spec], targets=[TARGETS["sm_90"]])  # the kernel gate (ops/aot.py)

Importing archspec loads the front end (load, validate, report, diff: no torch, no triton); what
needs torch (build, save, load_saved, kernels_report) or networkx (component_graph) loads on
first use.
"""
__version__ = "0.1.0"  # before the imports: archspec.json records it

from .accounting import account
from .components.base import FlopConvention
from .diff import diff
from .errors import BuildRefused, CheckpointError, KernelFallbackWarning, SpecError
from .report import report
from .spec import ResolvedSpec, load, loads

# what needs torch (or networkx) loads on first use, so that `import archspec` and the commands
# that only read specs (validate, report, diff) stay free of them
_LAZY = {"build": ".codegen.build", "save": ".checkpoint", "load_saved": ".checkpoint",
         "kernels_report": ".kernels", "component_graph": ".graph"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'archspec' has no attribute {name!r}")


__all__ = ["load", "loads", "report", "account", "component_graph", "build", "save", "load_saved",
           "diff", "kernels_report", "FlopConvention", "SpecError", "BuildRefused", "CheckpointError",
           "KernelFallbackWarning",
           "ResolvedSpec", "__version__"]
