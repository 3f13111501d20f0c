#!/usr/bin/env bash
# GPU check (issue 11): sets up a python with torch + CUDA, then runs benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                 # everything (under 8 minutes on one H200)
#   bash benchmarks/gpu_check.sh --no-compile    # any argument goes to gpu_check.py
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # outputs there (default ./gpu_check_out)
#
# Python: $PYTHON or python3 if it imports torch with CUDA (then nothing is installed into it);
# the project's own dependencies, if that python lacks them, go into a venv .venv-gpu that sees
# its site-packages. Else .venv-gpu is created (or reused) and gets torch==2.14.1
# torchvision==0.29.1 and `pip install -e ".[test]"`; the registry may be unreachable, in which
# case the script says so and runs with what imports. Outputs: $OUT/gpu_check.log (all of it),
# $OUT/gpu_check.json (every figure and check), per-section logs and results.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
LOG=$OUT/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
TOTAL_S=${GPU_CHECK_TOTAL_S:-470}   # the whole script, setup included
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the package imports even if `pip install -e` fails
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_NET=(--default-timeout 20 --retries 1)

echo "== gpu_check.sh: $(date -u +%FT%TZ) on $(hostname), repo $ROOT, outputs $OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || echo "nvidia-smi: not found"

has_cuda_torch() {  # $1: a python
    [ -n "$1" ] && command -v "$1" >/dev/null 2>&1 && "$1" - <<'EOF' >/dev/null 2>&1
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
}
has_deps() {
    "$1" -c "import mutualnet_video.models, pytorchvideo, fvcore, pytest" >/dev/null 2>&1
}
describe() {
    "$1" -c "import sys, torch; print(sys.executable, 'python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'gpus', torch.cuda.device_count())" 2>&1
}
pip_install() {  # $1: python, rest: pip arguments; timed out after 300 s
    echo "-- $1 -m pip install $*"
    timeout 300 "$1" -m pip install "${PIP_NET[@]}" "${@:2}"
}

PY=""
SETUP=""
for cand in "${PYTHON:-}" python3; do
    if has_cuda_torch "$cand"; then
        if has_deps "$cand"; then
            PY=$(command -v "$cand"); SETUP="used $PY as is: torch with CUDA and the project's dependencies import; installed nothing"
        else
            echo "-- $cand has torch with CUDA but lacks the project's dependencies: venv .venv-gpu on top of it"
            [ -x .venv-gpu/bin/python ] || "$cand" -m venv --system-site-packages .venv-gpu
            if has_cuda_torch .venv-gpu/bin/python && pip_install .venv-gpu/bin/python -e ".[test]"; then
                PY=$ROOT/.venv-gpu/bin/python; SETUP="venv .venv-gpu (system site-packages of $cand: its torch), pip install -e .[test]"
            else
                PY=$(command -v "$cand"); SETUP="used $PY: pip install -e .[test] FAILED (registry unreachable?); missing dependencies will fail their sections"
            fi
        fi
        break
    fi
done
if [ -z "$PY" ]; then
    if [ ! -x .venv-gpu/bin/python ]; then
        echo "-- no python with torch + CUDA on PATH: creating .venv-gpu"
        python3 -m venv .venv-gpu || { echo "FAIL setup: python3 -m venv failed"; exit 1; }
    fi
    VPY=$ROOT/.venv-gpu/bin/python
    if has_cuda_torch "$VPY"; then
        SETUP="reused .venv-gpu (torch with CUDA already there)"
    elif pip_install "$VPY" torch==2.14.1 torchvision==0.29.1 && has_cuda_torch "$VPY"; then
        SETUP="venv .venv-gpu: installed torch==2.14.1 torchvision==0.29.1"
    else
        echo "FAIL setup: no torch with CUDA: none on PATH and pip could not install torch==2.14.1 into .venv-gpu" \
             "(registry unreachable?); $(describe "$VPY" | tail -1)"
        printf '{"setup": "FAIL", "error": "no torch with CUDA and pip could not install it"}\n' > "$OUT/gpu_check.json"
        exit 1
    fi
    if has_deps "$VPY"; then
        SETUP="$SETUP; the project's dependencies were there"
    elif pip_install "$VPY" -e ".[test]"; then
        SETUP="$SETUP; pip install -e .[test]"
    else
        SETUP="$SETUP; pip install -e .[test] FAILED (registry unreachable?): missing dependencies will fail their sections"
    fi
    PY=$VPY
fi
echo "== setup: $SETUP"
echo "== python: $(describe "$PY")"
has_deps "$PY" || echo "WARNING: $PY cannot import mutualnet_video.models / pytorchvideo / fvcore / pytest"

ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( TOTAL_S - ELAPSED - 30 ))   # 30 s for start-up, the summary and margin
[ "$BUDGET" -lt 120 ] && BUDGET=120
echo "== setup took ${ELAPSED} s; sections get ${BUDGET} s in all"
timeout --kill-after=10 $(( BUDGET + 40 )) "$PY" benchmarks/gpu_check.py --out "$OUT" --budget "$BUDGET" "$@"
RC=$?
echo "== gpu_check.sh: exit $RC after $(( $(date +%s) - START )) s; log $LOG, figures $OUT/gpu_check.json"
exit $RC
