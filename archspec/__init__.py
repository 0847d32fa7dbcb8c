"""archspec: a declarative model-architecture compiler for PyTorch.

    spec = archspec.load("specs/tiny.yaml")      # load -> validate -> resolve (SpecError lists all problems)
    rep = archspec.report(spec, seq_len=2048)    # accounting as a JSON-ready dict
    g = archspec.component_graph(spec)           # networkx DiGraph
    model = archspec.build(spec)                 # trainable causal LM (meta=True: free structural build)
    model, spec = archspec.load_saved("out/")    # what `archspec build --save out/` wrote
    d = archspec.diff(spec_a, spec_b)            # structural diff, cost deltas, checkpoint reuse
    k = archspec.kernels_report([spec], targets=[TARGETS["sm_90"]])  # the kernel gate (ops/aot.py)

Importing archspec imports no stage: each name loads its module on first use (archspec/lazy.py),
so a torch-free module (archspec.costs, the costs of archspec.ops) stays torch-free when
imported.
"""
from .costs import FlopConvention
from .errors import BuildRefused, KernelFallbackWarning, SpecError
from .lazy import lazy_exports

__version__ = "0.1.0"
_LAZY = {
    ".accounting": ["account"],
    ".codegen.build": ["build", "load_saved"],
    ".diff": ["diff"],
    ".graph": ["component_graph"],
    ".kernels": ["kernels_report"],
    ".report": ["report"],
    ".spec": ["ResolvedSpec", "load", "loads"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["load", "loads", "report", "account", "component_graph", "build", "load_saved", "diff",
           "kernels_report", "FlopConvention", "SpecError", "BuildRefused", "KernelFallbackWarning",
           "ResolvedSpec", "__version__"]
