//! SVG plots of the examples' tables: line charts (curves, fronts) and
//! grouped bar charts (one bar per series in each category), laid out as
//! panels on one page.
//!
//! plotters' SVG backend needs no fonts or system libraries, so plots build
//! everywhere the examples do.
//!
//! ```
//! use lastmile_examples::plot::{BarPanel, LinePanel, write_svg};
//! let dir = std::env::temp_dir();
//! let loss = LinePanel::new("training loss", "epoch", "loss")
//!     .series("train", vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)]);
//! let acc = BarPanel::new("accuracy", "accuracy", ["mirrored", "transposed"])
//!     .series("LoRA", vec![0.89, 0.87])
//!     .y_range(0.0, 1.0);
//! write_svg(&dir.join("doc_plot.svg"), &[loss.into(), acc.into()], 2).unwrap();
//! ```

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

/// A named series of `(x, y)` points.
#[derive(Clone, Debug)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Reference lines (one, or two for a band) with one legend label.
#[derive(Clone, Debug)]
struct Guide {
    label: String,
    values: Vec<f64>,
    vertical: bool,
}

/// A line chart: one line (or set of dots) per series, optional reference lines.
#[derive(Clone, Debug)]
pub struct LinePanel {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<Series>,
    dots: bool,
    x_range: Option<(f64, f64)>,
    y_range: Option<(f64, f64)>,
    guides: Vec<Guide>,
    legend_low: bool,
}

impl LinePanel {
    /// An empty chart with a title and axis descriptions.
    pub fn new(
        title: impl Into<String>,
        x_desc: impl Into<String>,
        y_desc: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            series: Vec::new(),
            dots: false,
            x_range: None,
            y_range: None,
            guides: Vec::new(),
            legend_low: false,
        }
    }

    /// Adds a series (non-finite points are skipped when drawing).
    pub fn series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// Draws points as dots instead of joining them with lines.
    pub fn dots(mut self) -> Self {
        self.dots = true;
        self
    }

    /// Fixes the x range (default: the data's range).
    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    /// A dashed vertical reference line at `x`.
    pub fn vline(self, label: impl Into<String>, x: f64) -> Self {
        self.guide(label, vec![x], true)
    }
}

/// A grouped bar chart: categories along x, one bar per series in each, with
/// optional ± error bars and horizontal reference lines.
#[derive(Clone, Debug)]
pub struct BarPanel {
    title: String,
    y_desc: String,
    categories: Vec<String>,
    series: Vec<(String, Vec<f64>, Option<Vec<f64>>)>,
    y_range: Option<(f64, f64)>,
    guides: Vec<Guide>,
    legend_low: bool,
}

impl BarPanel {
    /// An empty chart over `categories`.
    pub fn new<S: Into<String>>(
        title: impl Into<String>,
        y_desc: impl Into<String>,
        categories: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            title: title.into(),
            y_desc: y_desc.into(),
            categories: categories.into_iter().map(Into::into).collect(),
            series: Vec::new(),
            y_range: None,
            guides: Vec::new(),
            legend_low: false,
        }
    }

    /// Adds a series: one value per category.
    pub fn series(mut self, name: impl Into<String>, values: Vec<f64>) -> Self {
        self.series.push((name.into(), values, None));
        self
    }

    /// Adds a series with a ± error (e.g. a standard deviation) per value.
    pub fn series_with_errors(
        mut self,
        name: impl Into<String>,
        values: Vec<f64>,
        errors: Vec<f64>,
    ) -> Self {
        self.series.push((name.into(), values, Some(errors)));
        self
    }
}

/// Builder methods shared by both panel kinds (fields `y_range`, `guides`,
/// `legend_low`).
macro_rules! frame_builders {
    ($panel:ty) => {
        impl $panel {
            /// Fixes the y range (default: the data's range, padded; bars
            /// also include 0).
            pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
                self.y_range = Some((lo, hi));
                self
            }

            /// Puts the legend in the lower right corner (default: upper
            /// right), for data that rise.
            pub fn legend_low(mut self) -> Self {
                self.legend_low = true;
                self
            }

            /// A dashed horizontal reference line at `y`.
            pub fn hline(self, label: impl Into<String>, y: f64) -> Self {
                self.guide(label, vec![y], false)
            }

            /// Two dashed horizontal lines at `lo` and `hi` with one legend label.
            pub fn band(self, label: impl Into<String>, lo: f64, hi: f64) -> Self {
                self.guide(label, vec![lo, hi], false)
            }

            fn guide(mut self, label: impl Into<String>, values: Vec<f64>, vertical: bool) -> Self {
                self.guides.push(Guide {
                    label: label.into(),
                    values,
                    vertical,
                });
                self
            }
        }
    };
}

frame_builders!(LinePanel);
frame_builders!(BarPanel);

/// One panel of a page.
#[derive(Clone, Debug)]
pub enum Panel {
    /// A line chart.
    Lines(LinePanel),
    /// A grouped bar chart.
    Bars(BarPanel),
}

impl From<LinePanel> for Panel {
    fn from(p: LinePanel) -> Self {
        Panel::Lines(p)
    }
}

impl From<BarPanel> for Panel {
    fn from(p: BarPanel) -> Self {
        Panel::Bars(p)
    }
}

/// Panel size in SVG pixels.
const PANEL: (u32, u32) = (620, 420);

/// Writes `panels` to an SVG file at `path`, `columns` panels per row, each
/// 620 × 420 pixels.
///
/// # Errors
/// No panels, zero columns, a bar series whose length differs from the
/// number of categories, or a failure to draw or write the file.
pub fn write_svg(path: &Path, panels: &[Panel], columns: usize) -> Result<()> {
    write_svg_sized(path, panels, columns, PANEL)
}

/// [`write_svg`] with a chosen panel size in pixels (for charts with many bars).
///
/// # Errors
/// As [`write_svg`].
pub fn write_svg_sized(
    path: &Path,
    panels: &[Panel],
    columns: usize,
    panel: (u32, u32),
) -> Result<()> {
    if panels.is_empty() || columns == 0 {
        bail!(
            "plot {}: need at least one panel and one column",
            path.display()
        );
    }
    for p in panels {
        if let Panel::Bars(b) = p {
            for (name, values, errors) in &b.series {
                let bad = values.len() != b.categories.len()
                    || errors.as_ref().is_some_and(|e| e.len() != values.len());
                if bad {
                    bail!(
                        "plot {}: bar series {name:?} has {} values (and errors) for {} categories",
                        path.display(),
                        values.len(),
                        b.categories.len()
                    );
                }
            }
        }
    }
    let columns = columns.min(panels.len());
    let rows = panels.len().div_ceil(columns);
    let size = (panel.0 * columns as u32, panel.1 * rows as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("plotting {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((rows, columns));
    for (panel, area) in panels.iter().zip(&areas) {
        match panel {
            Panel::Lines(p) => draw_lines(p, area).map_err(|e| err(&e))?,
            Panel::Bars(p) => draw_bars(p, area).map_err(|e| err(&e))?,
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// The data range padded by 5 % (and widened when it is a single value).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1.0)
    };
    (lo - pad, hi + pad)
}

fn guide_style(i: usize) -> RGBAColor {
    [BLACK.mix(0.6), RED.mix(0.6), BLUE.mix(0.6)][i % 3]
}

fn draw_lines(p: &LinePanel, area: &DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let all: Vec<(f64, f64)> = p.series.iter().flat_map(finite).collect();
    let vguides = p
        .guides
        .iter()
        .filter(|g| g.vertical)
        .flat_map(|g| g.values.clone());
    let hguides = p
        .guides
        .iter()
        .filter(|g| !g.vertical)
        .flat_map(|g| g.values.clone());
    let (x0, x1) = p
        .x_range
        .unwrap_or_else(|| padded(all.iter().map(|q| q.0).chain(vguides)));
    let (y0, y1) = p
        .y_range
        .unwrap_or_else(|| padded(all.iter().map(|q| q.1).chain(hguides)));
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(&p.x_desc)
        .y_desc(&p.y_desc)
        .draw()?;
    for (i, s) in p.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts = finite(s);
        let anno = if p.dots {
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, color.filled())))?
        } else {
            chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?
        };
        anno.label(s.name.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
        });
    }
    for (i, g) in p.guides.iter().enumerate() {
        let lines = g.values.iter().map(|&v| {
            if g.vertical {
                vec![(v, y0), (v, y1)]
            } else {
                vec![(x0, v), (x1, v)]
            }
        });
        draw_guide(&mut chart, &g.label, guide_style(i), lines)?;
    }
    legend(&mut chart, p.legend_low)
}

fn draw_bars(p: &BarPanel, area: &DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult {
    let n = p.categories.len().max(1);
    let tops = p.series.iter().flat_map(|(_, v, e)| {
        v.iter()
            .enumerate()
            .map(move |(i, x)| x + e.as_ref().map_or(0.0, |e| e[i].abs()))
    });
    let (y0, y1) = p.y_range.unwrap_or_else(|| {
        let guides = p.guides.iter().flat_map(|g| g.values.clone());
        let (lo, hi) = padded(tops.chain([0.0]).chain(guides));
        (lo.min(0.0), hi)
    });
    let categories = p.categories.clone();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), y0..y1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&move |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < categories.len() {
                categories[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(&p.y_desc)
        .draw()?;
    let k = p.series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, (name, values, errors)) in p.series.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let left = |i: usize| i as f64 - 0.4 + j as f64 * width;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, &v)| {
                        Rectangle::new(
                            [(left(i), 0.0f64.max(y0)), (left(i) + width, v)],
                            color.filled(),
                        )
                    }),
            )?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        if let Some(errors) = errors {
            chart.draw_series(values.iter().zip(errors).enumerate().map(|(i, (&v, &e))| {
                let x = left(i) + width / 2.0;
                PathElement::new(
                    vec![(x, v - e.abs()), (x, v + e.abs())],
                    BLACK.stroke_width(2),
                )
            }))?;
        }
    }
    for (i, g) in p.guides.iter().enumerate() {
        let lines = g
            .values
            .iter()
            .map(|&v| vec![(-0.5, v), (n as f64 - 0.5, v)]);
        draw_guide(&mut chart, &g.label, guide_style(i), lines)?;
    }
    legend(&mut chart, p.legend_low)
}

/// Dashed lines sharing one colour and one legend entry.
fn draw_guide<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    label: &str,
    color: RGBAColor,
    lines: impl Iterator<Item = Vec<(f64, f64)>>,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    for (k, line) in lines.enumerate() {
        let anno = chart.draw_series(DashedLineSeries::new(line, 6, 4, color.stroke_width(1)))?;
        if k == 0 {
            anno.label(label.to_owned())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
    }
    Ok(())
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    low: bool,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(if low {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
}
