//! Charts as inline SVG (the report's and reproduce's): line charts (x optionally log2) and a particle
//! genealogy.

use std::fmt::Write as _;

/// Escapes text for SVG and HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A line chart with points; x optionally on a log2 scale.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, ml, mr, mt, mb) = (640.0, 320.0, 60.0, 160.0, 30.0, 45.0);
    let tx = |x: f64| if log_x { x.max(1e-12).log2() } else { x };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, y)| (tx(x), y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        // Still an SVG document, so a file written from it opens.
        return format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="640" height="40" font-family="sans-serif" font-size="11"><text x="10" y="25">{}: no data</text></svg>"#,
            esc(title)
        );
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 1.0;
        y1 += 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| ml + (tx(x) - x0) / (x1 - x0) * (w - ml - mr);
    let sy = |y: f64| mt + (y1 - y) / (y1 - y0) * (h - mt - mb);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        ml,
        esc(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{:.3}</text><line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            ml - 4.0,
            sy(y) + 4.0,
            y,
            w - mr,
            sy(y),
            sy(y)
        );
        let xt = x0 + (x1 - x0) * i as f64 / 4.0;
        let label = if log_x {
            format!("{:.0}", xt.exp2())
        } else {
            format!("{xt:.1}")
        };
        let px = ml + (xt - x0) / (x1 - x0) * (w - ml - mr);
        let _ = write!(
            svg,
            r#"<text x="{px}" y="{}" text-anchor="middle">{label}</text>"#,
            h - mb + 14.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        ml + (w - ml - mr) / 2.0,
        h - 8.0,
        esc(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        mt + (h - mt - mb) / 2.0,
        mt + (h - mt - mb) / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .filter(|(x, y)| tx(*x).is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for pt in &path {
            let (a, b) = pt.split_once(',').expect("pair");
            let _ = write!(svg, r#"<circle cx="{a}" cy="{b}" r="3" fill="{c}"/>"#);
        }
        let ly = mt + 14.0 * i as f64 + 8.0;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            w - mr + 8.0,
            w - mr + 24.0,
            w - mr + 28.0,
            ly + 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The genealogy: particles at each step, a line from each particle to its parent; lineages of
/// the final particles drawn dark.
pub fn genealogy(ancestors: &[Vec<usize>], k: usize) -> String {
    let t = ancestors.len() + 1;
    let (w, h) = (640.0, 320.0_f64.max(8.0 * k.min(64) as f64));
    let sx = |s: usize| 40.0 + s as f64 / (t.max(2) - 1) as f64 * (w - 80.0);
    let sy = |p: usize| 20.0 + p as f64 / (k.max(2) - 1) as f64 * (h - 40.0);
    let mut alive = vec![vec![false; k]; t];
    alive[t - 1] = vec![true; k];
    for s in (0..t - 1).rev() {
        for p in 0..k {
            if alive[s + 1][p] {
                alive[s][ancestors[s][p]] = true;
            }
        }
    }
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for s in 0..t - 1 {
        for p in 0..k {
            let a = ancestors[s][p];
            let (c, wd) = if alive[s + 1][p] {
                ("#333", 1.5)
            } else {
                ("#ccc", 0.7)
            };
            let _ = write!(
                svg,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="{wd}"/>"#,
                sx(s),
                sy(a),
                sx(s + 1),
                sy(p)
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="40" y="{}">step 1</text><text x="{}" y="{}" text-anchor="end">step {t}</text></svg>"#,
        h - 4.0,
        w - 40.0,
        h - 4.0
    );
    svg
}
