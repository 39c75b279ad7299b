"""Recomputes the 95% intervals of the training curves in docs/data from their stored estimates.

Every estimate in a curve is stored as {"mean", "se", "n"}; the curves were printed with
1.96 SE. This prints, per evaluation record, mean ± t_{0.975, n-1} SE (Student t with n - 1
degrees of freedom) beside the old half-width. Standard library only:

    python3 docs/data/recompute_intervals.py docs/data/infilling-fixed/task1-lr1e-4.jsonl ...

What it cannot recompute: the G_q columns measured on a particle Gibbs chain (infilling-fixed)
treated the chain's 33 correlated states as independent; batch-means errors need the per-state
values, which these curves did not store (`tsmc train --task infilling-fixed` now uses batch
means). Those rows are flagged.
"""

import json
import math
import sys


def betacf(a, b, x):
    # Continued fraction of the regularised incomplete beta (modified Lentz).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        dl = d * c
        h *= dl
        if abs(dl - 1.0) < 1e-15:
            break
    return h


def ibeta(a, b, x):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * betacf(b, a, 1.0 - x) / b


def t_cdf(q, df):
    p = 0.5 * ibeta(df / 2.0, 0.5, df / (df + q * q))
    return 1.0 - p if q > 0 else p


def t95(df):
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < 0.975:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


assert abs(t95(2) - 4.302652729911275) < 1e-9 and abs(t95(7) - 2.364624251592785) < 1e-9

def welch_df(parts):
    # Welch-Satterthwaite degrees of freedom of a sum of independent estimates.
    vs = [(e["se"] ** 2, e["n"] - 1) for e in parts if e["se"] > 0 and e["n"] >= 2]
    if not vs:
        return min(e["n"] for e in parts) - 1
    return sum(v for v, _ in vs) ** 2 / sum(v * v / d for v, d in vs)


# KL estimates stored n = the smallest n of their parts; their df comes from the parts.
COMBINED = {"kl_q_sigma": ("log_z", "f_q"), "kl_sigma_q": ("g_q", "log_z")}

CHAIN_KEYS = {"g_q", "kl_sigma_q", "g_q_minus_p0", "kl_sum_minus_p0", "kl_sum"}

for path in sys.argv[1:]:
    print(f"# {path}")
    chain = "infilling-fixed" in path
    for line in open(path):
        rec = json.loads(line)
        ev = rec.get("eval")
        if not isinstance(ev, dict):
            continue
        cells = []
        for key, e in ev.items():
            if not (isinstance(e, dict) and {"mean", "se", "n"} <= e.keys()):
                continue
            n = e["n"]
            df = n - 1
            if key in COMBINED and all(isinstance(ev.get(k), dict) for k in COMBINED[key]):
                df = welch_df([ev[k] for k in COMBINED[key]])
            t = t95(df) if df >= 1 else float("inf")
            flag = " (chain: iid SE, optimistic)" if chain and key in CHAIN_KEYS else ""
            cells.append(f"{key} {e['mean']:+.2f} ± {t * e['se']:.2f} [t({df:.1f})={t:.3f}; was ± {1.96 * e['se']:.2f}]{flag}")
        print(f"step {rec['step']} {rec.get('sampler', '')}: " + "; ".join(cells))
