"""Paired per-task differences against p0 from `tsmc reproduce` records of an infilling task.

usage: python3 paired.py RECORDS.jsonl ...

For each trained sampler and seed: the mean over that seed's conditioning sequences of
G_q - G_p0 (= the difference of KL(sigma||q), the same exact sample s* for both) and of
-(F_q - F_p0) (= the difference of KL(q||sigma); F_q and F_p0 from independent draws), with
the standard error over conditioning sequences (n - 1 degrees of freedom). log Z_c cancels.
"""
import json
import math
import os
import sys


def mean_se(x):
    n = len(x)
    m = sum(x) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))
    return m, sd / math.sqrt(n)


for path in sys.argv[1:]:
    recs = [json.loads(line) for line in open(path)]
    p0 = {r["seed"]: r for r in recs if r["sampler"] == "p0"}
    for r in recs:
        if r["sampler"] == "p0" or r["seed"] not in p0:
            continue
        base = p0[r["seed"]]["tasks"]
        dg = [a["g_q"]["mean"] - b["g_q"]["mean"] for a, b in zip(r["tasks"], base)]
        dkl_q = [-(a["f_q"]["mean"] - b["f_q"]["mean"]) for a, b in zip(r["tasks"], base)]
        (mg, sg), (mf, sf) = mean_se(dg), mean_se(dkl_q)
        print(
            f"{os.path.basename(path)} {r['sampler']} seed {r['seed']}: "
            f"dKL(sigma||q) {mg:+.3f} (se {sg:.3f}), dKL(q||sigma) {mf:+.3f} (se {sf:.3f}), "
            f"{len(dg)} tasks"
        )
