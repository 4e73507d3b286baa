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
# limit leaves the lines of the runs before it. Profiles (jax.profiler
# traces) stay under /tmp; their JSON summaries come back, the raw trace of
# the bf16 training iteration as $OUT/train_bf16.trace.json.gz, and the bf16
# runs' HLO and inference traces as $OUT/bf16_profiles.tar.
set -u -o pipefail
OUT=${OUT:?set OUT to the folder for results.jsonl}
CONFIG=${CONFIG:-configs/default.py}
TRAIN_BATCH=${TRAIN_BATCH:-48}
INFER_BATCH=${INFER_BATCH:-256}
ITERS=${ITERS:-10}
PROFILES=${PROFILES:-/tmp/fit_jax_profiles}
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
  echo "== $name" >&2
  local log=/tmp/fit_jax_$name.stderr
  python3 -m fit_jax.benchmark --config "$CONFIG" --train_batch "$TRAIN_BATCH" \
    --infer_batch "$INFER_BATCH" --iters "$ITERS" "$@" 2> "$log" \
    | grep '^{' | sed "s/^{/{\"run\": \"$name\", /" | tee -a "$OUT/results.jsonl"
  # One log for all runs: at most 8 files come back from a device call.
  { echo "== $name"; cat "$log"; } >> "$OUT/stderr.log"
  tail -n 3 "$log" >&2
}

# 1. The default path, bf16, with a profile: where the time goes.
bench bf16_resize_conv --dtypes bfloat16 --train_variants fused --infer_variants folded \
  --profile_dir "$PROFILES/resize_conv"
# The raw trace of the bf16 training iteration too, for a closer look later
# (files over the 16 MB that come back are skipped).
find "$PROFILES/resize_conv" -name '*.trace.json.gz' -path '*train_*' -size -16M \
  -exec cp {} "$OUT/train_bf16.trace.json.gz" \; 2>/dev/null
# 1b. Inference with jnp.pad's reflect padding (two passes per padding, the
# code the 399 img/s figure ran) against run 1's one-gather padding; seconds.
bench bf16_concatenate_pad --modes infer --dtypes bfloat16 --infer_variants folded \
  --config.model.generator.reflect_pad_ops=concatenate
# 1c. Inference with the RGB convolutions computed on 8 zero-filled channels:
# whether cuDNN's 3-channel 7x7 kernels are slow.
bench bf16_rgb8 --modes infer --dtypes bfloat16 --infer_variants folded \
  --config.model.generator.rgb_channels=8
# 2. Sub-pixel upsampling (same function, 9 % fewer generator FLOPs).
bench bf16_subpixel --dtypes bfloat16 --train_variants fused --infer_variants folded \
  --config.model.generator.upsample=subpixel --profile_dir "$PROFILES/subpixel"
# Both bf16 runs' optimised HLO and inference traces in one file: on any
# machine, profile_summary.summarize_dir(folder, calls=2) redoes a summary, and
# the HLO shows the convolutions' layouts and cuDNN calls as XLA chose them.
(cd "$PROFILES" && find . -name '*.hlo.txt.gz' -o -path '*infer_*' -name '*.trace.json.gz' \
  | tar -cf "$OUT/bf16_profiles.tar" -T -) || echo "no profile archive" >&2
# 3. float32, which must stay available.
bench f32 --dtypes float32 --train_variants fused --infer_variants folded,running
echo "done: $(grep -c . "$OUT/results.jsonl") lines in $OUT/results.jsonl" >&2
