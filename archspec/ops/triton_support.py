"""What every Triton kernel of archspec shares: where it can run, the `triton` backend rule, and
the registration of its custom ops' FLOP formulas with torch's FlopCounterMode and fvcore.

Conventions (every kernel follows them; see docs/kernels.md):

* A kernel sits beside its reference, in the same `archspec/ops/<family>/` package
  (`triton_<op>.py` and `triton_kernels.py` beside `naive.py`; archspec/ops/__init__.py): the
  reference (plain PyTorch) is the ground truth every kernel test compares against.
* Each kernel is a torch custom op `archspec::<name>` (torch.library.custom_op) with a fake
  implementation, so that torch.compile, the meta device and FlopCounterMode see one opaque op;
  its backward is another custom op, wired with `register_autograd`.
* `triton` is imported only when a kernel first runs (importing archspec never imports it), so
  TRITON_INTERPRET=1 can be set before that: the interpreter then runs every kernel on the CPU
  with numpy. Autotuning does not work there; kernels take fixed block sizes.
* Each op's FLOPs (1 FLOP = one multiply or one add, a MAC is 2) are registered with
  `register_flops`: the formula is the component accounting's, counted from the op's shapes and
  integer arguments (never from tensor values, which fvcore's trace does not see).

Backend rule (triton_rule.py, importable without torch): a `triton` backend is *available* where
triton is installed and the device is CUDA, or the CPU under TRITON_INTERPRET=1; `auto`
*prefers* it only on CUDA (the interpreter proves correctness; it is orders of magnitude slower
than the reference).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .triton_rule import (TRITON_PRIORITY, interpreting, triton_installed,  # noqa: F401  (re-exported)
                          triton_preferred, triton_unavailable)


class KernelUnavailable(ValueError, RuntimeError):
    """A Triton kernel asked for where it cannot run. A ValueError like every other bad input
    (the CLI reports those), and a RuntimeError for callers that catch launch failures."""


def check_runnable(*tensors: torch.Tensor | None) -> None:
    """Raise a clear error before launching a kernel on tensors it cannot run on."""
    for t in tensors:
        if t is not None and t.device.type != "meta":  # meta: the fake implementation runs
            reason = triton_unavailable(t.device)
            if reason is not None:
                raise KernelUnavailable(f"cannot run a Triton kernel on {t.device}: {reason}")
            return


# --- FLOP formulas of custom ops -------------------------------------------------------------

# op name ("archspec::name") -> formula(*args) -> FLOPs; tensor arguments arrive as shapes
# (tuples; None for an absent optional tensor), the others as their values.
FLOP_FORMULAS: dict[str, Callable[..., int]] = {}
_PENDING: list = []  # (op packet, formula) not yet in FlopCounterMode's registry


def register_flops(op: torch._ops.OpOverloadPacket | Callable, formula: Callable[..., int]) -> None:
    """Count `op` as `formula` FLOPs in FlopCounterMode and in fvcore (through `fvcore_handles`,
    which archspec.flopcount installs). `formula` must return an even number where fvcore's MAC
    count (FLOPs / 2) should be exact: matmul-like work always is.

    FlopCounterMode's registry lives in torch.utils.flop_counter, which imports triton; so that
    importing archspec does not, formulas reach it in `install_flop_formulas`, called by
    archspec.flopcount, by every `triton` backend's factory and by the kernel entry points
    (FlopCounterMode copies the registry when it is created: a model built with a triton backend
    is counted right by any FlopCounterMode created after the build)."""
    packet = _packet(op)
    FLOP_FORMULAS[packet._qualified_op_name] = formula  # "archspec::name"
    _PENDING.append((packet, formula))
    if "torch.utils.flop_counter" in sys.modules:
        install_flop_formulas()


def install_flop_formulas() -> None:
    """Put every registered formula into FlopCounterMode's registry (once each)."""
    if not _PENDING:
        return
    from torch.utils.flop_counter import register_flop_formula
    while _PENDING:
        packet, formula = _PENDING.pop()

        def count(*args, out_shape=None, formula=formula, **kwargs):
            return formula(*args, *kwargs.values())

        register_flop_formula(packet)(count)


def _packet(op):
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op
    if isinstance(op, torch._ops.OpOverload):
        return op.overloadpacket
    # a torch.library.custom_op object
    namespace, name = op._qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name)


def fvcore_handles() -> dict[str, Callable]:
    """fvcore op handles (they count MACs: FLOPs / 2) for every registered custom op."""
    return {name: _fvcore_handle(formula) for name, formula in FLOP_FORMULAS.items()}


def _fvcore_handle(formula):
    def handle(inputs, outputs) -> int:
        return formula(*(_jit_value(x) for x in inputs)) // 2
    return handle


def _jit_value(value):
    """A traced argument as a formula expects it: a tensor's shape, else its constant value."""
    from fvcore.nn.jit_handles import get_shape
    if value.type().kind() == "TensorType":
        return tuple(get_shape(value))
    ivalue = value.toIValue()
    if ivalue is None and value.type().kind() not in ("NoneType", "OptionalType"):
        raise ValueError(f"fvcore trace: argument {value} of a custom op is not a constant; "
                         "FLOP formulas may read only shapes and constant arguments")
    return ivalue


# --- launches: every kernel launch goes through `launch` -------------------------------------
# so that the gate (`archspec kernels`) compiles exactly the configurations that run: an op's
# launcher is run on meta tensors inside `recorded_launches()`, which records each launch
# (arguments specialised as triton's runtime specialises them) instead of running it.

@dataclass(frozen=True)
class KernelLaunch:
    """One launch configuration of a @triton.jit kernel, as triton's runtime specialises it.

    `signature`: (argument, type) for every argument that is not a compile-time constant
    ("*bf16" a pointer, "i32", "i64", "fp32", "u1"); `divisible_by_16`: the arguments the launch
    specialises as multiples of 16 (aligned pointers, integers); `constexprs`: (argument, value)
    of the tl.constexpr arguments and of those triton folds into constants (an integer 1, None).
    Two launches that compile to the same binary compare equal."""

    kernel: str                                  # "<ops package>.<function>"
    signature: tuple[tuple[str, str], ...]
    divisible_by_16: tuple[str, ...]
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    fn: object = field(default=None, compare=False, hash=False, repr=False)  # the JITFunction

    @property
    def dtype(self) -> str:
        """The element type of the first floating-point pointer (the launch's data type)."""
        for _, ty in self.signature:
            if ty.startswith("*") and ty[1:] in ("fp32", "bf16", "fp16", "fp64"):
                return ty[1:]
        return "-"

    @property
    def config(self) -> str:
        """The launch configuration in one line: constexprs, warps, stages, dtype, and the
        integer arguments not specialised as multiples of 16 (two launches differing only there
        compile to different binaries)."""
        consts = " ".join(f"{k}={_short(v)}" for k, v in self.constexprs)
        text = f"{consts} warps={self.num_warps} stages={self.num_stages} dtype={self.dtype}".strip()
        ints = [name for name, ty in self.signature if ty[0] in "iu" and name not in self.divisible_by_16]
        return text + (f" unaligned={','.join(ints)}" if ints else "")


def _short(value) -> str:
    return getattr(value, "name", None) or str(value)


_RECORDING: list[list[KernelLaunch]] = []


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[KernelLaunch]]:
    """Inside, `launch` records instead of running (run the launchers on meta tensors)."""
    found: list[KernelLaunch] = []
    _RECORDING.append(found)
    try:
        yield found
    finally:
        _RECORDING.pop()


def launch(kernel, grid, *args, num_warps: int = 4, num_stages: int = 3, **kwargs) -> None:
    """`kernel[grid](*args, num_warps=..., num_stages=..., **kwargs)`, or, inside
    `recorded_launches()`, the record of that launch. Every launch site in archspec calls this."""
    if _RECORDING:
        _RECORDING[-1].append(describe_launch(kernel, args, kwargs, num_warps, num_stages))
        return
    kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **kwargs)


def describe_launch(kernel, args: tuple, kwargs: dict, num_warps: int, num_stages: int) -> KernelLaunch:
    """The KernelLaunch of `kernel[grid](*args, **kwargs)`; tensors may be on the meta device."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction, MockTensor, native_specialize_impl
    if not isinstance(kernel, JITFunction):
        # triton's interpreter (TRITON_INTERPRET=1) wraps kernels in an InterpretedFunction,
        # which has no parameter list; the JITFunction of the same Python function gives it
        kernel = JITFunction(kernel.fn)
    params = kernel.params
    if len(args) > len(params):
        raise TypeError(f"{kernel.fn.__name__}: {len(args)} arguments for {len(params)} parameters")
    values = dict(zip((p.name for p in params), args))
    unknown = set(kwargs) - {p.name for p in params}
    if unknown:
        raise TypeError(f"{kernel.fn.__name__}: unknown arguments {sorted(unknown)}")
    values.update(kwargs)
    signature, divisible, constexprs = [], [], []
    for p in params:
        if p.name in values:
            value = values[p.name]
        elif p.has_default:
            value = p.default
        else:
            raise TypeError(f"{kernel.fn.__name__}: missing argument {p.name!r}")
        if p.is_constexpr:
            constexprs.append((p.name, value))
            continue
        if isinstance(value, torch.Tensor):
            value = MockTensor(value.dtype)  # aligned, as every tensor archspec allocates
        ty, attr = native_specialize_impl(BaseBackend, value, False, True, True)
        if ty == "constexpr":
            constexprs.append((p.name, attr))
        else:
            signature.append((p.name, ty))
            if attr == "D":
                divisible.append(p.name)
    module = kernel.fn.__module__.split(".")
    family = module[-2] if module[-1] == "triton_kernels" else module[-1]
    return KernelLaunch(f"{family}.{kernel.fn.__name__}", tuple(signature), tuple(divisible),
                        tuple(constexprs), int(num_warps), int(num_stages), kernel)


# --- the build-time check: can this device compile and run a component's kernels? ------------
# `auto` must never commit a run to a kernel that cannot compile or launch on its device: by the
# time a launch fails (triton's CompilationError, OutOfResources, a CUDA error) the forward or
# backward is half done and no backend can be swapped in. So the build compiles every launch a
# component's `triton` backend will make (Component.kernel_launches) for the device's target
# first, and falls back (or, when triton was forced, refuses) before it builds the module.

@dataclass(frozen=True)
class KernelFailure:
    """One launch configuration that cannot run on `target`: `reason` is the compiler's message
    trimmed to its useful line (`detail` keeps the whole of it)."""

    kernel: str          # "linear_attention.state_fwd_kernel"
    config: str          # KernelLaunch.config: "BT=64 warps=4 stages=2 dtype=bf16"
    target: str          # "sm_90"
    reason: str
    detail: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.kernel} [{self.config}] failed on {self.target}: {self.reason}"


# (launch, target name, shared limit) -> the compile result: a model with 24 identical layers, or
# a second build in the same process, compiles each distinct configuration once
_CHECKED: dict[tuple, object] = {}


def target_of(device: torch.device):
    """The compile target (archspec.ops.aot.Target) of a CUDA `device`, or None when it cannot be
    known: no such device in this process (a meta build for 'cuda' on a machine without one:
    nothing to compile for), or one whose shared-memory limit torch does not report and aot does
    not know. The check is then skipped, as it was before there was one."""
    if not torch.cuda.is_available():
        return None
    from .aot import target_of as aot_target_of
    try:
        return aot_target_of(device)
    except ValueError as e:
        _log().debug("no kernel check on %s: %s", device, e)
        return None


def compile_launches(launches: list[KernelLaunch], target) -> list:
    """archspec.ops.aot.compile_launches: compile each launch for `target`, in parallel worker
    processes; a CompileResult per launch, in order (compiler errors, crashes and timeouts are
    reported in it, not raised). Seconds per kernel on a real GPU, which is why a component's
    launches go in one batch: aot compiles each in a worker with a fresh, temporary triton cache
    (so that a cached binary cannot hide a failure), which also means the check does not warm
    the cache the real launch uses."""
    from .aot import compile_launches as aot_compile_launches
    return aot_compile_launches([(launch, target) for launch in launches])


def kernel_failures(component, cfg: dict, model, dtype: torch.dtype,
                    device: torch.device) -> list[KernelFailure]:
    """The launches of `component`'s `triton` backend (for `cfg`, `dtype` inputs) that cannot run
    on `device`: those that do not compile, or need more shared memory than it has. Empty off
    CUDA (the interpreter runs everything; there is nothing to compile) and when the component
    has no kernels.

    Each distinct (launch, target) is compiled once per process: a model with 24 identical
    layers checks each configuration once. Compiling costs seconds per kernel on a GPU (see
    `compile_launches`). Register spills and missing tensor cores make a kernel slow, not broken:
    they are logged at debug level and do not count as failures; nor does a shared-memory figure
    the compiler did not report."""
    if torch.device(device).type != "cuda":
        return []
    launches = component.kernel_launches(cfg, model, dtype)
    if not launches:
        return []
    target = target_of(torch.device(device))
    if target is None:
        return []
    distinct = list(dict.fromkeys(launches))  # in launch order
    results = _compiled(distinct, target)
    return [f for f in (_failure(la, target, r) for la, r in zip(distinct, results)) if f is not None]


def clear_kernel_checks() -> None:
    """Forget every compile result (a new triton, or a test that patches the compiler)."""
    _CHECKED.clear()


def _compiled(launches: list[KernelLaunch], target) -> list:
    """The compile results of `launches` on `target`: those not yet in the cache in one batch."""
    def key(launch):
        return (launch, target.name, getattr(target, "shared_limit", None))
    missing = [la for la in launches if key(la) not in _CHECKED]
    if missing:
        try:
            results = compile_launches(missing, target)
        except Exception as e:  # noqa: BLE001 - aot reports compiler errors in its results; one
            # that escapes (a crash inside triton, a worker that cannot start) still means
            # these kernels cannot be shown to run
            results = [_CompilerCrash(f"{type(e).__name__}: {e}")] * len(missing)
        _CHECKED.update(zip(map(key, missing), results))
    return [_CHECKED[key(la)] for la in launches]


@dataclass(frozen=True)
class _CompilerCrash:
    """The CompileResult of a compile_launches that raised instead of reporting."""

    error: str
    compiled: bool = False


def _failure(launch: KernelLaunch, target, result) -> KernelFailure | None:
    """The KernelFailure `result` means, or None when the kernel can run (perhaps slowly)."""
    if not result.compiled:
        detail = str(result.error or "the compiler gave no message")
        return KernelFailure(launch.kernel, launch.config, target.name, useful_line(detail), detail)
    if result.shared_ok is False:  # None: not measured, so not known to be too much
        reason = (f"needs {result.shared_bytes:,} bytes of shared memory per program; "
                  f"{target.name} has {result.shared_limit:,}")
        return KernelFailure(launch.kernel, launch.config, target.name, reason, reason)
    if getattr(result, "spill_bytes", None):
        _log().debug("%s [%s] on %s spills %d bytes of registers: it runs, slowly",
                     launch.kernel, launch.config, target.name, result.spill_bytes)
    return None


def _log():
    import logging
    return logging.getLogger("archspec.kernels")


MAX_REASON = 240  # characters of a compiler message a warning or an error shows


def useful_line(message: str) -> str:
    """The line of a compiler message that says what went wrong, cut to MAX_REASON characters.
    triton's CompilationError quotes the kernel's source, puts a caret under the failing
    expression and gives the error after it: what follows the last caret line is kept. ptxas and
    MLIR put the error on a line saying 'error', before trailing 'fatal'/'aborted' lines: the
    first such line wins; else the last line (OutOfResources is one line)."""
    lines = [ln.strip() for ln in message.splitlines()]
    carets = [i for i, ln in enumerate(lines) if ln and not set(ln) - set("^~ ")]
    if carets and carets[-1] + 1 < len(lines):
        lines = lines[carets[-1] + 1:]
    lines = [ln for ln in lines if ln and set(ln) - set("^~ ")]
    if not lines:
        return "the compiler gave no message"
    errors = [ln for ln in lines if "error" in ln.lower() and "fatal" not in ln.lower()]
    line = errors[0] if errors else lines[-1]
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 3] + "..."
