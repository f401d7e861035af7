#!/usr/bin/env bash
# One device call: the whole test suite with the GPU visible, the default benchmark grid with the
# timing check, the report with plots, and the OOM analysis. Logs and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
python - <<'PY' | tee "$OUT/card.txt"
import torch, triton
print("card:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| triton", triton.__version__)
PY
HYPOTHESIS_PROFILE=ci python -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -5
python -m pytest benchmarks -q -p no:cacheprovider --benchmark-autosave --benchmark-storage="$OUT/bench" \
    --attn-timing-check 2>&1 > "$OUT/bench.log"; echo "benchmarks exit $?"
tail -25 "$OUT/bench.log"
run=$(ls -t "$OUT"/bench/*/*.json | head -1)
cp "$run" "$OUT/run.json"
python -m attnbench.cli report "$OUT/run.json" --plots "$OUT/plots" -o "$OUT/report.md"
python -m attnbench.cli oom | tee "$OUT/oom.md" | tail -14
sed -n '/## Comparison/,/## Tables/p' "$OUT/report.md"
