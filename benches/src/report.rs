//! The HTML report of `fastdllm bench`: horizontal grouped bar charts with an optional per-row
//! reference tick (the roofline floor), drawn with [`crate::svg`], and a table of all records.

use std::fmt::Write as _;

use crate::matrix::{speedups, BenchRecord};
use crate::svg::{escape, fmt_num, html_page, px1, Svg, PALETTE, TABLE_CSS};

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
    let mut s = Svg::new(width, height, "sans-serif");
    s.title(title);
    // Legend.
    let mut lx = label_w;
    for (i, name) in series.iter().enumerate() {
        let fill = format!(r#" fill="{}""#, PALETTE[i % PALETTE.len()]);
        s.rect((lx, 26), (10, 10), &fill, None);
        s.text(lx + 14.0, 35, "", name);
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    if let Some(m) = marker_name {
        s.line((lx, 31), (lx + 16.0, 31), MARKER, None);
        s.text(lx + 20.0, 35, "", m);
    }
    // Grid and axis.
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let gx = x(v);
        s.line((gx, top), (gx, height - 30.0), r##" stroke="#ddd""##, None);
        s.text(gx, height - 16.0, AXIS_LABEL, &fmt_num(v));
    }
    s.text(
        label_w + plot_w / 2.0,
        height - 3.0,
        r#" text-anchor="middle""#,
        unit,
    );
    for (ri, row) in rows.iter().enumerate() {
        let y0 = top + row_h * ri as f64;
        s.text(
            label_w - 6.0,
            y0 + row_h / 2.0 + 3.0,
            r#" text-anchor="end""#,
            &row.label,
        );
        for (si, v) in row.values.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                continue;
            };
            let y = y0 + 4.0 + bar_h * si as f64;
            let name = series.get(si).copied().unwrap_or("");
            s.rect(
                (label_w, y),
                (px1((x(v) - label_w).max(0.5)), bar_h - 2.0),
                &format!(r#" fill="{}""#, PALETTE[si % PALETTE.len()]),
                Some(&format!("{name}: {}", fmt_num(v))),
            );
            s.text(
                px1(x(v) + 3.0),
                y + bar_h - 4.0,
                r##" fill="#333""##,
                &fmt_num(v),
            );
        }
        if let Some(m) = row.marker.filter(|m| m.is_finite()) {
            let (mx, y1, y2) = (px1(x(m)), y0 + 1.0, y0 + row_h - 3.0);
            s.line((&mx, y1), (&mx, y2), MARKER, Some(&fmt_num(m)));
        }
    }
    s.finish()
}

/// The dashed red reference tick of a bar chart.
const MARKER: &str = r##" stroke="#d00" stroke-width="2" stroke-dasharray="4,2""##;
/// An axis number under a grid line.
const AXIS_LABEL: &str = r##" text-anchor="middle" fill="#555""##;

const STEP_KINDS: [&str; 3] = ["full", "prefix_window", "dual_window"];

/// The whole report: header, throughput, speed-up and per-step latency charts, and a table.
pub fn html(records: &[BenchRecord]) -> String {
    let mut s = html_page(
        "fastdllm bench",
        &format!("{TABLE_CSS}section{{margin-bottom:18px}}"),
    );
    s.push_str("<h1>fastdllm bench</h1>");
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
