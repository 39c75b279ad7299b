#!/usr/bin/env bash
# The spread of log Zhat over seeds against K for the lipogram constraint (no token contains
# the letter "e") on the default model, prompt "Once upon a time, there was a", T = 20:
# SMC with the masked proposal (weight = allowed p0 mass), multinomial resampling when the ESS
# falls below K/2. Writes one JSONL run record per (K, seed) into $1 (default lipogram-runs/),
# then summarises with lipogram_spread.py. Usage: docs/data/lipogram_spread.sh [DIR] [SEEDS]
set -euo pipefail
dir="${1:-lipogram-runs}"
seeds="${2:-4}"
tsmc="${TSMC:-cargo run --release --quiet -p tsmc-apps --bin tsmc --}"
mkdir -p "$dir"
for k in 64 128 256 512 1024; do
  for seed in $(seq 1 "$seeds"); do
    out="$dir/k$k-seed$seed.jsonl"
    [ -s "$out" ] && continue
    $tsmc sample -t 20 -k "$k" --constraint no-chars:e --potential none \
      --prompt "Once upon a time, there was a" --seed "$seed" --show 0 --out "$out" | grep -v "^wrote"
  done
done
python3 "$(dirname "$0")/lipogram_spread.py" "$dir"
