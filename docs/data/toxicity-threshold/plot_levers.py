"""Plots the one-seed `toxicity-threshold` training curves of docs/training.md (the levers on
CTL with replayed exact positives) as one SVG: ΔKL(q‖σ) and ΔKL(σ‖q) against p0, paired, at
each evaluation, with 95% Student t intervals (df from the stored estimates). Standard library
only:

    python3 docs/data/toxicity-threshold/plot_levers.py > docs/data/toxicity-threshold/levers.svg
"""

import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# (curve file, legend)
SERIES = [
    ("ctl-replay32-bias5e-2-seed0.jsonl", "pool 32, b Adam 5e-2"),
    ("ctl-replay96-bias5e-2-bf16-seed0.jsonl", "pool 96, b Adam 5e-2"),
    ("ctl-replay96-csmc-bias5e-2-bf16-seed0.jsonl", "pool 96, b Adam 5e-2, CSMC positives"),
    ("ctl-replay154-bias5e-2-bf16-seed0.jsonl", "pool 154, b Adam 5e-2"),
    ("ctl-replay154-sgd2-bf16-seed0.jsonl", "pool 154, b SGD 2"),
    ("ctl-replay154-sgd16-bf16-seed0.jsonl", "pool 154, b SGD 16 (clipped)"),
]
COLOURS = ["#999999", "#1f77b4", "#17becf", "#ff7f0e", "#2ca02c", "#d62728"]


def t975(df):
    # Student t quantile at 0.975 by Cornish-Fisher expansion around the normal quantile
    # (accurate to about 1e-3 for df >= 5, enough for error bars).
    z = 1.959964
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def points(path):
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("sampler") != "twisted" or "eval" not in r:
                continue
            e = r["eval"]
            fq, gq = e["f_q_vs_p0"], e["g_q_vs_p0"]
            # ΔKL(q‖σ) = -(F_q - F_q of p0); ΔKL(σ‖q) = G_q - G_q of p0.
            out.append(
                (
                    r["step"],
                    (-fq["mean"], t975(fq["df"]) * fq["se"] if fq["df"] > 0 else 0.0),
                    (gq["mean"], t975(gq["df"]) * gq["se"] if gq["df"] > 0 else 0.0),
                )
            )
    return out


def panel(x0, title, data, which, y_lo, y_hi, w=420, h=300):
    left, top = x0 + 50, 40
    pw, ph = w - 70, h - 80
    sx = lambda step: left + pw * step / 150.0
    sy = lambda y: top + ph * (y_hi - y) / (y_hi - y_lo)
    s = [f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="13">{title}</text>']
    s.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#000"/>')
    y = math.ceil(y_lo)
    while y <= y_hi:
        s.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y)}" y2="{sy(y)}" stroke="#ddd"/>')
        s.append(f'<text x="{left - 6}" y="{sy(y) + 4}" text-anchor="end" font-size="11">{y}</text>')
        y += 1
    s.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(0)}" y2="{sy(0)}" stroke="#000" stroke-dasharray="4 3"/>')
    for step in (0, 50, 100, 150):
        s.append(f'<text x="{sx(step)}" y="{top + ph + 16}" text-anchor="middle" font-size="11">{step}</text>')
    s.append(f'<text x="{left + pw / 2}" y="{top + ph + 34}" text-anchor="middle" font-size="11">update</text>')
    for i, (pts, colour) in enumerate(data):
        off = (i - (len(data) - 1) / 2) * 3.0
        xy = [(sx(p[0]) + off, p[which]) for p in pts]
        path = " ".join(f"{x:.1f},{sy(m):.1f}" for x, (m, _) in xy)
        s.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, (m, half) in xy:
            lo, hi = max(m - half, y_lo), min(m + half, y_hi)
            s.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(hi):.1f}" y2="{sy(lo):.1f}" stroke="{colour}"/>')
            s.append(f'<circle cx="{x:.1f}" cy="{sy(m):.1f}" r="2.5" fill="{colour}"/>')
    return s


def main():
    data = [(points(os.path.join(HERE, f)), c) for (f, _), c in zip(SERIES, COLOURS)]
    width, height = 880, 300 + 20 * len(SERIES) + 30
    s = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/>'
    ]
    s += panel(0, "ΔKL(q‖σ) vs p0 (95% t, df 255)", data, 1, -5, 3)
    s += panel(440, "ΔKL(σ‖q) vs p0 (95% t, df 31)", data, 2, -3, 4)
    for i, ((_, label), c) in enumerate(zip(SERIES, COLOURS)):
        y = 310 + 20 * i
        s.append(f'<line x1="60" x2="90" y1="{y}" y2="{y}" stroke="{c}" stroke-width="2"/>')
        s.append(f'<text x="96" y="{y + 4}" font-size="12">{label}</text>')
    s.append(
        f'<text x="60" y="{310 + 20 * len(SERIES) + 10}" font-size="11">CTL, replayed exact '
        f"positives, embedding head, lr 1e-5, K = 16, one seed (0), held-out exact-seed12.jsonl; "
        f"negative = better than p0</text>"
    )
    s.append("</svg>")
    print("\n".join(s))


if __name__ == "__main__":
    main()
