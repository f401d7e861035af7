#!/usr/bin/env bash
# One call on a 2-GPU machine, two queues in parallel, each run on one card:
#   GPU 0: the default grid with the timing check (the report's run), then a default run with
#          planted regressions gated against it, then the whole test suite with the GPU visible.
#   GPU 1: three default runs back to back, gated pairwise (A/A twice), then the fa2-paper preset.
# Each step has a deadline so the call returns inside the device's 10 minutes; all output is
# packed into $OUT/results.tgz.
set -uo pipefail
OUT=${OUT:-out}
W="$OUT/w"
mkdir -p "$W"
export PYTHONPATH=. PYTHONUNBUFFERED=1
START=$SECONDS
left() { echo $(( ${DEADLINE:-555} - (SECONDS - START) )); }
grid() {  # grid GPU NAME [extra args...]: one default run, saved as $W/NAME.json
    local gpu=$1 name=$2; shift 2
    CUDA_VISIBLE_DEVICES=$gpu timeout --signal=INT "$(left)" python -m pytest benchmarks -q -p no:cacheprovider \
        --benchmark-json="$W/$name.json" "$@" > "$W/$name.log" 2>&1
    echo "[gpu$gpu] $name exit $? after $((SECONDS - START)) s: $(grep -Eo '[0-9]+ passed.*' "$W/$name.log" | tail -1)"
}
gate() {  # gate BASE CUR: the default gate; its table saved
    python -m attnbench.cli gate "$W/$1.json" "$W/$2.json" > "$W/gate-$1-$2.md" 2>&1
    echo "gate $1 -> $2: exit $?"; grep -E "^\|" "$W/gate-$1-$2.md" | head -14
}
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$W/cards.txt"
(
    grid 0 seed --attn-timing-check
    ATTNBENCH_PLANT="slow:torch_softmax:0.15,extra_nxn:weights_only" grid 0 planted
    CUDA_VISIBLE_DEVICES=0 HYPOTHESIS_PROFILE=ci timeout --signal=INT "$(left)" \
        python -m pytest tests -q -p no:cacheprovider -rfE > "$W/tests.log" 2>&1
    echo "[gpu0] tests exit $? after $((SECONDS - START)) s: $(tail -1 "$W/tests.log")"
) &
(
    grid 1 aa1; grid 1 aa2; grid 1 aa3
    grid 1 fa2 --attn-preset fa2-paper --attn-variants sdpa_flash,sdpa_cudnn,triton_flash
) &
wait
gate aa1 aa2; gate aa2 aa3; gate seed planted
python -m attnbench.cli report "$W/seed.json" --plots "$W/plots" -o "$W/report.md"
CUDA_VISIBLE_DEVICES=0 python -m attnbench.cli oom > "$W/oom.md" 2>&1
tar -czf "$OUT/results.tgz" -C "$OUT" w
grep -E "^(FAILED|ERROR)" "$W/tests.log" | head -20
sed -n '/## Comparison/,/## Out of memory/p' "$W/report.md" | head -50
