"""Ahead-of-time compilation of recorded Triton launches for real GPU targets, no GPU needed:
the check behind `archspec kernels --compile` (the gate).

triton's interpreter (the kernel tests without a GPU) proves a kernel's arithmetic, not that a
GPU compiler accepts it, nor what it costs. Here each launch (triton_support.KernelLaunch: the
specialisation triton's runtime would make) is compiled with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", capability, 32))` down to a cubin, as the runtime would compile it on
that GPU, and the result is measured: registers, spills and stack (ptxas's own report, which
triton prints when `knobs.nvidia.dump_ptxas_log` is on; cuobjdump's resource usage where that
log is missing), shared memory against the target's per-block limit, tensor-core instructions
where the kernel has a tt.dot on 16-bit inputs.

How it runs, and why:
* every compile runs in a worker process (`jobs` of them, spawned: a clean triton with
  TRITON_INTERPRET=0, whatever the caller's process uses) that re-imports the kernel's module,
  so the JITFunction compiled is the real one, not an interpreter wrapper;
* each compile gets a fresh, empty TRITON_CACHE_DIR (under one temporary directory per run,
  removed afterwards): a cache hit would hide a failure that the cached binary predates, and
  it also skips ptxas, losing its log;
* a compile that runs past `timeout` seconds is killed and reported as a failure (ptxas can
  take many minutes on large tiles), and a compiler that crashes its process is one too;
* results come back in the order of the input, whatever order the workers finish in.

This module does not import triton at import time (nor does importing archspec).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable

import torch

from .triton_support import KernelLaunch

DEFAULT_TIMEOUT = 300.0  # seconds per compile; today's slowest passing kernels take well under


@dataclass(frozen=True)
class Target:
    """A GPU architecture to compile for. `shared_limit`: the most shared memory (bytes) one
    block may use there (the opt-in maximum; a kernel needing more cannot launch)."""

    name: str          # "sm_80"
    capability: int    # 80
    shared_limit: int  # bytes


# Per-block opt-in shared memory: 163 KB on compute capability 8.0 and 227 KB on 9.0 (CUDA
# reserves 1 KB of the SM's 164 / 228 KB per block). Sources: NVIDIA Ampere GPU Architecture
# Tuning Guide, 1.4.2.3 "Unified Shared Memory/L1/Texture Cache"
# (https://docs.nvidia.com/cuda/ampere-tuning-guide/index.html), and the Hopper Tuning Guide,
# "Unified Shared Memory/L1/Texture Cache" (https://docs.nvidia.com/cuda/hopper-tuning-guide/),
# as in the CUDA C++ Programming Guide's table of technical specifications per compute capability.
TARGETS = {
    "sm_80": Target("sm_80", 80, 163 * 1024),  # 166912: A100
    "sm_90": Target("sm_90", 90, 227 * 1024),  # 232448: H100, H200
}


def target_of(device: torch.device | str) -> Target:
    """The Target of a real CUDA device: its capability, and its per-block opt-in shared memory
    as the driver reports it (the table's figure for known capabilities where torch lacks it)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"target_of needs a CUDA device, got '{device}'")
    props = torch.cuda.get_device_properties(device)
    capability = props.major * 10 + props.minor
    name = f"sm_{capability}"
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if not limit:
        known = TARGETS.get(name)
        if known is None:
            raise ValueError(f"{device}: torch does not report the shared memory limit of {name}; "
                             f"known targets: {', '.join(TARGETS)}")
        limit = known.shared_limit
    return Target(name, capability, int(limit))


def parse_targets(text: str) -> list[Target]:
    """"sm_80,sm_90" (or "80,90") -> Targets; ValueError naming the known ones."""
    targets = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = part if part.startswith("sm_") else f"sm_{part}"
        if name not in TARGETS:
            raise ValueError(f"unknown target '{part}' (known: {', '.join(TARGETS)})")
        if TARGETS[name] not in targets:
            targets.append(TARGETS[name])
    if not targets:
        raise ValueError(f"no target given (known: {', '.join(TARGETS)})")
    return targets


@dataclass
class CompileResult:
    """One launch compiled for one target. `error` is the compiler's message when it failed
    (or why the compile was stopped); the figures are None where not measured."""

    kernel: str
    config: str
    target: str
    compiled: bool
    error: str | None = None
    registers: int | None = None
    spill_bytes: int | None = None    # spill stores + loads (ptxas)
    stack_bytes: int | None = None    # stack frame (ptxas; cuobjdump STACK)
    shared_bytes: int | None = None   # metadata.shared: what the launch asks for
    shared_limit: int | None = None
    shared_ok: bool | None = None
    tensor_cores: bool | None = None  # None: no tt.dot on 16-bit inputs, so not applicable
    compile_s: float | None = None
    dtype: str = "-"

    @property
    def ok(self) -> bool:
        """Passes the gate: compiled, within shared memory, no spill, tensor cores where due."""
        return (self.compiled and bool(self.shared_ok) and self.spill_bytes == 0
                and self.tensor_cores is not False)

    @property
    def problems(self) -> list[str]:
        """Why it does not pass, in words (empty when ok)."""
        if not self.compiled:
            return [f"does not compile: {self.error}"]
        out = []
        if not self.shared_ok:
            out.append(f"needs {self.shared_bytes} bytes of shared memory, over {self.target}'s "
                       f"{self.shared_limit}")
        if self.spill_bytes is None:
            out.append("spills unknown (no ptxas log and no cuobjdump figures)")
        elif self.spill_bytes:
            out.append(f"spills {self.spill_bytes} bytes to local memory "
                       f"({self.registers} registers)")
        if self.tensor_cores is False:
            out.append("its tl.dot on 16-bit inputs compiled without tensor-core (mma) instructions")
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "problems": self.problems}


# --- parsing the compiler's reports --------------------------------------------------------------

_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_CUOBJDUMP = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def parse_ptxas_log(text: str) -> dict:
    """ptxas -v's report (every function of the module summed; registers: the most used):
    {"registers", "spill_bytes", "stack_bytes"}; {} when the text has none."""
    frames = [tuple(map(int, m)) for m in _PTXAS_FRAME.findall(text)]
    regs = [int(r) for r in _PTXAS_REGS.findall(text)]
    if not frames:
        return {}
    return {"registers": max(regs) if regs else None,
            "spill_bytes": sum(s + l for _, s, l in frames),
            "stack_bytes": sum(f for f, _, _ in frames)}


def parse_cuobjdump(text: str) -> dict:
    """cuobjdump --dump-resource-usage: {"registers", "stack_bytes", "static_shared", "local_bytes"}
    of the kernel (the first function listed), {} when the text has none."""
    m = _CUOBJDUMP.search(text)
    if not m:
        return {}
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack_bytes": stack, "static_shared": shared, "local_bytes": local}


def trim_error(text: str, limit: int = 2000) -> str:
    """The useful part of a compiler's message: without ptxas's repro command and the PTX it
    dumps, at most `limit` characters (its start and its end, where the cause is)."""
    text = re.sub(r"Repro command:.*", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if len(text) > limit:
        text = text[: limit // 2] + "\n  [...]\n" + text[-limit // 2:]
    return text


# --- one compile (in a worker process) -------------------------------------------------------------

def _task(launch: KernelLaunch, target: Target) -> dict:
    """What a worker needs to compile `launch` for `target`: plain data, the kernel by module."""
    fn = getattr(launch.fn, "fn", None)
    if fn is None:
        raise ValueError(f"{launch.kernel}: the launch has no kernel function to compile")
    return {"kernel": launch.kernel, "config": launch.config, "dtype": launch.dtype,
            "module": fn.__module__, "name": fn.__name__, "file": _source_file(fn),
            "signature": launch.signature, "divisible": launch.divisible_by_16,
            "constexprs": launch.constexprs, "num_warps": launch.num_warps,
            "num_stages": launch.num_stages, "target": asdict(target)}


def _source_file(fn) -> str | None:
    import inspect
    try:
        return inspect.getsourcefile(fn)
    except TypeError:
        return None


def _jit_function(task: dict):
    """The kernel's JITFunction, imported in this (non-interpreting) process: by module name,
    else from its source file (a kernel defined in a test module, say)."""
    try:
        module = importlib.import_module(task["module"])
    except ImportError:
        if not task["file"]:
            raise
        spec = importlib.util.spec_from_file_location(f"_archspec_gate_{task['name']}", task["file"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return getattr(module, task["name"])


def _compile_args(fn, task: dict):
    """ASTSource's signature, constexprs and attrs, keyed as JITFunction._pack_args keys them:
    every parameter by name in the signature ("constexpr" for the constants), constexprs and
    attributes by their path (index,); tt.divisibility 16 for what the launch specialised so."""
    names = [p.name for p in fn.params]
    types, consts = dict(task["signature"]), dict(task["constexprs"])
    missing = [n for n in names if n not in types and n not in consts]
    if missing:
        raise ValueError(f"{task['kernel']}: the launch gives no value for {missing}")
    signature = {n: "constexpr" if n in consts else types[n] for n in names}
    constexprs = {(i,): consts[n] for i, n in enumerate(names) if n in consts}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in task["divisible"]}
    return signature, constexprs, attrs


@contextlib.contextmanager
def _captured_output(path: str):
    """Python's stdout (where triton prints ptxas's log) into a buffer, and the process's C-level
    stdout and stderr (MLIR's diagnostics) into `path`; yields the buffer."""
    buf = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def compile_task(task: dict, workdir: str) -> dict:
    """Compile one task in this process (TRITON_INTERPRET must be off) with its own empty cache
    under `workdir`; the CompileResult's fields as a dict. Compiler errors are results."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = Target(**task["target"])
    result = {"kernel": task["kernel"], "config": task["config"], "target": target.name,
              "compiled": False, "shared_limit": target.shared_limit, "dtype": task["dtype"]}
    cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)
    triton.knobs.cache.dir = cache  # empty: no hit can hide a failure or skip ptxas's log
    triton.knobs.nvidia.dump_ptxas_log = True
    log_path = os.path.join(workdir, f"log-{os.getpid()}.txt")
    start = time.perf_counter()
    try:
        fn = _jit_function(task)
        signature, constexprs, attrs = _compile_args(fn, task)
        start = time.perf_counter()  # the compile alone, not the kernel module's import
        with _captured_output(log_path) as buf:
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                                    target=GPUTarget("cuda", target.capability, 32),
                                    options={"num_warps": task["num_warps"],
                                             "num_stages": task["num_stages"]})
    except Exception as e:  # the compiler's verdict, not ours to raise
        result["error"] = trim_error(f"{type(e).__name__}: {e}")
        result["compile_s"] = round(time.perf_counter() - start, 2)
        return result
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result["compile_s"] = round(time.perf_counter() - start, 2)
    log = buf.getvalue() + _read(log_path)
    result.update(_measure(kernel, log, workdir, task["dtype"], target))
    return result


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _measure(kernel, log: str, workdir: str, dtype: str, target: Target) -> dict:
    """Registers, spills, stack (ptxas's log; else cuobjdump), shared memory, tensor cores."""
    usage = _cuobjdump(kernel.asm["cubin"], workdir)
    ptxas = parse_ptxas_log(log)
    out = {"compiled": True, "shared_bytes": int(kernel.metadata.shared)}
    out["shared_ok"] = out["shared_bytes"] <= target.shared_limit
    out["registers"] = ptxas.get("registers") or usage.get("registers")
    if ptxas:
        out["spill_bytes"], out["stack_bytes"] = ptxas["spill_bytes"], ptxas["stack_bytes"]
    elif usage:  # no log: local memory and stack are what spills would occupy
        out["spill_bytes"] = usage["local_bytes"] + usage["stack_bytes"]
        out["stack_bytes"] = usage["stack_bytes"]
    out["tensor_cores"] = tensor_cores(kernel.asm.get("ttir", ""), kernel.asm.get("ptx", ""), dtype)
    return out


def tensor_cores(ttir: str, ptx: str, dtype: str) -> bool | None:
    """For a kernel with a tt.dot and 16-bit inputs: whether its PTX has mma / wgmma
    instructions (a dot that fell back to FMAs is slow); None otherwise."""
    if "tt.dot" not in ttir or dtype not in ("bf16", "fp16"):
        return None
    return re.search(r"\b(wgmma|mma)\.", ptx) is not None


def _cuobjdump(cubin: bytes, workdir: str) -> dict:
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    path = os.path.join(workdir, f"kernel-{os.getpid()}.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    finally:
        os.unlink(path)
    return parse_cuobjdump(out)


def _worker_main(task_fd: int, result_fd: int, workdir: str) -> None:
    """A compile worker (`python -c` started by _Pool): TRITON_INTERPRET off before triton is
    first imported here, the parent's sys.path, then one task per message until the parent
    closes the pipe."""
    from multiprocessing.connection import Connection
    os.environ["TRITON_INTERPRET"] = "0"
    # the runtime's default today (fused multiply-add on), set so triton 3.9 stops warning
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    tasks, results = Connection(task_fd, writable=False), Connection(result_fd, readable=False)
    sys.path[:0] = [p for p in tasks.recv() if p not in sys.path]
    import triton.compiler  # noqa: F401  (loaded once, not inside the first compile's time)
    while True:
        try:
            task = tasks.recv()
        except EOFError:
            return
        results.send(compile_task(task, workdir))


# --- many compiles, in parallel ----------------------------------------------------------------------

def compile_launch(launch: KernelLaunch, target: Target, timeout: float = DEFAULT_TIMEOUT) -> CompileResult:
    """Compile one launch for one target (in a worker process, with a fresh cache)."""
    return compile_launches([(launch, target)], jobs=1, timeout=timeout)[0]


def compile_launches(pairs: Iterable[tuple[KernelLaunch, Target]], jobs: int | None = None,
                     timeout: float = DEFAULT_TIMEOUT,
                     progress: Callable[[int, int, CompileResult], None] | None = None
                     ) -> list[CompileResult]:
    """Compile every (launch, target) in `jobs` worker processes (default: the CPU count), each
    compile limited to `timeout` seconds; results in the order of `pairs`. `progress(done,
    total, result)` is called as each one finishes."""
    tasks = [_task(launch, target) for launch, target in pairs]
    if not tasks:
        return []
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    workdir = tempfile.mkdtemp(prefix="archspec-kernels-")
    try:
        raw = _Pool(jobs, workdir, timeout).run(tasks, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return raw


class _Pool:
    """Worker processes fed one task at a time, so that a compile past its time can be killed
    (with its worker, then replaced) without losing the others."""

    def __init__(self, jobs: int, workdir: str, timeout: float):
        self.jobs, self.workdir, self.timeout = jobs, workdir, timeout
        self.pipes: dict = {}  # a worker's result connection -> its task connection
        self.busy: dict = {}  # result connection -> (process, task index, deadline, start)
        self.idle: list = []  # (process, connection)

    def run(self, tasks: list[dict], progress) -> list[CompileResult]:
        results: list[CompileResult | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        done = 0
        try:
            while pending or self.busy:
                while pending and len(self.busy) < self.jobs:
                    self._give(pending.pop(0), tasks)
                for index, result in self._collect(tasks):
                    results[index] = result
                    done += 1
                    if progress:
                        progress(done, len(tasks), result)
        finally:
            self._close()
        return results

    def _give(self, index: int, tasks: list[dict]) -> None:
        proc, conn = self.idle.pop() if self.idle else self._start()
        self.pipes[conn].send(tasks[index])
        now = time.monotonic()
        self.busy[conn] = (proc, index, now + self.timeout, now)

    def _start(self):
        """A worker process: a fresh interpreter (not multiprocessing's spawn, which re-runs
        the caller's main script) talking over two pipes it inherits."""
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        code = f"from archspec.ops.aot import _worker_main; _worker_main({task_r}, {result_w}, {self.workdir!r})"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(task_r, result_w),
                                stdin=subprocess.DEVNULL, env=env)
        os.close(task_r)
        os.close(result_w)
        tasks, results = Connection(task_w, readable=False), Connection(result_r, writable=False)
        tasks.send(list(sys.path))
        self.pipes[results] = tasks
        return proc, results

    def _collect(self, tasks: list[dict]):
        """Results that arrived, and failures for compiles that crashed or ran out of time."""
        deadline = min(d for _, _, d, _ in self.busy.values())
        ready = wait(list(self.busy), timeout=max(0.0, deadline - time.monotonic()))
        for conn in ready:
            proc, index, _, start = self.busy.pop(conn)
            try:
                yield index, _result(conn.recv())
                self.idle.append((proc, conn))
            except (EOFError, OSError):
                self._stop(proc, conn)
                yield index, _failure(tasks[index], f"the compiler's process died (exit code "
                                      f"{proc.returncode}) while compiling", time.monotonic() - start)
        now = time.monotonic()
        for conn, (proc, index, deadline, start) in list(self.busy.items()):
            if now >= deadline:
                del self.busy[conn]
                proc.kill()
                self._stop(proc, conn)
                yield index, _failure(tasks[index], f"timed out: the compile ran past {self.timeout:g} s "
                                      "(raise --timeout, or make the kernel's tiles smaller)",
                                      now - start)

    def _stop(self, proc, conn) -> None:
        """Close a worker's pipes (it exits when its task pipe closes); kill it if it lingers."""
        self.pipes.pop(conn).close()
        conn.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _close(self) -> None:
        for proc, conn in self.idle + [(p, c) for c, (p, _, _, _) in self.busy.items()]:
            if conn in self.busy:
                proc.kill()  # interrupted mid-compile
            self._stop(proc, conn)
        self.idle, self.busy = [], {}


def _result(fields: dict) -> CompileResult:
    return CompileResult(**fields)


def _failure(task: dict, error: str, seconds: float) -> CompileResult:
    target = task["target"]
    return CompileResult(task["kernel"], task["config"], target["name"], False, error=error,
                         shared_limit=target["shared_limit"], compile_s=round(seconds, 2),
                         dtype=task["dtype"])
