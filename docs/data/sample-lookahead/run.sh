#!/usr/bin/env bash
# log Zhat of `tsmc sample` on three infilling tasks, six seeds each: bootstrap SMC at K = 16
# and K = 48 (about the lookahead's time), and the final lookahead at K = 16: top 16 tokens,
# and the likeliest of the top 16 or 32 holding 0.9 of p0's mass (--lookahead-mass 0.9).
# Usage: bash docs/data/sample-lookahead/run.sh TSMC_BINARY > docs/data/sample-lookahead/runs.tsv
set -euo pipefail
tsmc=${1:-tsmc}
printf 'continuation\tsampler\tk\tseed\tlog_z_hat\twall_s\n'
for c in " It was called Ashwood" " a labyrinth of memories." " was standing by his own"; do
  for s in 1 2 3 4 5 6; do
    for cfg in "bootstrap 16" "bootstrap 48" "lookahead 16" "lookahead16-mass0.9 16" "lookahead32-mass0.9 16"; do
      set -- $cfg
      case $1 in
        lookahead) extra=(--lookahead 16) ;;
        lookahead16-mass0.9) extra=(--lookahead 16 --lookahead-mass 0.9) ;;
        lookahead32-mass0.9) extra=(--lookahead 32 --lookahead-mass 0.9) ;;
        *) extra=() ;;
      esac
      line=$("$tsmc" sample --potential "infilling:$c" -t 10 -k "$2" --seed "$s" --show 0 "${extra[@]}" 2>/dev/null)
      lz=$(grep -o 'log Zhat = [-0-9.]*' <<<"$line" | head -1 | awk '{print $4}')
      wall=$(grep -o ': [0-9.]* s =' <<<"$line" | awk '{print $2}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$1" "$2" "$s" "$lz" "$wall"
    done
  done
done
