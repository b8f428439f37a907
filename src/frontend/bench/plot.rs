//! The picture of a sweep (`--plot PATH.svg` or `PATH.png`): latency against
//! achieved throughput, one point per step, for end-to-end latency and time
//! to first token at p50 and p99. Reading it: the curve stays flat while the
//! endpoint has headroom and bends upward where queueing starts — the knee
//! is the concurrency or rate to run at. Points carry their step's label
//! (`c=16`, `20 rps`) because achieved throughput is what the x axis shows,
//! not what was asked for. A subtitle says what was measured (endpoint,
//! model, tokens sent and counted, requests per step), the SLOs given are
//! drawn as dashed lines, and a percentile from fewer than
//! [`MIN_SAMPLES`] requests is drawn hollow, with a note under the chart:
//! the p99 of 8 samples is their maximum, not a tail.
//!
//! One drawing function serves both formats: SVG through plotters' SVG
//! backend (text is left to the viewer's fonts), PNG through [`super::png`].

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::png::Raster;
use super::stats::{Latency, Slo, StepStats, MIN_SAMPLES};
use crate::error::{Error, Result};

/// The picture's size in pixels, and the height of the title and subtitle.
const SIZE: (u32, u32) = (1000, 680);
const HEADER: u32 = 84;

/// What the picture shows besides the steps.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// What was measured, two lines under the title.
    pub subtitle: &'a [String; 2],
    pub slo: &'a Slo,
}

/// The picture formats `--plot` writes, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// The format `path` asks for; None for another extension.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            _ => None,
        }
    }
}

/// Draw `steps` into `path`, as SVG or PNG by its extension (checked by
/// the plan; anything but `.png` is SVG here).
pub fn draw(path: &Path, steps: &[StepStats], labels: Labels) -> Result<()> {
    let fail =
        |e: Box<dyn std::error::Error>| Error::output(path, format!("cannot draw the plot: {e}"));
    match Format::of(path) {
        Some(Format::Png) => {
            let mut raster = Raster::new(SIZE.0, SIZE.1);
            draw_on((&mut raster).into_drawing_area(), steps, labels).map_err(fail)?;
            raster.save(path)
        }
        _ => draw_on(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            steps,
            labels,
        )
        .map_err(fail),
    }
}

/// One line on the chart: its name, which latency and which percentile of
/// it, its colour, and whether its points carry their step's label.
type Series = (
    &'static str,
    fn(&StepStats) -> Option<Latency>,
    fn(&Latency) -> f64,
    RGBColor,
    bool,
);

const E2E: RGBColor = RGBColor(31, 119, 180);
const E2E_TAIL: RGBColor = RGBColor(174, 199, 232);
const TTFT: RGBColor = RGBColor(214, 39, 40);
const TTFT_TAIL: RGBColor = RGBColor(255, 152, 150);

const SERIES: [Series; 4] = [
    ("e2e p50", |s| s.e2e_ms, |l| l.p50, E2E, true),
    ("e2e p99", |s| s.e2e_ms, |l| l.p99, E2E_TAIL, false),
    ("TTFT p50", |s| s.ttft_ms, |l| l.p50, TTFT, true),
    ("TTFT p99", |s| s.ttft_ms, |l| l.p99, TTFT_TAIL, false),
];

fn draw_on<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    steps: &[StepStats],
    labels: Labels,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (width, _) = root.dim_in_pixel();
    let centre = (width / 2) as i32;
    let title = ("sans-serif", 22)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(
        "aiq bench: latency vs achieved throughput",
        (centre, 12),
        title,
    ))?;
    let sub = ("sans-serif", 14)
        .into_font()
        .color(&RGBColor(80, 80, 80))
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, line) in labels.subtitle.iter().enumerate() {
        root.draw(&Text::new(
            line.clone(),
            (centre, 42 + 18 * i as i32),
            sub.clone(),
        ))?;
    }
    let few = few_sample_steps(steps);
    let footer = if few.is_empty() { 0 } else { 28 };
    let (chart_area, note_area) = root
        .margin(HEADER, 0, 0, 0)
        .split_vertically(SIZE.1 - HEADER - footer);
    if !few.is_empty() {
        let note = format!(
            "hollow points: percentiles of fewer than {MIN_SAMPLES} successful requests ({}); rough, not a tail — give more --requests",
            few.join(", ")
        );
        let style = ("sans-serif", 13).into_font().color(&RGBColor(150, 60, 0));
        note_area.draw(&Text::new(note, (70, 4), style))?;
    }

    // Steps in order of achieved throughput, so lines run left to right.
    let mut ordered: Vec<&StepStats> = steps.iter().collect();
    ordered.sort_by(|a, b| achieved(a).total_cmp(&achieved(b)));
    // Room on the right for the legend beside the last point and its label.
    let x_max = ordered
        .iter()
        .map(|s| achieved(s))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.35;
    let slos = [
        ("e2e SLO", labels.slo.e2e_ms, E2E),
        ("TTFT SLO", labels.slo.ttft_ms, TTFT),
    ];
    let y_max = ordered
        .iter()
        .flat_map(|s| {
            SERIES
                .iter()
                .filter_map(move |(_, pick, value, _, _)| pick(s).map(|l| value(&l)))
        })
        .chain(slos.iter().filter_map(|(_, v, _)| *v))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;

    let mut chart = ChartBuilder::on(&chart_area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (requests/s)")
        .y_desc("latency (ms)")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(236, 236, 236))
        .draw()?;
    for (name, slo, color) in slos {
        let Some(slo) = slo else { continue };
        chart.draw_series(DashedLineSeries::new(
            [(0.0, slo), (x_max, slo)],
            8,
            6,
            color.mix(0.6).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(
            EmptyElement::at((0.0, slo))
                + Text::new(
                    format!("{name} {slo} ms"),
                    (8, -17),
                    ("sans-serif", 13).into_font().color(&color),
                ),
        ))?;
    }
    for (name, pick, value, color, annotate) in SERIES {
        let points: Vec<(f64, f64, bool)> = ordered
            .iter()
            .filter_map(|s| pick(s).map(|l| (achieved(s), value(&l), l.samples < MIN_SAMPLES)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(x, y, _)| (*x, *y)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|(x, y, few)| {
            // A hollow point is a percentile of too few samples to trust.
            let style = if *few {
                color.stroke_width(2)
            } else {
                color.filled()
            };
            Circle::new((*x, *y), 4, style)
        }))?;
        if annotate {
            let labels = ordered
                .iter()
                .filter(|s| pick(s).is_some())
                .map(|s| s.load.label());
            chart.draw_series(points.iter().zip(labels).map(|((x, y, _), label)| {
                EmptyElement::at((*x, *y))
                    + Text::new(label, (6, 5), ("sans-serif", 13).into_font().color(&color))
            }))?;
        }
    }
    chart
        // Middle right: the low-load points sit top and bottom left.
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Labels of the steps whose latencies come from fewer than
/// [`MIN_SAMPLES`] requests, with the count: `c=1 (n=8)`.
pub fn few_sample_steps(steps: &[StepStats]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| {
            let n = [s.e2e_ms, s.ttft_ms]
                .into_iter()
                .flatten()
                .map(|l| l.samples)
                .min()?;
            (n < MIN_SAMPLES).then(|| format!("{} n={n}", s.load.label()))
        })
        .collect()
}

/// The x value a step is plotted at: what it achieved, not what it asked.
pub fn achieved(s: &StepStats) -> f64 {
    s.requests_per_sec
}
