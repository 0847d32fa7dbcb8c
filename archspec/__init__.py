"""archspec: a declarative model-architecture compiler for PyTorch.

    spec = archspec.load("specs/tiny.yaml")      # load -> validate -> resolve (SpecError lists all problems)
    rep = archspec.report(spec, seq_len=2048)    # accounting as a JSON-ready dict
    g = archspec.component_graph(spec)           # networkx DiGraph
    model = archspec.build(spec)                 # trainable causal LM (meta=True: free structural build)
    archspec.save(model, "out/")                 # weights (safetensors) + the resolved spec, atomically
    model, spec = archspec.load_saved("out/")    # rebuilt from the saved configs, weights loaded strictly
    new = archspec.generate(model, [[1, 2, 3]], max_new_tokens=20)  # decoding with a state cache
    model, spec = archspec.from_hf("llama-dir/")  # a local transformers checkpoint (archspec/hf)
    d = archspec.diff(spec_a, spec_b)            # structural diff, cost deltas, checkpoint reuse
    k = archspec.kernels_report([spec], targets=[TARGETS["sm_90"]])  # the kernel gate (ops/aot.py)

Importing archspec loads nothing but this index: each name loads its stage on first use
(archspec/lazy.py), so the commands that only read specs (validate, report, diff) never import
torch or triton, and each imports only the stages it runs.
"""
__version__ = "0.1.0"  # before the imports: archspec.json records it

from .costs import FlopConvention
from .errors import BuildRefused, CheckpointError, KernelFallbackWarning, SpecError
from .lazy import lazy_exports

# every stage loads on first use: a command imports only what it runs (`validate` neither the
# diff nor networkx; nothing of the front end torch or triton)
__getattr__, __dir__ = lazy_exports(__name__, {
    ".accounting": ["account"],
    ".checkpoint": ["save", "load_saved"],
    ".codegen.build": ["build"],
    ".diff": ["diff"],
    ".generate": ["generate"],
    ".graph": ["component_graph"],
    ".hf.load": ["from_hf"],
    ".kernels": ["kernels_report"],
    ".report": ["report"],
    ".spec": ["ResolvedSpec", "load", "loads"],
})

__all__ = ["load", "loads", "report", "account", "component_graph", "build", "save", "load_saved",
           "generate", "from_hf", "diff", "kernels_report", "FlopConvention", "SpecError", "BuildRefused", "CheckpointError",
           "KernelFallbackWarning",
           "ResolvedSpec", "__version__"]
