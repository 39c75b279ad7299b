"""Summarises lipogram_spread.sh: per K, the mean of log Zhat over seeds with its 95% Student t
interval (df = seeds - 1) and the sample standard deviation across seeds."""
import glob, json, math, os, re, sys
from collections import defaultdict

# Two-sided 97.5% Student t quantiles for small df.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

runs = defaultdict(list)
for path in glob.glob(os.path.join(sys.argv[1], "k*-seed*.jsonl")):
    k = int(re.search(r"k(\d+)-seed", path).group(1))
    with open(path) as f:
        run = [json.loads(l) for l in f if '"type":"run"' in l.replace(" ", "")][-1]
    runs[k].append((run["log_z_hat"], run["timing"]["wall_s"], run["final_ess"]))
print("| K | seeds | mean log Zhat | 95% t interval (df) | sd over seeds | mean wall s |")
print("|---|---|---|---|---|---|")
for k in sorted(runs):
    z = [r[0] for r in runs[k]]
    n = len(z)
    m = sum(z) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in z) / (n - 1)) if n > 1 else float("nan")
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else float("nan")
    wall = sum(r[1] for r in runs[k]) / n
    print(f"| {k} | {n} | {m:.3f} | {m - half:.3f} to {m + half:.3f} (df {n - 1}) | {sd:.3f} | {wall:.0f} |")
