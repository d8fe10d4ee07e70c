//! The latency-versus-throughput plot of fan-out results: an SVG with one line per server,
//! deliveries per second across, p99 latency up (both logarithmic).

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Result;
use serde_json::Value;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const MARGIN: f64 = 60.0;
const COLOURS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

/// Renders the sweep steps of `results` (JSON lines written by the fan-out scenario).
pub fn svg(results: &str) -> Result<String> {
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        let step: Value = serde_json::from_str(line)?;
        if step["phase"] != "sweep" {
            continue;
        }
        let (x, y) = (step["deliveries_per_sec"].as_f64().unwrap_or(0.0), step["p99_ms"].as_f64().unwrap_or(0.0));
        if x > 0.0 && y > 0.0 {
            lines.entry(step["target"].as_str().unwrap_or("?").to_owned()).or_default().push((x, y));
        }
    }
    let (x_min, x_max, y_min, y_max) = (100.0_f64, 1_000_000.0_f64, 0.1_f64, 10_000.0_f64);
    let sx = |x: f64| {
        MARGIN + (x.clamp(x_min, x_max).log10() - x_min.log10()) / (x_max / x_min).log10() * (WIDTH - 2.0 * MARGIN)
    };
    let sy = |y: f64| {
        HEIGHT
            - MARGIN
            - (y.clamp(y_min, y_max).log10() - y_min.log10()) / (y_max / y_min).log10() * (HEIGHT - 2.0 * MARGIN)
    };
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    for decade in 2..=6 {
        let x = sx(10f64.powi(decade));
        writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">1e{decade}</text>"##,
            MARGIN,
            HEIGHT - MARGIN,
            HEIGHT - MARGIN + 16.0
        )?;
    }
    for (label, y) in
        [("0.1 ms", 0.1), ("1 ms", 1.0), ("10 ms", 10.0), ("100 ms", 100.0), ("1 s", 1000.0), ("10 s", 10_000.0)]
    {
        let y = sy(y);
        writeln!(
            svg,
            r##"<line x1="{MARGIN}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            WIDTH - MARGIN,
            MARGIN - 6.0,
            y + 4.0
        )?;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">deliveries per second</text>"#,
        WIDTH / 2.0,
        HEIGHT - 14.0
    )?;
    writeln!(
        svg,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">p99 send→deliver latency</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    )?;
    for (i, (target, mut points)) in lines.into_iter().enumerate() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        writeln!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, path.join(" "))?;
        for (x, y) in &points {
            writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, sx(*x), sy(*y))?;
        }
        writeln!(
            svg,
            r#"<text x="{}" y="{}" fill="{colour}">{target}</text>"#,
            MARGIN + 10.0,
            MARGIN + 16.0 * (i as f64 + 1.0)
        )?;
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_per_server_from_sweep_steps_only() {
        let results = concat!(
            r#"{"target":"huddle","phase":"sweep","deliveries_per_sec":1000.0,"p99_ms":2.0}"#,
            "\n",
            r#"{"target":"huddle","phase":"sweep","deliveries_per_sec":10000.0,"p99_ms":5.0}"#,
            "\n",
            r#"{"target":"huddle","phase":"half","deliveries_per_sec":5000.0,"p99_ms":3.0}"#,
            "\n",
            r#"{"target":"socketio","phase":"sweep","deliveries_per_sec":1000.0,"p99_ms":4.0}"#,
            "\n",
        );
        let svg = super::svg(results).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3, "the half step is not plotted");
        assert!(svg.contains(">socketio<") && svg.contains(">huddle<"));
    }
}
