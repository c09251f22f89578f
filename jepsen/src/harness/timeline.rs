//! `timeline.html`: a self-contained page (inline SVG, no scripts) with one lane per client, each operation a bar
//! from invocation to completion coloured by outcome, and the nemesis's fault intervals shaded behind them.
//! Hovering a bar shows the operation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::value::Value;
use crate::history::{EventType, History, Outcome};

/// Fault intervals from the nemesis events: (start s, end s, label). A fault without a stop runs to `end`.
pub(crate) fn nemesis_intervals(history: &History) -> Vec<(f64, f64, String)> {
    let mut open: BTreeMap<i64, (f64, String)> = BTreeMap::new();
    let mut out = Vec::new();
    let mut last = 0.0f64;
    for e in history.others() {
        let t = e.time.unwrap_or(0) as f64 / 1e9;
        last = last.max(t);
        if e.kind != EventType::Info {
            continue;
        }
        let Some(window) = e.value.get("window").and_then(Value::as_int) else {
            continue;
        };
        if let Some(kind) = e.f.strip_prefix("start-") {
            let mut label = kind.to_owned();
            for field in ["groups", "nodes", "delay_ms"] {
                if let Some(v) = e.value.get(field) {
                    let _ = write!(label, " {field}={v}");
                }
            }
            open.insert(window, (t, label));
        } else if e.f.starts_with("stop-")
            && let Some((s, label)) = open.remove(&window)
        {
            out.push((s, t, label));
        }
    }
    for (_, (s, label)) in open {
        out.push((s, last, label));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the page. Lanes: client `p` goes to lane `p % concurrency`; the final operations get their own lane.
pub(crate) fn render(history: &History, concurrency: usize, title: &str) -> String {
    let concurrency = concurrency.max(1);
    let end_ns = history
        .ops()
        .iter()
        .filter_map(|op| op.complete_time.or(op.invoke_time))
        .chain(history.others().iter().filter_map(|e| e.time))
        .max()
        .unwrap_or(1)
        .max(1);
    let lanes = concurrency + 1;
    let (left, top, lane_h, width) = (70.0, 30.0, 18.0, 1600.0);
    let plot_w = width - left - 20.0;
    let height = top + lanes as f64 * lane_h + 40.0;
    let x = |ns: u64| left + plot_w * ns as f64 / end_ns as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    for (s, e, label) in nemesis_intervals(history) {
        let (x0, x1) = (x((s * 1e9) as u64), x((e * 1e9) as u64));
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#999" fill-opacity="0.25"><title>{}</title></rect><text x="{x0:.1}" y="{:.1}" fill="#555">{}</text>"##,
            (x1 - x0).max(1.0),
            lanes as f64 * lane_h,
            esc(&format!("{label}: {s:.2}-{e:.2} s")),
            top - 6.0,
            esc(label.split(' ').next().unwrap_or(""))
        );
    }
    for lane in 0..lanes {
        let y = top + lane as f64 * lane_h;
        let name = if lane == concurrency {
            "final".to_owned()
        } else {
            format!("c{lane}")
        };
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}">{name}</text><line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            y + lane_h * 0.7,
            left + plot_w,
            y + lane_h,
            y + lane_h
        );
    }
    for op in history.ops() {
        let Some(t0) = op.invoke_time else { continue };
        let t1 = op.complete_time.unwrap_or(end_ns);
        let lane = if op.process >= (concurrency as i64) * 1_000_000 {
            concurrency
        } else {
            op.process.rem_euclid(concurrency as i64) as usize
        };
        let color = match op.outcome {
            Outcome::Ok => "#3a3",
            Outcome::Fail => "#d33",
            Outcome::Info => "#e90",
        };
        let (x0, x1) = (x(t0), x(t1));
        let key = op.key.as_ref().map(|k| format!(" key {k}")).unwrap_or_default();
        let outcome = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        let tip = format!(
            "p{} {}{key} {} -> {} {outcome}, {:.3}-{:.3} s ({:.1} ms)",
            op.process,
            op.f,
            op.value,
            op.result,
            t0 as f64 / 1e9,
            t1 as f64 / 1e9,
            (t1 - t0) as f64 / 1e6
        );
        let _ = write!(
            svg,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}</title></rect>"#,
            top + lane as f64 * lane_h + 2.0,
            (x1 - x0).max(0.8),
            lane_h - 4.0,
            esc(&tip)
        );
    }
    let secs = end_ns as f64 / 1e9;
    let step = if secs > 120.0 {
        30.0
    } else if secs > 30.0 {
        10.0
    } else {
        2.0
    };
    let mut t = 0.0;
    while t <= secs {
        let xx = x((t * 1e9) as u64);
        let _ = write!(
            svg,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{:.1}" stroke="#ccc"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"##,
            top + lanes as f64 * lane_h,
            top + lanes as f64 * lane_h + 14.0
        );
        t += step;
    }
    svg.push_str("</svg>");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head><body>\n\
         <h3>{t}</h3>\n<p>One lane per client; bars from invocation to completion: \
         <span style=\"color:#3a3\">ok</span>, <span style=\"color:#d33\">fail</span>, \
         <span style=\"color:#e90\">info (unknown)</span>. Grey: fault intervals. Hover for details.</p>\n\
         <div style=\"overflow-x:auto\">{svg}</div>\n</body></html>\n",
        t = esc(title)
    )
}
