#!/usr/bin/env bash
# Trains a packed config on a lent accelerator and leaves what comes back in
# $OUT: the generator as a release (bf16, in parts of at most 15 MiB, with
# its model card), the metrics curve, two sample grids, the log and a
# summary. Always at most 8 files, and always written: the trainer stops
# itself at BUDGET_S (compiles included) with a final checkpoint, and a
# trainer still running at LIMIT_S is killed and released from its last
# checkpoint.
#
# Prepared on the CPU machine, in the repo root (both folders are ignored):
#   python -m fit_jax.pack --config configs/lfw.py --out .gpu_pack
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# The call (the image lacks ml_collections; grain, clu and TensorFlow are
# not needed by a packed config):
#   run(command="bash benchmarks/gpu_train.sh", carry=[".gpu_pack", ".whl"], timeout_s=560)
# Arguments are config overrides; benchmarks/tests/gpu_train_test.py dry-runs this
# script on CPU at tiny size with them.
set -u -o pipefail
OUT=${OUT:?set OUT to the folder for the results}
CONFIG=${CONFIG:-configs/lfw_packed.py}
BUDGET_S=${BUDGET_S:-450}
LIMIT_S=${LIMIT_S:-500}
WORKDIR=${WORKDIR:-/tmp/fit_gpu_train}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fit_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/fit_site${PYTHONPATH:+:$PYTHONPATH}
fi
DEVICE=$(nvidia-smi -L 2>/dev/null | head -1)

timeout -k 10 "$LIMIT_S" "$PY" -m fit_jax.main --config "$CONFIG" --workdir "$WORKDIR" \
  --config.train.time_budget_s="$BUDGET_S" "$@" >"$OUT/train.log" 2>&1
TRAIN_RC=$?
tail -n 25 "$OUT/train.log"

"$PY" -m fit_jax.release --checkpoint "$WORKDIR" --out "$OUT" --mode bfloat16 \
  --max_part_mib 15 2>>"$OUT/train.log" | tee -a "$OUT/train.log"
RELEASE_RC=${PIPESTATUS[0]}
[ -f "$WORKDIR/metrics.jsonl" ] && cp "$WORKDIR/metrics.jsonl" "$OUT/"
GRIDS=("$WORKDIR"/samples/step_*.png)
if [ -e "${GRIDS[0]}" ]; then
  cp "${GRIDS[$(( ${#GRIDS[@]} / 2 ))]}" "$OUT/grid_middle.png"
  cp "${GRIDS[-1]}" "$OUT/grid_last.png"
fi

TRAIN_RC=$TRAIN_RC RELEASE_RC=$RELEASE_RC WALL_S=$(( $(date +%s) - START )) DEVICE="$DEVICE" \
  WORKDIR="$WORKDIR" "$PY" - >"$OUT/summary.json" <<'EOF'
import json, os
workdir = os.environ["WORKDIR"]
summary = {k.lower(): os.environ[k] for k in ("TRAIN_RC", "RELEASE_RC", "WALL_S", "DEVICE")}
try:
  with open(os.path.join(workdir, "runs.jsonl")) as f:
    runs = [json.loads(line) for line in f if line.strip()]
  summary["run"] = {k: v for k, v in runs[-1].items() if k != "config"}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f if line.strip()][-1]
  summary["last_metrics"] = last
except (OSError, IndexError, ValueError) as e:
  summary["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(summary, indent=1))
EOF
cat "$OUT/summary.json"
ls -la "$OUT"
[ "$TRAIN_RC" = 0 ] && [ "$RELEASE_RC" = 0 ]
