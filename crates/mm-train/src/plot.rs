//! Curves of a run, drawn as SVG from its metric history: the training and validation losses,
//! and the validation metrics, per epoch. SVG needs no font or image library, and any browser
//! shows it.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::{Error, Result};

/// The series of `key` (a top-level number or one inside `val`) over the history.
fn series(history: &[Value], key: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|h| {
            let epoch = h["epoch"].as_f64()?;
            let v = h
                .get(key)
                .and_then(Value::as_f64)
                .or_else(|| h["val"].get(key).and_then(Value::as_f64))?;
            v.is_finite().then_some((epoch, v))
        })
        .collect()
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
) -> std::result::Result<(), String> {
    let points: Vec<&(f64, f64)> = lines.iter().flat_map(|(_, s)| s.iter()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let (x0, x1) =
        points.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (y0, y1) =
        points.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("epoch").draw().map_err(|e| e.to_string())?;
    for (i, (name, s)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Draws the losses and the validation metrics of `history` (one JSON object per epoch, as
/// `metrics.jsonl` holds) into an SVG file, written atomically.
pub fn plot_history(history: &[Value], path: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        let draw = || -> std::result::Result<(), String> {
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (left, right) = root.split_horizontally(480);
            panel(
                &left,
                "loss",
                &[
                    ("train", series(history, "train_loss")),
                    ("validation", series(history, "loss")),
                ],
            )?;
            let metrics: Vec<(&str, Vec<(f64, f64)>)> =
                ["accuracy", "macro_f1", "auroc", "mse", "mae", "pearson"]
                    .iter()
                    .map(|k| (*k, series(history, k)))
                    .filter(|(_, s)| !s.is_empty())
                    .collect();
            panel(&right, "validation", &metrics)?;
            root.present().map_err(|e| e.to_string())
        };
        draw().map_err(|e| {
            Error::Checkpoint(format!("{}: drawing the curves: {e}", path.display()))
        })?;
    }
    mm_data::fs::write_atomic(path, svg.as_bytes()).map_err(Error::from)
}
