//! Inline SVG plots for the console: no script, no library, nothing
//! fetched. Every text in them is a number or escaped.

use std::fmt::Write;

const W: f64 = 600.0;
const H: f64 = 120.0;
const PAD: f64 = 28.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn frame(out: &mut String, label: &str, max: f64, unit: &str) {
    let _ = write!(
        out,
        r#"<svg class="plot" viewBox="0 0 {W} {H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    );
    let _ = write!(
        out,
        r#"<line x1="{PAD}" y1="{}" x2="{W}" y2="{}" class="axis"/><text x="2" y="12" class="tick">{}{}</text><text x="2" y="{}" class="tick">0</text>"#,
        H - 16.0,
        H - 16.0,
        fmt_num(max),
        escape(unit),
        H - 16.0
    );
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Attempts per minute over the last hour, oldest left: `ok[i]` and
/// `failed[i]` are minute `i` ago (0 = this minute), stacked bars.
pub(super) fn per_minute(ok: &[i64; 60], failed: &[i64; 60]) -> String {
    let max = (0..60).map(|i| ok[i] + failed[i]).max().unwrap_or(0).max(1) as f64;
    let mut out = String::new();
    frame(&mut out, "attempts per minute, last hour", max, "/min");
    let plot_h = H - 16.0 - 8.0;
    let bw = (W - PAD) / 60.0;
    for ago in 0..60 {
        let x = PAD + (59 - ago) as f64 * bw;
        let (o, f) = (ok[ago] as f64, failed[ago] as f64);
        let ho = plot_h * o / max;
        let hf = plot_h * f / max;
        let base = H - 16.0;
        if o > 0.0 {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{ho:.1}" class="ok"><title>{ago} min ago: {o} ok</title></rect>"#,
                base - ho,
                bw - 1.0
            );
        }
        if f > 0.0 {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{hf:.1}" class="bad"><title>{ago} min ago: {f} failed</title></rect>"#,
                base - ho - hf,
                bw - 1.0
            );
        }
    }
    let _ = write!(
        out,
        r#"<text x="{PAD}" y="{}" class="tick">60 min ago</text><text x="{}" y="{}" class="tick" text-anchor="end">now</text></svg>"#,
        H - 2.0,
        W - 2.0,
        H - 2.0
    );
    out
}

/// Latency of the latest attempts, oldest left: (ms, answered 2xx).
pub(super) fn latency(points: &[(f64, bool)]) -> String {
    let max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let mut out = String::new();
    frame(&mut out, "latency of the latest attempts", max, " ms");
    let plot_h = H - 16.0 - 8.0;
    let n = points.len().max(2) as f64;
    let step = (W - PAD - 6.0) / (n - 1.0);
    let mut line = String::new();
    for (i, (ms, ok)) in points.iter().enumerate() {
        let x = PAD + 3.0 + i as f64 * step;
        let y = H - 16.0 - plot_h * ms / max;
        let _ = write!(line, "{x:.1},{y:.1} ");
        let _ = write!(
            out,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" class="{}"><title>{} ms</title></circle>"#,
            if *ok { "ok" } else { "bad" },
            fmt_num(*ms)
        );
    }
    let _ = write!(
        out,
        r#"<polyline points="{}" class="line"/><text x="{PAD}" y="{}" class="tick">older</text><text x="{}" y="{}" class="tick" text-anchor="end">latest</text></svg>"#,
        line.trim_end(),
        H - 2.0,
        W - 2.0,
        H - 2.0
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn plots_are_svg_with_a_bar_or_point_per_value() {
        let mut ok = [0i64; 60];
        let mut bad = [0i64; 60];
        ok[0] = 5;
        bad[59] = 2;
        let svg = super::per_minute(&ok, &bad);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 2);
        let svg = super::latency(&[(10.0, true), (250.5, false)]);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("class=\"bad\""));
    }
}
