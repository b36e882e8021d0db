//! One generation drawn as a picture (`fastdllm trace`): every answer position is a cell with its
//! decoded text, coloured by the forward at which it was committed, one line per block (block
//! boundaries drawn), NFE and tokens/step in the caption, the settings in the title.
//!
//! Reference: the decoding animation of the Fast-dLLM paper (arXiv 2505.22618, Fig. 1 / project
//! page), as a still image: colour encodes time instead of animation frames. Self-contained HTML
//! with inline SVG; no JS.

use std::fmt::Write as _;

use crate::svg::{color_scale, escape, html_page, Svg};

/// One answer position.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceCell {
    /// Decoded text of the token (`None` when still masked).
    pub text: Option<String>,
    /// Forward index (of this row) at which the position was committed.
    pub step: Option<usize>,
}

/// What the picture shows.
#[derive(Debug, Clone, PartialEq)]
pub struct TracePicture {
    /// Title line (the settings).
    pub title: String,
    /// Caption lines under the title (NFE, tokens/step, ...).
    pub caption: Vec<String>,
    /// The prompt text, shown above the answer.
    pub prompt: String,
    /// One cell per answer position.
    pub cells: Vec<TraceCell>,
    /// Block length (cells per block).
    pub block_length: usize,
    /// Forwards of the row (the colour scale runs over `0..nfe`).
    pub nfe: usize,
}

const CELL_W: f64 = 46.0;
const CELL_H: f64 = 38.0;
const PER_LINE: usize = 24;

/// How a token's text is shown in a cell: whitespace made visible, at most 7 characters.
fn visible(text: &str) -> String {
    let t: String = text
        .chars()
        .map(|c| match c {
            ' ' => '\u{2423}',
            '\n' => '\u{21b5}',
            '\t' => '\u{21e5}',
            c => c,
        })
        .collect();
    if t.chars().count() > 7 {
        let mut s: String = t.chars().take(6).collect();
        s.push('\u{2026}');
        s
    } else if t.is_empty() {
        "\u{2205}".into()
    } else {
        t
    }
}

/// The self-contained HTML page.
pub fn render(p: &TracePicture) -> String {
    let block = p.block_length.max(1);
    let per_line = block.min(PER_LINE);
    let left = 70.0;
    let top = 70.0;
    let blocks = p.cells.len().div_ceil(block);
    let lines_per_block = block.div_ceil(per_line);
    let block_h = lines_per_block as f64 * CELL_H + 12.0;
    let legend_w = (per_line as f64 * CELL_W).clamp(200.0, 420.0);
    // Wide enough for the cells and for the legend with its "still [MASK]" key.
    let width = (left + per_line as f64 * CELL_W + 30.0).max(left + legend_w + 130.0);
    let height = top + blocks as f64 * block_h + 20.0;
    let last = p.nfe.saturating_sub(1).max(1) as f64;
    let mut svg = Svg::new(width, height, "monospace");
    // Legend: the colour scale over forwards.
    let mut stops = String::from("<defs><linearGradient id=\"scale\" x1=\"0\" x2=\"1\">");
    for i in 0..=10 {
        let t = i as f64 / 10.0;
        let _ = write!(
            stops,
            r#"<stop offset="{t}" stop-color="{}"/>"#,
            color_scale(t)
        );
    }
    stops.push_str("</linearGradient></defs>");
    svg.raw(&stops);
    let sans = r#" font-family="sans-serif""#;
    svg.text(left, 16, sans, "committed at forward");
    let scale = r##" fill="url(#scale)" stroke="#888""##;
    svg.rect((left, 22), (legend_w, 14), scale, None);
    for i in 0..=4 {
        let v = (last * i as f64 / 4.0).round();
        let at = left + legend_w * v / last;
        svg.text(at, 50, r#" text-anchor="middle""#, &v.to_string());
    }
    svg.rect(
        (left + legend_w + 12.0, 22),
        (14, 14),
        r##" fill="#bbb""##,
        None,
    );
    svg.text(left + legend_w + 30.0, 34, sans, "still [MASK]");
    for b in 0..blocks {
        let y0 = top + b as f64 * block_h;
        svg.text(6, y0 + CELL_H / 2.0 + 4.0, sans, &format!("block {b}"));
        for (i, cell) in p.cells.iter().enumerate().skip(b * block).take(block) {
            let k = i - b * block;
            let x = left + (k % per_line) as f64 * CELL_W;
            let y = y0 + (k / per_line) as f64 * CELL_H;
            let (fill, ink) = match cell.step {
                Some(s) => {
                    let t = s as f64 / last;
                    (color_scale(t), if t < 0.55 { "#fff" } else { "#000" })
                }
                None => ("#bbb".to_string(), "#333"),
            };
            let text = cell
                .text
                .as_deref()
                .map(visible)
                .unwrap_or_else(|| "[M]".into());
            let tip = format!(
                "position {i}: {:?}{}",
                cell.text.as_deref().unwrap_or("[MASK]"),
                cell.step
                    .map(|s| format!(", forward {s}"))
                    .unwrap_or_default()
            );
            svg.group(&tip);
            let cell_fill = format!(r##" fill="{fill}" stroke="#fff""##);
            svg.rect((x, y), (CELL_W - 1.0, CELL_H - 1.0), &cell_fill, None);
            let ink_at =
                |size: u32| format!(r#" text-anchor="middle" fill="{ink}" font-size="{size}""#);
            svg.text(x + CELL_W / 2.0, y + 16.0, &ink_at(12), &text);
            let step = cell.step.map(|s| s.to_string()).unwrap_or_default();
            svg.text(x + CELL_W / 2.0, y + 31.0, &ink_at(9), &step);
            svg.end_group();
        }
        // Block boundary.
        svg.rect(
            (left - 2.0, y0 - 2.0),
            (
                per_line as f64 * CELL_W + 3.0,
                lines_per_block as f64 * CELL_H + 3.0,
            ),
            r##" fill="none" stroke="#111" stroke-width="2""##,
            None,
        );
    }
    let svg = svg.finish();
    let mut html = html_page(
        &p.title,
        "p{margin:4px 0}pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}",
    );
    let _ = write!(html, "<h2>{}</h2>", escape(&p.title));
    for c in &p.caption {
        let _ = write!(html, "<p>{}</p>", escape(c));
    }
    let _ = writeln!(html, "<pre>{}</pre>{svg}</body></html>", escape(&p.prompt));
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_cell_and_block() {
        let cells = (0..8)
            .map(|i| TraceCell {
                text: (i != 7).then(|| format!("t{i}")),
                step: (i != 7).then_some(i / 2),
            })
            .collect();
        let p = TracePicture {
            title: "t<".into(),
            caption: vec![],
            prompt: "p".into(),
            cells,
            block_length: 4,
            nfe: 4,
        };
        let html = render(&p);
        assert_eq!(html.matches("<g><title>").count(), 8);
        assert_eq!(html.matches("stroke-width=\"2\"").count(), 2);
        assert!(html.contains("t&lt;") && html.contains("[M]"));
    }

    #[test]
    fn whitespace_is_visible() {
        assert_eq!(visible(" a\n"), "\u{2423}a\u{21b5}");
        assert_eq!(visible("abcdefghij").chars().count(), 7);
    }
}
