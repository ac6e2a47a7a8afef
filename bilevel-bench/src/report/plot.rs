//! Line plots with a shaded band (median and 20–80% over seeds), as PNG and SVG.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::prelude::*;

/// One method's curve.
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// The abscissae.
    pub x: Vec<f64>,
    /// The median over seeds at each abscissa.
    pub median: Vec<f64>,
    /// The band's lower edge (20th percentile).
    pub low: Vec<f64>,
    /// The band's upper edge (80th percentile).
    pub high: Vec<f64>,
}

const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a TrueType font for plot text once: `BILEVEL_FONT`, else DejaVu Sans.
fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<String> = std::env::var("BILEVEL_FONT")
            .ok()
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(|s| s.to_string()))
            .collect();
        let path = candidates.iter().find(|p| Path::new(p).is_file()).ok_or_else(|| {
            format!("plots need a TrueType font: install DejaVu Sans (Debian: fonts-dejavu-core) or set BILEVEL_FONT; looked at {candidates:?}")
        })?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(path).map_err(|e| format!("{path}: {e}"))?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The first series' colors: Tableau's ten, then seven darker hues ([`color`] goes on past them).
const COLORS: [RGBColor; 17] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
    RGBColor(0, 110, 110),
    RGBColor(85, 107, 47),
    RGBColor(200, 0, 200),
    RGBColor(184, 134, 11),
];

/// The color of series `k`, distinct for every series, so that a comparison of every method
/// (built-in or registered, however many) never gives two the same line: [`COLORS`], then hues
/// spread by the golden angle at a fixed saturation and lightness.
fn color(k: usize) -> RGBColor {
    if let Some(&c) = COLORS.get(k) {
        return c;
    }
    let hue = ((k - COLORS.len()) as f64 * 137.507_764) % 360.0;
    let (lightness, saturation) = (0.42, 0.7);
    let chroma = (1.0 - (2.0 * lightness - 1.0_f64).abs()) * saturation;
    let h = hue / 60.0;
    let x = chroma * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (chroma, x, 0.0),
        1 => (x, chroma, 0.0),
        2 => (0.0, chroma, x),
        3 => (0.0, x, chroma),
        4 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let m = lightness - chroma / 2.0;
    let channel = |v: f64| ((v + m) * 255.0).round() as u8;
    RGBColor(channel(r), channel(g), channel(b))
}

/// An x tick as people write it: iterations and calls as integers ("2000", not "2000.0"),
/// seconds with at most three decimals.
fn tick_text(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else {
        let text = format!("{x:.3}");
        text.trim_end_matches('0').to_string()
    }
}

/// Writes `<stem>.png` and `<stem>.svg`.
pub fn plot(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    ensure_font()?;
    if series.iter().all(|s| s.x.is_empty()) {
        bail!("nothing to plot for {title}");
    }
    let png = stem.with_extension("png");
    draw(
        BitMapBackend::new(&png, (900, 560)).into_drawing_area(),
        title,
        x_label,
        y_label,
        series,
    )
    .with_context(|| format!("{}: cannot draw", png.display()))?;
    let svg = stem.with_extension("svg");
    draw(
        SVGBackend::new(&svg, (900, 560)).into_drawing_area(),
        title,
        x_label,
        y_label,
        series,
    )
    .with_context(|| format!("{}: cannot draw", svg.display()))?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    area.fill(&WHITE).map_err(|e| fail(&e))?;
    let all_x = series.iter().flat_map(|s| s.x.iter().copied());
    let all_y = series
        .iter()
        .flat_map(|s| s.low.iter().chain(&s.high).copied())
        .filter(|v| v.is_finite());
    let (x0, x1) = all_x.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (y0, y1) = all_y.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| tick_text(*x))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    for (k, s) in series.iter().enumerate() {
        let line = color(k);
        let band: Vec<(f64, f64)> =
            s.x.iter()
                .zip(&s.high)
                .map(|(x, y)| (*x, *y))
                .chain(s.x.iter().zip(&s.low).rev().map(|(x, y)| (*x, *y)))
                .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, line.mix(0.18))))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(
                s.x.iter().zip(&s.median).map(|(x, y)| (*x, *y)),
                line.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], line.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    area.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_as_written_by_hand() {
        assert_eq!(tick_text(2000.0), "2000");
        assert_eq!(tick_text(0.0), "0");
        assert_eq!(tick_text(12.5), "12.5");
        assert_eq!(tick_text(0.1 + 0.2), "0.3");
        assert_eq!(tick_text(-3.0), "-3");
    }

    #[test]
    fn every_method_of_a_full_comparison_gets_its_own_color() {
        // Every built-in method and a few dozen registered ones.
        let n = bilevel_optim::methods::METHODS.len() + 40;
        let colors: Vec<RGBColor> = (0..n).map(color).collect();
        for (i, a) in colors.iter().enumerate() {
            for b in &colors[..i] {
                assert_ne!(a, b, "series {i}");
            }
        }
    }
}
