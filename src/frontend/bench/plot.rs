//! The picture of a sweep (`--plot PATH.svg`): latency against achieved
//! throughput, one point per step, for end-to-end latency and time to first
//! token at p50 and p99. Reading it: the curve stays flat while the endpoint
//! has headroom and bends upward where queueing starts — the knee is the
//! concurrency or rate to run at. Points carry their step's label (`c=16`,
//! `20 rps`) because achieved throughput is what the x axis shows, not what
//! was asked for.
//!
//! SVG through plotters' SVG backend: text is left to the viewer's fonts,
//! so drawing needs no font files on this machine.

use std::path::Path;

use plotters::prelude::*;

use super::stats::{Latency, StepStats};
use crate::error::{Error, Result};

/// Draw `steps` into an SVG file at `path`.
pub fn draw(path: &Path, steps: &[StepStats]) -> Result<()> {
    draw_inner(path, steps).map_err(|e| Error::output(path, format!("cannot draw the plot: {e}")))
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

fn draw_inner(
    path: &Path,
    steps: &[StepStats],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let series: [Series; 4] = [
        (
            "e2e p50",
            |s| s.e2e_ms,
            |l| l.p50,
            RGBColor(31, 119, 180),
            true,
        ),
        (
            "e2e p99",
            |s| s.e2e_ms,
            |l| l.p99,
            RGBColor(174, 199, 232),
            false,
        ),
        (
            "TTFT p50",
            |s| s.ttft_ms,
            |l| l.p50,
            RGBColor(214, 39, 40),
            true,
        ),
        (
            "TTFT p99",
            |s| s.ttft_ms,
            |l| l.p99,
            RGBColor(255, 152, 150),
            false,
        ),
    ];
    // Steps in order of achieved throughput, so lines run left to right.
    let mut ordered: Vec<&StepStats> = steps.iter().collect();
    ordered.sort_by(|a, b| achieved(a).total_cmp(&achieved(b)));
    let x_max = ordered
        .iter()
        .map(|s| achieved(s))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let y_max = ordered
        .iter()
        .flat_map(|s| {
            series
                .iter()
                .filter_map(move |(_, pick, value, _, _)| pick(s).map(|l| value(&l)))
        })
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;

    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "aiq bench: latency vs achieved throughput",
            ("sans-serif", 24),
        )
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
    for (name, pick, value, color, annotate) in series {
        let points: Vec<(f64, f64)> = ordered
            .iter()
            .filter_map(|s| pick(s).map(|l| (achieved(s), value(&l))))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        if annotate {
            let labels = ordered
                .iter()
                .filter(|s| pick(s).is_some())
                .map(|s| s.load.label());
            chart.draw_series(points.iter().zip(labels).map(|(p, label)| {
                EmptyElement::at(*p)
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

/// The x value a step is plotted at: what it achieved, not what it asked.
pub fn achieved(s: &StepStats) -> f64 {
    s.requests_per_sec
}
