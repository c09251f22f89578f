//! `latency.png` and `throughput.png`, drawn with plotters' bitmap backend. Text uses DejaVu Sans when the
//! machine has it (registered through ab_glyph, no system font lookup); without it the plots have no labels.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::harness::timeline::nemesis_intervals;
use crate::history::{History, Outcome};

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font once; whether text can be drawn.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn outcome_color(o: Outcome) -> RGBColor {
    match o {
        Outcome::Ok => RGBColor(40, 160, 40),
        Outcome::Fail => RGBColor(210, 50, 50),
        Outcome::Info => RGBColor(230, 150, 0),
    }
}

/// Operation latency over time, one dot per operation coloured by outcome, fault intervals shaded.
pub(crate) fn latency(history: &History, path: &Path) -> PlotResult {
    let points: Vec<(f64, f64, Outcome)> = history
        .ops()
        .iter()
        .filter_map(|op| {
            let (a, b) = (op.invoke_time?, op.complete_time?);
            Some((a as f64 / 1e9, (b - a) as f64 / 1e6, op.outcome))
        })
        .collect();
    let t_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points.iter().map(|p| p.1).fold(10.0, f64::max) * 1.1;
    let text = font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption("latency per operation (ms)", ("sans-serif", 20))
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    if text {
        chart.configure_mesh().x_desc("time (s)").y_desc("ms").draw()?;
    }
    for (s, e, _) in nemesis_intervals(history) {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(s, 0.0), (e, y_max)],
            RGBColor(150, 150, 150).mix(0.25).filled(),
        )))?;
    }
    // Failures first, so the successes and the unknowns stay visible on top.
    for o in [Outcome::Fail, Outcome::Ok, Outcome::Info] {
        let color = outcome_color(o);
        chart.draw_series(
            points
                .iter()
                .filter(|p| p.2 == o)
                .map(|&(t, ms, _)| Circle::new((t, ms), 2, color.filled())),
        )?;
    }
    root.present()?;
    Ok(())
}

/// Completed operations per second by outcome, fault intervals shaded.
pub(crate) fn throughput(history: &History, path: &Path) -> PlotResult {
    let secs = history
        .ops()
        .iter()
        .filter_map(|op| op.complete_time)
        .max()
        .map(|t| (t / 1_000_000_000) as usize + 1)
        .unwrap_or(1);
    let mut buckets = vec![[0u32; 3]; secs];
    for op in history.ops() {
        if let Some(t) = op.complete_time {
            let i = match op.outcome {
                Outcome::Ok => 0,
                Outcome::Fail => 1,
                Outcome::Info => 2,
            };
            buckets[(t / 1_000_000_000) as usize][i] += 1;
        }
    }
    let y_max = buckets.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let text = font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(
                "throughput (completed ops/s): ok green, fail red, info orange",
                ("sans-serif", 20),
            )
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.0..secs as f64, 0.0..y_max)?;
    if text {
        chart.configure_mesh().x_desc("time (s)").y_desc("ops/s").draw()?;
    }
    for (s, e, _) in nemesis_intervals(history) {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(s, 0.0), (e, y_max)],
            RGBColor(150, 150, 150).mix(0.25).filled(),
        )))?;
    }
    for (i, o) in [Outcome::Ok, Outcome::Fail, Outcome::Info]
        .into_iter()
        .enumerate()
    {
        let color = outcome_color(o);
        chart.draw_series(LineSeries::new(
            buckets
                .iter()
                .enumerate()
                .map(|(s, b)| (s as f64 + 0.5, f64::from(b[i]))),
            color.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}
