//! Charts for `compare` and `characterize`: grouped bars per scheme and lines over a swept
//! parameter, each written as SVG and PNG (plotters). Text needs a TrueType font: the first of
//! `TESSERA_FONT` and the usual Debian font files that exists (`fonts-dejavu-core` gives one).

use crate::{CliError, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Font files tried in order after `TESSERA_FONT`.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
];

/// Registers a font for chart text once; the error says how to get one.
fn font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("TESSERA_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONTS.iter().map(PathBuf::from))
            .collect();
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                // The registry keeps the bytes for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no TrueType font for the chart text (tried TESSERA_FONT and {}); install one \
             (apt-get install fonts-dejavu-core) or set TESSERA_FONT=/path/to/font.ttf",
            FONTS.join(", ")
        ))
    })
    .clone()
    .map_err(CliError::Usage)
}

fn draw_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> CliError + '_ {
    move |e| CliError::Usage(format!("drawing {}: {e}", path.display()))
}

/// An axis value in short form: 1 k, 20 M, 3 G, 0.001.
fn short(v: &f64) -> String {
    let a = v.abs();
    let (x, suffix) = match a {
        a if a >= 1e9 => (v / 1e9, " G"),
        a if a >= 1e6 => (v / 1e6, " M"),
        a if a >= 1e3 => (v / 1e3, " k"),
        _ => (*v, ""),
    };
    let t = format!("{x:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    format!("{t}{suffix}")
}

/// One named series of values, one per category (bars) or per x value (lines).
pub(crate) struct Series {
    /// Legend text.
    pub name: String,
    /// Values; for lines, `None` leaves a gap (an unstable or missing point).
    pub values: Vec<Option<f64>>,
}

/// Grouped bars: `categories` along x, one bar per series in each group, y on a log scale when
/// `log` (values ≤ 0 are drawn at the floor). Written to `stem.svg` and `stem.png`.
pub(crate) fn bars(
    stem: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
    log: bool,
) -> Result<Vec<PathBuf>> {
    font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let size = (
        (180 + 120 * categories.len().max(1) as u32).clamp(640, 1600),
        480,
    );
    draw_bars(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &svg,
        title,
        y_desc,
        categories,
        series,
        log,
    )?;
    draw_bars(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &png,
        title,
        y_desc,
        categories,
        series,
        log,
    )?;
    Ok(vec![svg, png])
}

/// The positive range of all values, widened to whole decades (log) or from 0 (linear).
fn y_range<'a>(values: impl Iterator<Item = &'a f64>, log: bool) -> (f64, f64) {
    let pos: Vec<f64> = values
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let hi = pos.iter().copied().fold(f64::MIN, f64::max);
    let lo = pos.iter().copied().fold(f64::MAX, f64::min);
    if pos.is_empty() {
        return (if log { 0.1 } else { 0.0 }, 1.0);
    }
    if log {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf((hi * 1.01).log10().ceil()),
        )
    } else {
        (0.0, hi * 1.1)
    }
}

fn draw_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
    log: bool,
) -> Result<()> {
    let e = draw_err(path);
    root.fill(&WHITE).map_err(&e)?;
    let (lo, hi) = y_range(series.iter().flat_map(|s| s.values.iter().flatten()), log);
    let n = categories.len().max(1);
    let x = -0.5f64..(n as f64 - 0.5);
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(90);
    let width = 0.8 / series.len().max(1) as f64;
    let cats = categories.to_vec();
    let label = move |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            cats.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    macro_rules! draw {
        ($chart:expr, $floor:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&label)
                .y_label_formatter(&short)
                .y_desc(y_desc)
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(&e)?;
            for (k, s) in series.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let bars = s.values.iter().enumerate().filter_map(|(i, v)| {
                    let v = (*v)?;
                    let x0 = i as f64 - 0.4 + k as f64 * width;
                    Some(Rectangle::new(
                        [(x0, $floor), (x0 + width * 0.92, v.max($floor))],
                        color.filled(),
                    ))
                });
                chart
                    .draw_series(bars)
                    .map_err(&e)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(&e)?;
        }};
    }
    if log {
        draw!(
            b.build_cartesian_2d(x, (lo..hi).log_scale()).map_err(&e)?,
            lo
        );
    } else {
        draw!(b.build_cartesian_2d(x, lo..hi).map_err(&e)?, lo);
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Lines over x (both axes log): one line per series, gaps where a value is `None`. Written to
/// `stem.svg` and `stem.png`.
pub(crate) fn lines(
    stem: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    xs: &[f64],
    series: &[Series],
) -> Result<Vec<PathBuf>> {
    font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let size = (900, 560);
    draw_lines(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &svg,
        title,
        x_desc,
        y_desc,
        xs,
        series,
    )?;
    draw_lines(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &png,
        title,
        x_desc,
        y_desc,
        xs,
        series,
    )?;
    Ok(vec![svg, png])
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    xs: &[f64],
    series: &[Series],
) -> Result<()> {
    let e = draw_err(path);
    root.fill(&WHITE).map_err(&e)?;
    let (xlo, xhi) = y_range(xs.iter(), true);
    let (ylo, yhi) = y_range(series.iter().flat_map(|s| s.values.iter().flatten()), true);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&short)
        .y_label_formatter(&short)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(&e)?;
    for (k, s) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        // Consecutive defined points form one segment; a gap starts a new one.
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (x, v) in xs.iter().zip(&s.values) {
            match v {
                Some(v) if *v > 0.0 => {
                    if let Some(seg) = segments.last_mut() {
                        seg.push((*x, *v));
                    }
                }
                _ => segments.push(Vec::new()),
            }
        }
        let mut first = true;
        for seg in segments.into_iter().filter(|s| !s.is_empty()) {
            let drawn = chart
                .draw_series(LineSeries::new(seg.clone(), color.stroke_width(2)))
                .map_err(&e)?;
            if first {
                drawn.label(s.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
                first = false;
            }
            chart
                .draw_series(seg.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(&e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}
