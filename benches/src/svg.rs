//! The small SVG code the reports draw with (no JS, no chart library), written once for the bench
//! report's bar charts ([`crate::report`]), the eval report's line chart ([`crate::eval`]) and the
//! trace picture ([`crate::trace_view`]): a document builder ([`Svg`]: header, text, lines, rects,
//! circles, tooltips), the HTML page they sit in ([`html_page`]), escaping, the series palette,
//! a colour scale and the number format of axes and labels.

use std::fmt::{Display, Write as _};

/// Series colours (colour-blind-safe Okabe-Ito palette).
pub const PALETTE: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
];

/// The style of the reports' tables.
pub const TABLE_CSS: &str = "table{border-collapse:collapse;font-size:11px}td,th{border:1px solid #ccc;padding:2px 5px;text-align:right}th{background:#f0f0f0}td.l{text-align:left}";

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

/// A coordinate written with one decimal.
pub fn px1(v: f64) -> String {
    format!("{v:.1}")
}

/// The start of a self-contained HTML page, up to and including `<body>`: the title (escaped),
/// the reports' base style and `css`.
pub fn html_page(title: &str, css: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>body{{font-family:sans-serif;margin:16px;color:#222}}{css}</style></head><body>",
        escape(title)
    )
}

/// An `<svg>` element being written. Coordinates are anything displayable (numbers as they
/// print, or [`px1`]); `attrs` are further attributes, each with its leading space; text and
/// tooltips are escaped here.
pub struct Svg(String);

impl Svg {
    /// Opens an SVG of `width` x `height` (also its view box), 11px text in `font_family`.
    pub fn new(width: f64, height: f64, font_family: &str) -> Svg {
        Svg(format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{font_family}" font-size="11">"#
        ))
    }

    /// The chart title at the top left, bold and larger.
    pub fn title(&mut self, title: &str) {
        self.text(4, 16, r#" font-size="14" font-weight="bold""#, title);
    }

    /// `<text>` at (`x`, `y`).
    pub fn text(&mut self, x: impl Display, y: impl Display, attrs: &str, text: &str) {
        let _ = write!(
            self.0,
            r#"<text x="{x}" y="{y}"{attrs}>{}</text>"#,
            escape(text)
        );
    }

    /// A `<line>` from (`x1`, `y1`) to (`x2`, `y2`), with a tooltip if `tip`.
    pub fn line(
        &mut self,
        (x1, y1): (impl Display, impl Display),
        (x2, y2): (impl Display, impl Display),
        attrs: &str,
        tip: Option<&str>,
    ) {
        let at: [(&str, &dyn Display); 4] = [("x1", &x1), ("y1", &y1), ("x2", &x2), ("y2", &y2)];
        self.element("line", &at, attrs, tip);
    }

    /// A `<rect>` at (`x`, `y`) of `width` x `height`, with a tooltip if `tip`.
    pub fn rect(
        &mut self,
        (x, y): (impl Display, impl Display),
        (width, height): (impl Display, impl Display),
        attrs: &str,
        tip: Option<&str>,
    ) {
        let at: [(&str, &dyn Display); 4] =
            [("x", &x), ("y", &y), ("width", &width), ("height", &height)];
        self.element("rect", &at, attrs, tip);
    }

    /// A `<circle>` of radius `r` around (`cx`, `cy`), with a tooltip if `tip`.
    pub fn circle(
        &mut self,
        (cx, cy): (impl Display, impl Display),
        r: impl Display,
        attrs: &str,
        tip: Option<&str>,
    ) {
        let at: [(&str, &dyn Display); 3] = [("cx", &cx), ("cy", &cy), ("r", &r)];
        self.element("circle", &at, attrs, tip);
    }

    /// A `<polyline>` through `points` (`"x,y x,y ..."`).
    pub fn polyline(&mut self, points: &str, attrs: &str) {
        let _ = write!(self.0, r#"<polyline points="{points}"{attrs}/>"#);
    }

    /// Opens a `<g>` group whose tooltip is `tip`; [`Svg::end_group`] closes it.
    pub fn group(&mut self, tip: &str) {
        let _ = write!(self.0, "<g><title>{}</title>", escape(tip));
    }

    /// Closes the group of [`Svg::group`].
    pub fn end_group(&mut self) {
        self.0.push_str("</g>");
    }

    /// Markup written as it is (definitions such as gradients).
    pub fn raw(&mut self, markup: &str) {
        self.0.push_str(markup);
    }

    /// Closes the `<svg>` element and returns it.
    pub fn finish(mut self) -> String {
        self.0.push_str("</svg>");
        self.0
    }

    /// `<{name} k="v"...{attrs}/>`, or with a `<title>` child when `tip`.
    fn element(&mut self, name: &str, at: &[(&str, &dyn Display)], attrs: &str, tip: Option<&str>) {
        let _ = write!(self.0, "<{name}");
        for (k, v) in at {
            let _ = write!(self.0, r#" {k}="{v}""#);
        }
        self.0.push_str(attrs);
        match tip {
            None => self.0.push_str("/>"),
            Some(tip) => {
                let _ = write!(self.0, "><title>{}</title></{name}>", escape(tip));
            }
        }
    }
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
    fn elements_and_tooltips() {
        let mut s = Svg::new(100.0, 50.5, "serif");
        s.title("a<b");
        s.rect((1, 2.5), (px1(3.26), 4), r#" fill="red""#, Some("x & y"));
        s.line((0, 0), (1, 1), r#" stroke="blue""#, None);
        s.circle((px1(2.0), 3), 1.5, "", None);
        assert_eq!(
            s.finish(),
            concat!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50.5" viewBox="0 0 100 50.5" font-family="serif" font-size="11">"#,
                r#"<text x="4" y="16" font-size="14" font-weight="bold">a&lt;b</text>"#,
                r#"<rect x="1" y="2.5" width="3.3" height="4" fill="red"><title>x &amp; y</title></rect>"#,
                r#"<line x1="0" y1="0" x2="1" y2="1" stroke="blue"/>"#,
                r#"<circle cx="2.0" cy="3" r="1.5"/>"#,
                "</svg>"
            )
        );
    }
}
