"""Mean and sd of log Zhat (and the mean wall time) per continuation and sampler in runs.tsv."""
import csv
import statistics as st
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "docs/data/sample-lookahead/runs.tsv"
rows = list(csv.DictReader(open(path), delimiter="\t"))
for c in dict.fromkeys(r["continuation"] for r in rows):
    for cfg in dict.fromkeys((r["sampler"], r["k"]) for r in rows):
        sel = [r for r in rows if r["continuation"] == c and (r["sampler"], r["k"]) == cfg]
        lz = [float(r["log_z_hat"]) for r in sel]
        w = [float(r["wall_s"]) for r in sel]
        print(f"{c!r:28} {cfg[0]:20} K={cfg[1]:2}  mean {st.mean(lz):6.2f} sd {st.stdev(lz):5.2f} | wall {st.mean(w):.2f} s")
