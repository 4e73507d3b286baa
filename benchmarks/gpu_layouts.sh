#!/usr/bin/env bash
# Measures the generator's layouts on a GPU, in priority order, as JSON lines,
# and applies generator_layout's rule to them (benchmarks.layout_verdict).
#
# On a GPU machine (repo root; wheels of packages its image lacks,
# ml_collections at least, in .whl/):
#   OUT=/tmp/out bash benchmarks/gpu_layouts.sh     # results in $OUT/results.jsonl
# A dry run of the same script on CPU with tiny sizes (about 3 minutes):
#   OUT=/tmp/gpu_dry CONFIG=configs/tiny.py TRAIN_BATCH=8 INFER_BATCH=8 ITERS=2 \
#     VERDICT_PLATFORM=cpu bash benchmarks/gpu_layouts.sh
#
# Each run is its own process (flags differ). A failed run leaves a line
# {"run", "rc", "error"}, and so does a run that the time budget (BUDGET_S,
# below) stopped or did not start. PROFILE_RUN=<run name> (by default the
# likeliest default, below) adds a profile (jax.profiler trace, ~20-40 s) to
# that run: its JSON summary comes
# back in results.jsonl, the raw training trace as
# $OUT/train_<run>.trace.json.gz, and the HLO and inference trace as
# $OUT/<run>_profiles.tar.
set -u -o pipefail
OUT=${OUT:?set OUT to the folder for results.jsonl}
CONFIG=${CONFIG:-configs/default.py}
TRAIN_BATCH=${TRAIN_BATCH:-48}
INFER_BATCH=${INFER_BATCH:-256}
ITERS=${ITERS:-10}
PROFILES=${PROFILES:-/tmp/fit_jax_profiles}
# The likeliest default is profiled unless PROFILE_RUN says otherwise (empty:
# none), after its timed calls: if it misses a target, its kernels say where
# the time went, without another call.
PROFILE_RUN=${PROFILE_RUN-bf16_space_to_depth4_phase_2x2}
# Which runs, by name. The GPU entry is the 4x4-block, phase_2x2, border
# layout, so `bf16` runs it and the candidates below repeat parts of it:
# name the runs a measurement needs in RUNS.
RUNS=${RUNS:-"bf16 bf16_space_to_depth4_phase_2x2 bf16_space_to_depth4_phase_2x2_border f32_space_to_depth4_phase_2x2 bf16_space_to_depth4"}
# Every run ends within BUDGET_S seconds of the script's start (a machine
# lent for a fixed time), leaving the verdict a few seconds. A run
# that would start with under MIN_RUN_S left is not started, and one still
# running at the budget is stopped; either leaves a failed line that says
# so. The lines of the runs before, and the verdict, always come back.
BUDGET_S=${BUDGET_S:-520}
MIN_RUN_S=${MIN_RUN_S:-30}
mkdir -p "$OUT"
# XLA's autotuning results (cuDNN algorithms per convolution) persist across
# the runs' processes: the variants share most convolutions, so only the
# first run compiles cold (its compile_s is the cold figure; later ones are
# not comparable with it). Only the autotuning: JAX's persistent cache with
# JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=all also turns on XLA's kernel
# cache file, whose reuse of one executable's kernels in another has known
# bugs (on Hopper, Triton kernels without their TMA descriptors:
# openxla/xla#35951); with it, every run died in the discriminator step on
# two H200s (CUDA_ERROR_ILLEGAL_INSTRUCTION or a cuDNN execution failure).
AUTOTUNE_CACHE=${AUTOTUNE_CACHE:-/tmp/fit_jax_autotune}
mkdir -p "$AUTOTUNE_CACHE"
XLA_FLAGS_GIVEN=${XLA_FLAGS:-}
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_per_fusion_autotune_cache_dir=$AUTOTUNE_CACHE"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/devices.txt"

last_error() {  # a log's last Python exception line, else its last line (an XLA abort)
  { grep -E '^[A-Za-z_.]*(Error|Exception)(: |$)' "$1" || grep . "$1"; } | tail -n 1 | cut -c1-400
}

failed_line() {  # run name, rc, error: the line results.jsonl gets for a failed run
  python3 -c 'import json, sys; print(json.dumps({"run": sys.argv[1], "rc": int(sys.argv[2]), "error": sys.argv[3]}))' \
    "$1" "$2" "$3" | tee -a "$OUT/results.jsonl"
}

bench() {  # name, then benchmark flags
  local name=$1
  shift
  case " $RUNS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name" >&2
  local left=$((BUDGET_S - SECONDS))
  if (( left < MIN_RUN_S )); then
    LAST_RC=124
    failed_line "$name$RUN_SUFFIX" 124 "not started: ${left} s left of BUDGET_S=${BUDGET_S}"
    return 0
  fi
  local log=/tmp/fit_jax_$name.stderr profile=()
  if [[ $name == "$PROFILE_RUN" ]]; then profile=(--profile_dir "$PROFILES/$name"); fi
  timeout --kill-after=10 "$left" python3 -m benchmarks.benchmark --config "$CONFIG" \
    --train_batch "$TRAIN_BATCH" --infer_batch "$INFER_BATCH" --iters "$ITERS" "$@" \
    ${profile[@]+"${profile[@]}"} 2> "$log" \
    | grep '^{' | sed "s/^{/{\"run\": \"$name$RUN_SUFFIX\", /" | tee -a "$OUT/results.jsonl"
  local rc=${PIPESTATUS[0]}
  LAST_RC=$rc
  if (( SECONDS >= BUDGET_S )) && [[ $rc == 124 || $rc == 137 ]]; then  # timeout's codes
    local last
    last=$(last_error "$log")
    failed_line "$name$RUN_SUFFIX" "$rc" "stopped at BUDGET_S=${BUDGET_S} s after ${left} s${last:+; log: $last}"
  elif [[ $rc != 0 ]]; then  # a failed run says so in results.jsonl, with its error
    failed_line "$name$RUN_SUFFIX" "$rc" "$(last_error "$log")"
  fi
  # One log for all runs: at most 8 files come back from a device call.
  { echo "== $name"; cat "$log"; } >> "$OUT/stderr.log"
  tail -n 3 "$log" >&2
  if [[ $name == "$PROFILE_RUN" ]]; then
    # The raw trace of the training iteration (if under the 16 MB that come
    # back) and the optimised HLO and inference traces, to summarise again
    # anywhere: profile_summary.summarize_dir(folder, calls=2).
    find "$PROFILES/$name" -name '*.trace.json.gz' -path '*train_*' -size -16M \
      -exec cp {} "$OUT/train_$name.trace.json.gz" \; 2>/dev/null
    (cd "$PROFILES" && find "$name" -name '*.hlo.txt.gz' -o -path '*infer_*' -name '*.trace.json.gz' \
      | tar -cf "$OUT/${name}_profiles.tar" -T -) || echo "no profile archive" >&2
  fi
}

# 1. The default path, bf16.
LAST_RC=0
RUN_SUFFIX=""  # names the XLA flags a fallback below added to later runs
bench bf16 --dtypes bfloat16 --train_variants fused --infer_variants folded
if [[ $LAST_RC != 0 ]]; then
  # Once more with no cache at all; the runs after it keep that setting.
  echo "bf16 failed: again without the autotuning cache" >&2
  export XLA_FLAGS=$XLA_FLAGS_GIVEN
  RUNS="$RUNS bf16_nocache"
  bench bf16_nocache --dtypes bfloat16 --train_variants fused --infer_variants folded
  if [[ $LAST_RC != 0 ]]; then
    # A third try for figures before the diagnosis: XLA's Triton GEMMs off
    # (cuBLAS instead; the discriminator step holds 7 of them). Illegal
    # instructions on Hopper have come from Triton kernels before
    # (openxla/xla#2800, #35951), while cuDNN's are its own tested ones.
    # Command buffers stay on: without them each of the ~2,400 training
    # kernels pays a launch. If it runs, the runs after it keep the flag
    # and the results say so (their run names end in _notriton).
    echo "bf16_nocache failed: again with --xla_gpu_enable_triton_gemm=false" >&2
    export XLA_FLAGS="${XLA_FLAGS_GIVEN:+$XLA_FLAGS_GIVEN }--xla_gpu_enable_triton_gemm=false"
    RUNS="$RUNS bf16_notriton"
    bench bf16_notriton --dtypes bfloat16 --train_variants fused --infer_variants folded
    if [[ $LAST_RC == 0 ]]; then RUN_SUFFIX=_notriton; fi
  fi
  if [[ $LAST_RC != 0 ]]; then
    echo "stopping: the default failed with and without the cache and Triton GEMMs" >&2
    exit 1
  fi
fi
# 2. The candidates for the default. The RGB convolutions on 4x4 pixel
# blocks (48 and 1024 channels at 32x32, 3x3 kernels: the residual
# convolutions' shapes; same traffic in the static H200 program); the
# up-convolutions as one low-resolution convolution per layer with the four
# output phases as channels and 2x2 kernels (phase_2x2; static: -2.5 GB in
# inference, -4.8 GB in training, -9 % and -7 % FLOPs). The 4x4 blocks with
# phase_2x2 first: the current entry. Each alone, and 2x2 blocks (16 and 256
# channels, 4x4 kernels), only when named in RUNS.
bench bf16_space_to_depth4_phase_2x2 --dtypes bfloat16 --train_variants fused \
  --infer_variants folded --config.model.generator.rgb_conv=space_to_depth \
  --config.model.generator.rgb_block=4 --config.model.generator.upsample=phase_2x2
# The same, inference only, with the residual blocks' maps kept padded
# (folded_trunk_padding=border: zero-padded convolutions over the padded
# maps, 13 % more of their FLOPs, and an in-place border rewrite instead of
# a padding pass per convolution; static: -3.2 GB, floor -0.49 ms per
# batch of 256). A short run: inference compiles in seconds.
bench bf16_space_to_depth4_phase_2x2_border --modes infer --dtypes bfloat16 \
  --infer_variants folded --config.model.generator.rgb_conv=space_to_depth \
  --config.model.generator.rgb_block=4 --config.model.generator.upsample=phase_2x2 \
  --config.model.generator.folded_trunk_padding=border
# float32, which must stay available, with the current entry, before the
# ablations: the time budget may stop the last runs.
bench f32_space_to_depth4_phase_2x2 --dtypes float32 --train_variants fused \
  --infer_variants folded --config.model.generator.rgb_conv=space_to_depth \
  --config.model.generator.rgb_block=4 --config.model.generator.upsample=phase_2x2
bench bf16_space_to_depth4 --dtypes bfloat16 --train_variants fused --infer_variants folded \
  --config.model.generator.rgb_conv=space_to_depth --config.model.generator.rgb_block=4
bench bf16_phase_2x2 --dtypes bfloat16 --train_variants fused --infer_variants folded \
  --config.model.generator.upsample=phase_2x2
bench bf16_space_to_depth --dtypes bfloat16 --train_variants fused --infer_variants folded \
  --config.model.generator.rgb_conv=space_to_depth
# 3. float32 with the default, and with the 4x4-block RGB layers, only when
# named in RUNS.
bench f32 --dtypes float32 --train_variants fused --infer_variants folded
bench f32_space_to_depth4 --dtypes float32 --train_variants fused --infer_variants folded \
  --config.model.generator.rgb_conv=space_to_depth --config.model.generator.rgb_block=4
echo "done: $(grep -c . "$OUT/results.jsonl") lines in $OUT/results.jsonl" >&2
# What the lines decide (benchmarks.layout_verdict: generator_layout's rule and
# the speed targets), into the call's output and $OUT/verdict.json. A call
# cut off before this line anyway (a call's timeout_s under BUDGET_S + 20):
# run it on results.jsonl afterwards. A CPU dry
# run compares with the CPU's entry (VERDICT_PLATFORM=cpu).
if python3 -m benchmarks.layout_verdict "$OUT/results.jsonl" "${VERDICT_PLATFORM:-gpu}" \
    > "$OUT/verdict.json"; then
  python3 -c 'import json, sys; v = json.load(open(sys.argv[1])); v.pop("runs"); print(json.dumps(v))' \
    "$OUT/verdict.json" >&2
else
  echo "no verdict (above: why)" >&2
fi
