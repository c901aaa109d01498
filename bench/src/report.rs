//! A scenario's report: a Markdown file (tables, notes, chart links), SVG
//! charts written by hand (grouped bars and timelines), and the raw figures
//! as JSON, all under `<out>/<scenario>/`. The Markdown is also printed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

/// One goal of the benchmark issue and how this run did against it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is compared, e.g. "least-loaded p99 / round-robin p99".
    pub what: String,
    /// The target, e.g. "≤ 0.5".
    pub target: String,
    /// The measured ratio (or figure); `None` when it could not be measured.
    pub measured: Option<f64>,
    /// Whether the target is met; `None` when not measured.
    pub met: Option<bool>,
}

impl Goal {
    /// A goal met when `measured <= max`.
    pub fn at_most(what: &str, max: f64, measured: Option<f64>) -> Goal {
        Goal {
            what: what.to_string(),
            target: format!("≤ {max}"),
            measured,
            met: measured.map(|m| m <= max),
        }
    }

    /// A goal met when `measured >= min`.
    pub fn at_least(what: &str, min: f64, measured: Option<f64>) -> Goal {
        Goal {
            what: what.to_string(),
            target: format!("≥ {min}"),
            measured,
            met: measured.map(|m| m >= min),
        }
    }

    /// The Markdown table row.
    pub fn row(&self) -> Vec<String> {
        vec![
            self.what.clone(),
            self.target.clone(),
            self.measured
                .map_or("not measured".into(), |m| format!("{m:.2}")),
            match self.met {
                Some(true) => "met".into(),
                Some(false) => "**missed**".into(),
                None => "—".into(),
            },
        ]
    }
}

/// A report being written.
#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    md: String,
    data: Map<String, Value>,
    pub goals: Vec<Goal>,
}

impl Report {
    /// Starts the report of `scenario` in `<out>/<scenario>/`.
    pub fn new(out: &Path, scenario: &str, title: &str) -> Result<Report> {
        // Absolute: nginx resolves relative paths against its prefix.
        let dir = std::path::absolute(out.join(scenario))?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut data = Map::new();
        data.insert("scenario".into(), scenario.into());
        Ok(Report {
            dir,
            md: format!("# {title}\n\n"),
            data,
            goals: Vec::new(),
        })
    }

    /// A paragraph.
    pub fn para(&mut self, text: &str) {
        self.md.push_str(text.trim_end());
        self.md.push_str("\n\n");
    }

    /// A Markdown table.
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) {
        self.md.push_str(&md_table(headers, rows));
        self.md.push('\n');
    }

    /// Raw data under `key` in `report.json`.
    pub fn data(&mut self, key: &str, value: impl Serialize) {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.data.insert(key.to_string(), v);
    }

    /// Writes `svg` as `<name>.svg` and links it from the Markdown.
    pub fn chart(&mut self, name: &str, title: &str, svg: String) -> Result<()> {
        let file = format!("{name}.svg");
        std::fs::write(self.dir.join(&file), svg)?;
        let _ = writeln!(self.md, "![{title}]({file})\n");
        Ok(())
    }

    /// Records the goals (and adds their table).
    pub fn goals(&mut self, goals: Vec<Goal>) {
        if goals.is_empty() {
            return;
        }
        self.md.push_str("## Goals\n\n");
        let rows: Vec<_> = goals.iter().map(Goal::row).collect();
        self.table(&["goal", "target", "measured", ""], &rows);
        self.goals.extend(goals);
    }

    /// Writes `report.md` and `report.json`, prints the Markdown, and
    /// returns the goals for a summary.
    pub fn finish(mut self) -> Result<Vec<Goal>> {
        self.data
            .insert("goals".into(), serde_json::to_value(&self.goals)?);
        std::fs::write(self.dir.join("report.md"), &self.md)?;
        std::fs::write(
            self.dir.join("report.json"),
            serde_json::to_string_pretty(&self.data)?,
        )?;
        println!("{}", self.md);
        println!("(report: {})\n", self.dir.join("report.md").display());
        Ok(self.goals)
    }
}

/// A Markdown table.
pub fn md_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    // First column left-aligned, the figures right-aligned.
    let seps: Vec<&str> = (0..headers.len())
        .map(|i| if i == 0 { "---" } else { "---:" })
        .collect();
    let mut s = format!("| {} |\n| {} |\n", headers.join(" | "), seps.join(" | "));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// `x / y`, or `None` when either is missing or `y` is not positive.
pub fn ratio(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    }
}

/// The median of the values (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Formats an optional figure with `prec` decimals, `—` when absent.
pub fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.prec$}"))
}

const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * mag)
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        // 1200 and 1600 must not both read "1k": keep one decimal when the
        // thousands are not whole.
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The frame shared by both chart kinds: title, y axis with grid lines.
fn frame(
    svg: &mut String,
    w: f64,
    h: f64,
    title: &str,
    unit: &str,
    ymax: f64,
    plot: (f64, f64, f64, f64),
) {
    let (x0, y0, x1, y1) = plot;
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>\n",
        w / 2.0,
        esc(title),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(unit)
    );
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = y1 - (y1 - y0) * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{x0}\" y1=\"{y1}\" x2=\"{x1}\" y2=\"{y1}\" stroke=\"#333\"/>"
    );
}

fn legend(svg: &mut String, names: &[String], x: f64, y: f64) {
    let mut x = x;
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{y}\">{}</text>",
            y - 10.0,
            PALETTE[i % PALETTE.len()],
            x + 16.0,
            esc(name)
        );
        x += 30.0 + 7.0 * name.len() as f64;
    }
}

/// A grouped bar chart: one group per category, one bar per series.
pub fn bar_chart(
    title: &str,
    unit: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let groups = categories.len().max(1) as f64;
    let per = series.len().max(1) as f64;
    let w = (120.0 + groups * (per * 26.0 + 30.0)).max(480.0);
    let h = 360.0;
    let plot = (70.0, 60.0, w - 20.0, h - 60.0);
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max),
    );
    let mut svg = String::new();
    frame(&mut svg, w, h, title, unit, ymax, plot);
    let (x0, y0, x1, y1) = plot;
    let gw = (x1 - x0) / groups;
    let bw = (gw - 20.0) / per;
    for (g, cat) in categories.iter().enumerate() {
        let gx = x0 + gw * g as f64 + 10.0;
        for (s, (_, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0).max(0.0);
            let bh = (y1 - y0) * (v / ymax).min(1.0);
            let x = gx + bw * s as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{}</title></rect>",
                y1 - bh,
                (bw - 2.0).max(1.0),
                PALETTE[s % PALETTE.len()],
                fmt_tick(v)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            gx + (gw - 20.0) / 2.0,
            y1 + 18.0,
            esc(cat)
        );
    }
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut svg, &names, x0, h - 14.0);
    svg.push_str("</svg>\n");
    svg
}

/// A line chart over time (seconds), with labelled vertical markers.
pub fn line_chart(
    title: &str,
    unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
    markers: &[(f64, String)],
) -> String {
    let (w, h) = (720.0, 360.0);
    let plot = (70.0, 60.0, w - 20.0, h - 60.0);
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let ymax = nice_max(points().map(|p| p.1).fold(0.0, f64::max));
    let xmax = points().map(|p| p.0).fold(1.0, f64::max);
    let mut svg = String::new();
    frame(&mut svg, w, h, title, unit, ymax, plot);
    let (x0, y0, x1, y1) = plot;
    let px = |x: f64| x0 + (x1 - x0) * x / xmax;
    let py = |y: f64| y1 - (y1 - y0) * (y / ymax).min(1.0);
    for s in 0..=xmax.ceil() as u64 {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{s}s</text>",
            px(s as f64),
            y1 + 16.0
        );
    }
    for (x, label) in markers {
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" y1=\"{y0}\" x2=\"{lx:.1}\" y2=\"{y1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{text}</text>",
            lx = px(*x),
            tx = px(*x) + 3.0,
            ty = y0 + 12.0,
            text = esc(label)
        );
    }
    for (i, (_, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            PALETTE[i % PALETTE.len()],
            path.join(" ")
        );
    }
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut svg, &names, x0, h - 14.0);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::fmt_tick;

    #[test]
    fn ticks_above_a_thousand_stay_distinct() {
        let ticks: Vec<String> = [0.0, 2.5, 400.0, 1000.0, 1200.0, 1600.0, 2000.0, 25_000.0]
            .into_iter()
            .map(fmt_tick)
            .collect();
        assert_eq!(
            ticks,
            ["0", "2.5", "400", "1k", "1.2k", "1.6k", "2k", "25k"]
        );
    }
}
