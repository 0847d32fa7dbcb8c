#!/usr/bin/env bash
# The one command a session lent a GPU runs (benchmarks/README.md, "gpu_check.sh"):
#
#   bash benchmarks/gpu_check.sh [--smoke] [--out DIR] [--only check|bench]
#
# Stages, each bounded by `timeout` so that the whole run stays under 8 minutes on an H200:
#   env     20 s  device, driver, torch, triton versions (nvidia-smi when present)
#   deps    30 s  archspec's imports; jsonschema (absent from the GPU image) from the carried
#                 wheels in benchmarks/.fla/wheels, installed offline into a temporary folder
#   check  200 s  benchmarks/check_kernels.py: the kernels against the reference at real sizes,
#                 fp32 and bf16 (~75 kernel configurations to compile, 45 of them linear
#                 attention at K = 256, in 8 processes; then seconds of GPU work)
#   bench  200 s  benchmarks/bench_kernels.py: ceilings, norms vs torch, la_chunk vs fla's
#                 chunk_gated_delta_rule, the MoM layer vs fla's MomAttention
#   summary 20 s  benchmarks/gpu_check_summary.py: gpu_check.json and the table printed last
# Worst case 470 s (CHECK_LIMIT_S / BENCH_LIMIT_S override the two long limits, e.g. for a
# rerun). Nothing is installed from the network (the GPU machine reaches none): fla comes from
# benchmarks/.fla (bench_kernels.py --fetch-fla, carried with the call); without it
# the fla comparisons are recorded as skipped, with the reason, and everything else runs.
#
# Output (4 files): --out DIR, else $OUT when set (the device tool returns it), else
# benchmarks/results/gpu_check_<device>/; --smoke without either writes to a fresh temporary
# folder, never over committed results. Files: gpu_check.log (everything printed),
# check_kernels.json, bench_kernels.json, gpu_check.json (stages, exit codes, the summary).
# --smoke: the same code on the CPU at tiny sizes, Triton kernels in the interpreter (seconds;
# timings mean nothing). Exit status: 0 when every stage passed, else 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SMOKE=""
ONLY=""
OUT_DIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE="--smoke" ;;
    --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
    --only) ONLY="${2:?--only needs check or bench}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$ONLY" in ""|check|bench) ;; *) echo "gpu_check.sh: --only takes check or bench" >&2; exit 2 ;; esac

cd "$ROOT"
if [ -z "$SMOKE" ] && ! "${PYTHON:-python3}" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device here (or torch does not import); on a CPU run it with --smoke" >&2
  exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ -z "$OUT_DIR" ]; then
  if [ -n "$SMOKE" ]; then
    OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_smoke.XXXXXX")"
  else
    tag="$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); from gpu_env import device_tag; print(device_tag())' 2>/dev/null || echo unknown)"
    OUT_DIR="$ROOT/benchmarks/results/gpu_check_$tag"
  fi
fi
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
STAGES="$WORK/stages"
: >"$STAGES"
START=$(date +%s)

# run_stage NAME LIMIT_S COMMAND...: run under timeout, output to the terminal and the log, and
# record "NAME RC SECONDS" (124: timed out); never stops the script.
run_stage() {
  local name="$1" limit="$2" rc=0 t0
  shift 2
  t0=$(date +%s)
  echo "=== $name (limit ${limit}s) ===" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >>"$STAGES"
  [ "$rc" -eq 0 ] || echo "=== $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out')) ===" | tee -a "$LOG"
  return 0
}

env_report() {
  echo "date: $(date -u +%FT%TZ)  host: ${HOSTNAME:-unknown}  out: $OUT_DIR  mode: ${SMOKE:-gpu}"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  else
    echo "nvidia-smi: not present"
  fi
  "$PY" - <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
          "SMs", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1))
EOF
}

# archspec's imports; jsonschema (and its dependencies) from carried wheels where missing
deps() {
  if "$PY" -c "import archspec" 2>/dev/null; then
    echo "archspec imports"
    return 0
  fi
  shopt -s nullglob
  local wheels=("$ROOT"/benchmarks/.fla/wheels/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    "$PY" -c "import archspec" || true
    echo "archspec does not import and benchmarks/.fla/wheels has no wheels: run" \
         "'python benchmarks/bench_kernels.py --fetch-fla' where pip reaches PyPI and carry benchmarks/.fla"
    return 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${wheels[@]}"
  echo "$WORK/site" >"$WORK/site_path"
  PYTHONPATH="$PYTHONPATH:$WORK/site" "$PY" -c "import archspec; print('archspec imports (carried wheels: $WORK/site)')"
}

# timeout runs programs, not shell functions: the two functions run in a child bash
export -f env_report deps
export PY ROOT WORK OUT_DIR SMOKE
run_stage env 20 bash -c env_report
run_stage deps 30 bash -c deps
[ -f "$WORK/site_path" ] && export PYTHONPATH="$PYTHONPATH:$(cat "$WORK/site_path")"
if [ "$(awk '$1 == "deps" {print $2}' "$STAGES")" = "0" ]; then
  # 8 processes on the GPU machine's 16 cores: Triton compiles (~75 configurations) in parallel;
  # 2 in --smoke, which runs the same sharded path on the 2-core CI machine
  [ "$ONLY" = "bench" ] || run_stage check "${CHECK_LIMIT_S:-200}" "$PY" benchmarks/check_kernels.py $SMOKE --jobs "$([ -n "$SMOKE" ] && echo 2 || echo 8)" --out "$OUT_DIR"
  [ "$ONLY" = "check" ] || run_stage bench "${BENCH_LIMIT_S:-200}" "$PY" benchmarks/bench_kernels.py $SMOKE --out "$OUT_DIR"
fi
echo "total $(( $(date +%s) - START ))" >>"$STAGES"
run_stage summary 20 "$PY" benchmarks/gpu_check_summary.py --out "$OUT_DIR" --stages "$STAGES" $SMOKE
# the summary exits 1 when a stage or check failed (it saw them all); a summary that
# could not run counts as a failure too
[ "$(awk '$1 == "summary" {print $2}' "$STAGES")" = "0" ]
