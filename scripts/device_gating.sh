#!/usr/bin/env bash
# One call on a 2-GPU machine. GPU 0: the test suite with the GPU visible, the default grid with the
# timing check (the report's run), then a run with planted regressions gated against it.
# GPU 1: three default runs back to back, gated pairwise (A/A twice). Everything lands in $OUT.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT/w"
export PYTHONPATH=. PYTHONUNBUFFERED=1
W="$OUT/w"
grid() {  # grid GPU NAME [extra args...]: one default run, saved as $W/NAME.json
    local gpu=$1 name=$2; shift 2
    CUDA_VISIBLE_DEVICES=$gpu python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$W/$name.json" \
        "$@" > "$W/$name.log" 2>&1
    echo "[gpu$gpu] $name exit $? ($(grep -Eo '[0-9]+ passed.*' "$W/$name.log" | tail -1))"
}
gate() {  # gate BASE CUR: the default gate, table saved
    python -m attnbench.cli gate "$W/$1.json" "$W/$2.json" > "$W/gate-$1-$2.md" 2>&1
    echo "gate $1 -> $2: exit $?"; grep -E "^\| .*(regress|REGRESS)" "$W/gate-$1-$2.md" | head -12
}
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$W/cards.txt"
(
    CUDA_VISIBLE_DEVICES=0 HYPOTHESIS_PROFILE=ci python -m pytest tests -q -p no:cacheprovider > "$W/tests.log" 2>&1
    echo "[gpu0] tests exit $? ($(tail -1 "$W/tests.log"))"
    grid 0 seed --attn-timing-check
    ATTNBENCH_PLANT="slow:torch_softmax:0.15,extra_nxn:weights_only" grid 0 planted
) &
( grid 1 aa1; grid 1 aa2; grid 1 aa3 ) &
wait
gate aa1 aa2; gate aa2 aa3; gate seed planted
python -m attnbench.cli report "$W/seed.json" --plots "$W/plots" -o "$W/report.md"
python -m attnbench.cli oom > "$W/oom.md" 2>&1
tar -czf "$OUT/results.tgz" -C "$OUT" w
grep -E "FAILED|Error" "$W/tests.log" | head -20
sed -n '/## Comparison/,/## Tables/p' "$W/report.md" | head -60
