#!/usr/bin/env bash
# One GPU session's measurements of issue 7, in priority order, as JSON lines.
#
# On the lent GPU machine (repo root; wheels of packages its image lacks,
# ml_collections at least, in .whl/):
#   bash benchmarks/gpu_session.sh            # results in $OUT/results.jsonl
# A dry run of the same script on CPU with tiny sizes (about 3 minutes):
#   OUT=/tmp/gpu_dry CONFIG=configs/tiny.py TRAIN_BATCH=8 INFER_BATCH=8 \
#     bash benchmarks/gpu_session.sh
#
# Each run is its own process (flags differ); a run cut off by the call's
# limit leaves the lines of the runs before it. With PROFILE=1, the default
# run's profile (jax.profiler trace) stays under /tmp; its JSON summary comes
# back, the raw training trace as $OUT/train_bf16.trace.json.gz, and the HLO
# and inference trace as $OUT/bf16_profiles.tar.
set -u -o pipefail
OUT=${OUT:?set OUT to the folder for results.jsonl}
CONFIG=${CONFIG:-configs/default.py}
TRAIN_BATCH=${TRAIN_BATCH:-48}
INFER_BATCH=${INFER_BATCH:-256}
ITERS=${ITERS:-10}
PROFILES=${PROFILES:-/tmp/fit_jax_profiles}
# Which runs, by name. A session has about 15 minutes of device time in all,
# so one call measures variants and a later one what they decided.
RUNS=${RUNS:-"bf16 bf16_space_to_depth f32 bf16_matmul_infer bf16_transposed_infer"}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/devices.txt"

bench() {  # name, then benchmark flags
  local name=$1
  shift
  case " $RUNS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name" >&2
  local log=/tmp/fit_jax_$name.stderr
  python3 -m fit_jax.benchmark --config "$CONFIG" --train_batch "$TRAIN_BATCH" \
    --infer_batch "$INFER_BATCH" --iters "$ITERS" "$@" 2> "$log" \
    | grep '^{' | sed "s/^{/{\"run\": \"$name\", /" | tee -a "$OUT/results.jsonl"
  # One log for all runs: at most 8 files come back from a device call.
  { echo "== $name"; cat "$log"; } >> "$OUT/stderr.log"
  tail -n 3 "$log" >&2
}

# 1. The default path, bf16 (PROFILE=1 adds a profile, ~20 s more).
profile=()
if [[ ${PROFILE:-0} == 1 ]]; then profile=(--profile_dir "$PROFILES/default"); fi
bench bf16 --dtypes bfloat16 --train_variants fused --infer_variants folded ${profile[@]+"${profile[@]}"}
if [[ ${PROFILE:-0} == 1 ]]; then
  # The raw trace of the training iteration (if under the 16 MB that come
  # back) and the optimised HLO and inference traces, to summarise again
  # anywhere: profile_summary.summarize_dir(folder, calls=2).
  find "$PROFILES/default" -name '*.trace.json.gz' -path '*train_*' -size -16M \
    -exec cp {} "$OUT/train_bf16.trace.json.gz" \; 2>/dev/null
  (cd "$PROFILES" && find . -name '*.hlo.txt.gz' -o -path '*infer_*' -name '*.trace.json.gz' \
    | tar -cf "$OUT/bf16_profiles.tar" -T -) || echo "no profile archive" >&2
fi
# 2. The RGB convolutions on 2x2 pixel blocks (12-16 channels instead of 3;
# same traffic in the static H200 program): the candidate for the default.
bench bf16_space_to_depth --dtypes bfloat16 --train_variants fused --infer_variants folded \
  --config.model.generator.rgb_conv=space_to_depth
# 3. float32, which must stay available (not measured since the first port).
bench f32 --dtypes float32 --train_variants fused --infer_variants folded
# 4. Inference A/Bs on the same machine (seconds each): the RGB convolutions
# as matmuls, and the upsampling as one transposed convolution (both slower
# than the default on 2026-11-27).
bench bf16_matmul_infer --modes infer --dtypes bfloat16 --infer_variants folded \
  --config.model.generator.rgb_conv=matmul
bench bf16_transposed_infer --modes infer --dtypes bfloat16 --infer_variants folded \
  --config.model.generator.upsample=transposed
echo "done: $(grep -c . "$OUT/results.jsonl") lines in $OUT/results.jsonl" >&2
