#!/usr/bin/env bash
# The GPU evidence in two calls on a 2-GPU machine; each card runs one queue, so every compared pair
# of runs comes from one card, back to back. Each step has a deadline so a call returns inside the
# device's 10 minutes; all output is packed into $OUT/results.tgz (the device returns at most 8 files).
#   bash scripts/device_gating.sh 1   Triton kernels precompiled on every core; then GPU 0: the test suite,
#                                     then the fa2-paper preset; GPU 1: the default grid with
#                                     --attn-timing-check (report, fidelity, memory model, oom)
#   bash scripts/device_gating.sh 2   GPU 0: two default runs (A/A); GPU 1: a default run, then one
#                                     with planted regressions; both pairs gated
#   bash scripts/device_gating.sh 3   precompiled kernels; GPU 0: the test suite; GPU 1: triton_flash's
#                                     fp32 tiles, the README's main job as written (autosave, then
#                                     `attnbench report` of the newest run), then the fa2-paper preset
set -uo pipefail
PART=${1:?usage: device_gating.sh 1|2|3}
OUT=${OUT:-out}
W="$OUT/w"
mkdir -p "$W"
export PYTHONPATH=. PYTHONUNBUFFERED=1
START=$SECONDS
left() { echo $(( ${DEADLINE:-555} - (SECONDS - START) )); }
grid() {  # grid GPU NAME [extra args...]: one run of the suite, saved as $W/NAME.json
    local gpu=$1 name=$2; shift 2
    CUDA_VISIBLE_DEVICES=$gpu timeout --signal=INT "$(left)" python -m pytest benchmarks -q -p no:cacheprovider \
        --benchmark-json="$W/$name.json" "$@" > "$W/$name.log" 2>&1
    echo "[gpu$gpu] $name exit $? after $((SECONDS - START)) s: $(grep -Eo '[0-9]+ passed.*' "$W/$name.log" | tail -1)"
}
gate() {  # gate BASE CUR: the default gate; its table saved
    python -m attnbench.cli gate "$W/$1.json" "$W/$2.json" > "$W/gate-$1-$2.md" 2>&1
    echo "gate $1 -> $2: exit $?"; grep -E "^### attnbench gate" "$W/gate-$1-$2.md"
}
precompile() {  # every Triton kernel the session runs, compiled on all cores into Triton's cache
    python scripts/precompile_triton.py > "$W/precompile.log" 2>&1
    echo "precompile exit $? after $((SECONDS - START)) s: $(tail -1 "$W/precompile.log")"
}
gpu_tests() {  # gpu_tests MARGIN: the test suite on GPU 0, stopped MARGIN s before the deadline
    CUDA_VISIBLE_DEVICES=0 HYPOTHESIS_PROFILE=ci timeout --signal=INT "$(( $(left) - $1 ))" \
        python -m pytest tests -q -p no:cacheprovider -rfE --durations=25 > "$W/tests.log" 2>&1
    echo "[gpu0] tests exit $? after $((SECONDS - START)) s: $(tail -1 "$W/tests.log")"
}
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$W/cards.txt"
if [ "$PART" = 1 ]; then
    precompile
    (
        gpu_tests 130
        grid 0 fa2 --attn-preset fa2-paper --attn-variants sdpa_flash,sdpa_cudnn,triton_flash
    ) &
    grid 1 seed --attn-timing-check --durations=15 &
    wait
    grep -E "^(FAILED|ERROR)" "$W/tests.log" | head -20
    python -m attnbench.cli report "$W/seed.json" --plots "$W/plots" -o "$W/report.md"
    CUDA_VISIBLE_DEVICES=1 python -m attnbench.cli oom > "$W/oom.md" 2>&1
    python -m attnbench.cli report "$W/fa2.json" -o "$W/fa2.md" && sed -n '/## Comparison/,/### Scaling/p' "$W/fa2.md"
    sed -n '/## Comparison/,/## Out of memory/p' "$W/report.md" | head -70
elif [ "$PART" = 3 ]; then
    precompile
    gpu_tests 20 &
    (
        export CUDA_VISIBLE_DEVICES=1
        python scripts/triton_tiles.py --dtype fp32 --head-dims 64,128 --seq-lens 4096,16384 > "$W/tiles.txt" 2>&1
        echo "[gpu1] tiles exit $? after $((SECONDS - START)) s"
        t0=$SECONDS
        timeout --signal=INT "$(left)" pytest benchmarks --benchmark-autosave > "$W/autosave.log" 2>&1
        echo "[gpu1] pytest benchmarks --benchmark-autosave exit $? in $((SECONDS - t0)) s: $(tail -1 "$W/autosave.log")"
        python -m attnbench.cli report > "$W/autosave.md" 2> "$W/autosave-report.err"
        echo "[gpu1] attnbench report (newest run) exit $?: $(head -1 "$W/autosave.md")"
        find .benchmarks -name '*.json' -exec cp {} "$W/autosave.json" \;
        if [ "$(left)" -gt 150 ]; then grid 1 fa2 --attn-preset fa2-paper --attn-variants sdpa_flash,sdpa_cudnn,triton_flash; fi
    ) &
    wait
    grep -E "^(FAILED|ERROR)" "$W/tests.log" | head -20
    cat "$W/tiles.txt"
    sed -n '/## Comparison/,/### Scaling/p' "$W/autosave.md" | head -14
elif [ "$PART" = 2 ]; then
    ( grid 0 aa3; grid 0 aa4 ) &
    ( grid 1 base; ATTNBENCH_PLANT="slow:torch_softmax:0.15,extra_nxn:weights_only" grid 1 planted ) &
    wait
    gate aa3 aa4
    gate base planted
else
    echo "usage: device_gating.sh 1|2|3 (got $PART)" >&2; exit 2
fi
tar -czf "$OUT/results.tgz" -C "$OUT" w
