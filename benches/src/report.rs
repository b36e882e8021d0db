//! The HTML report of `fastdllm bench` and the small SVG code it draws with (no JS, no chart
//! library): horizontal grouped bar charts with an optional per-row reference tick (the roofline
//! floor), a colour-scale legend, and HTML escaping. `fastdllm trace` reuses [`escape`] and
//! [`color_scale`].

use std::fmt::Write as _;

use crate::matrix::{speedups, BenchRecord};

/// Series colours (colour-blind-safe Okabe-Ito palette).
pub const PALETTE: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
];

/// Escapes text for HTML / SVG content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A sequential colour for `t` in [0, 1] (viridis-like, interpolated between five stops).
pub fn color_scale(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 5] = [
        (68., 1., 84.),
        (59., 82., 139.),
        (33., 145., 140.),
        (94., 201., 98.),
        (253., 231., 37.),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// One row of a bar chart: a label, one value per series (`None` = no bar), an optional
/// reference tick.
pub struct BarRow {
    /// Row label (left of the bars).
    pub label: String,
    /// Values per series.
    pub values: Vec<Option<f64>>,
    /// Reference value drawn as a dashed red tick across the row.
    pub marker: Option<f64>,
}

/// A horizontal grouped bar chart as an `<svg>` element.
pub fn bar_chart(
    title: &str,
    unit: &str,
    series: &[&str],
    rows: &[BarRow],
    marker_name: Option<&str>,
) -> String {
    let (label_w, plot_w, right) = (300.0, 560.0, 90.0);
    let bar_h = 12.0;
    let n_series = series.len().max(1) as f64;
    let row_h = bar_h * n_series + 10.0;
    let top = 48.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let width = label_w + plot_w + right;
    let max = rows
        .iter()
        .flat_map(|r| r.values.iter().flatten().copied().chain(r.marker))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let max = if max > 0.0 { max * 1.08 } else { 1.0 };
    let x = |v: f64| label_w + plot_w * (v / max).max(0.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="4" y="16" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Legend.
    let mut lx = label_w;
    for (i, name) in series.iter().enumerate() {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="26" width="10" height="10" fill="{}"/><text x="{}" y="35">{}</text>"#,
            PALETTE[i % PALETTE.len()],
            lx + 14.0,
            escape(name)
        );
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    if let Some(m) = marker_name {
        let _ = write!(
            s,
            r##"<line x1="{lx}" y1="31" x2="{}" y2="31" stroke="#d00" stroke-width="2" stroke-dasharray="4,2"/><text x="{}" y="35">{}</text>"##,
            lx + 16.0,
            lx + 20.0,
            escape(m)
        );
    }
    // Grid and axis.
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let gx = x(v);
        let _ = write!(
            s,
            r##"<line x1="{gx}" y1="{top}" x2="{gx}" y2="{}" stroke="#ddd"/><text x="{gx}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            height - 30.0,
            height - 16.0,
            fmt_num(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        label_w + plot_w / 2.0,
        height - 3.0,
        escape(unit)
    );
    for (ri, row) in rows.iter().enumerate() {
        let y0 = top + row_h * ri as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 6.0,
            y0 + row_h / 2.0 + 3.0,
            escape(&row.label)
        );
        for (si, v) in row.values.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                continue;
            };
            let y = y0 + 4.0 + bar_h * si as f64;
            let _ = write!(
                s,
                r##"<rect x="{label_w}" y="{y}" width="{:.1}" height="{}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{}" fill="#333">{}</text>"##,
                (x(v) - label_w).max(0.5),
                bar_h - 2.0,
                PALETTE[si % PALETTE.len()],
                escape(series.get(si).copied().unwrap_or("")),
                fmt_num(v),
                x(v) + 3.0,
                y + bar_h - 4.0,
                fmt_num(v)
            );
        }
        if let Some(m) = row.marker.filter(|m| m.is_finite()) {
            let _ = write!(
                s,
                r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#d00" stroke-width="2" stroke-dasharray="4,2"><title>{3}</title></line>"##,
                x(m),
                y0 + 1.0,
                y0 + row_h - 3.0,
                fmt_num(m)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A number with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const STEP_KINDS: [&str; 3] = ["full", "prefix_window", "dual_window"];

/// The whole report: header, throughput, speed-up and per-step latency charts, and a table.
pub fn html(records: &[BenchRecord]) -> String {
    let mut s = String::new();
    s.push_str(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>fastdllm bench</title><style>",
    );
    s.push_str("body{font-family:sans-serif;margin:16px;color:#222}table{border-collapse:collapse;font-size:11px}td,th{border:1px solid #ccc;padding:2px 5px;text-align:right}th{background:#f0f0f0}td.l{text-align:left}section{margin-bottom:18px}");
    s.push_str("</style></head><body><h1>fastdllm bench</h1>");
    if let Some(r) = records.first() {
        let _ = write!(
            s,
            "<p>model <b>{}</b> ({} parameters, {}) on <b>{}</b>{}; commit {}; {}. Measured bandwidth {:.1} GB/s, roofline floor (weights read once per forward) {} ms.</p>",
            escape(&r.model),
            fmt_num(r.param_count as f64),
            escape(&r.dtype),
            escape(&r.device),
            r.threads.map(|t| format!(", {t} threads")).unwrap_or_default(),
            escape(r.git_commit.as_deref().unwrap_or("unknown")),
            escape(&r.timestamp),
            r.bandwidth_gb_s,
            fmt_num(r.roofline_floor_ms)
        );
    } else {
        s.push_str("<p>No records.</p>");
    }
    let speed = speedups(records);
    let rows: Vec<BarRow> = records
        .iter()
        .map(|r| BarRow {
            label: r.label(),
            values: vec![Some(r.output_tokens_per_s), Some(r.gen_tokens_per_s)],
            marker: None,
        })
        .collect();
    s.push_str("<section>");
    s.push_str(&bar_chart(
        "Throughput per setting",
        "tokens/s (median wall time)",
        &["output tokens/s (to EOS)", "generated tokens/s"],
        &rows,
        None,
    ));
    s.push_str("</section><section>");
    let rows: Vec<BarRow> = records
        .iter()
        .zip(&speed)
        .map(|(r, sp)| BarRow {
            label: r.label(),
            values: vec![*sp],
            marker: Some(1.0),
        })
        .collect();
    s.push_str(&bar_chart(
        "Speed-up vs the no-cache baseline of the same (prompt, gen, block, rule, batch)",
        "x (ratio of generated tokens/s)",
        &["speed-up"],
        &rows,
        Some("1x"),
    ));
    s.push_str("</section><section>");
    let rows: Vec<BarRow> = records
        .iter()
        .map(|r| BarRow {
            label: r.label(),
            values: STEP_KINDS
                .iter()
                .map(|k| r.step_latency.get(*k).map(|st| st.p50_ms))
                .collect(),
            marker: Some(r.roofline_floor_ms),
        })
        .collect();
    s.push_str(&bar_chart(
        "Per-step forward latency (p50) by step kind vs the roofline floor",
        "ms per forward",
        &STEP_KINDS,
        &rows,
        Some("roofline floor"),
    ));
    s.push_str("</section><h2>All records</h2><table><tr>");
    let heads = [
        "prompt",
        "gen",
        "block",
        "cache",
        "rule",
        "batch",
        "nfe",
        "tok/fwd",
        "out tok/s",
        "gen tok/s",
        "speed-up",
        "wall ms",
        "ms/step",
        "full p50/p90",
        "prefix p50/p90",
        "dual p50/p90",
        "peak MiB",
        "cpu util",
        "capped",
    ];
    for h in heads {
        let _ = write!(s, "<th>{h}</th>");
    }
    s.push_str("</tr>");
    for (r, sp) in records.iter().zip(&speed) {
        let lat = |k: &str| {
            r.step_latency
                .get(k)
                .map(|st| format!("{} / {}", fmt_num(st.p50_ms), fmt_num(st.p90_ms)))
                .unwrap_or_default()
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.prompt_len,
            r.gen_length,
            r.block_length,
            escape(&r.cache),
            escape(&r.rule),
            r.batch,
            r.nfe,
            r.tokens_per_forward,
            fmt_num(r.output_tokens_per_s),
            fmt_num(r.gen_tokens_per_s),
            sp.map(|v| format!("{v:.2}x")).unwrap_or_default(),
            fmt_num(r.wall_ms),
            fmt_num(r.ms_per_step),
            lat("full"),
            lat("prefix_window"),
            lat("dual_window"),
            r.peak_memory_bytes.map(|b| format!("{:.0}", b as f64 / (1u64 << 20) as f64)).unwrap_or_default(),
            r.cpu_utilization.map(|u| format!("{u:.2}")).unwrap_or_default(),
            if r.capped { format!("{} blocks", r.measured_blocks) } else { String::new() }
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a&\"b'>"), "&lt;a&amp;&quot;b&#39;&gt;");
    }

    #[test]
    fn colour_scale_ends() {
        assert_eq!(color_scale(0.0), "#440154");
        assert_eq!(color_scale(1.0), "#fde725");
        assert_eq!(color_scale(f64::NAN), "#440154");
    }

    #[test]
    fn chart_has_one_rect_per_value() {
        let rows = vec![BarRow {
            label: "a".into(),
            values: vec![Some(1.0), None],
            marker: Some(0.5),
        }];
        let svg = bar_chart("t", "u", &["x", "y"], &rows, Some("m"));
        assert_eq!(svg.matches("</title></rect>").count(), 1);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
