//! The picture of a run: a self-contained SVG timeline of every client's ops, the faults the
//! nemesis injected, and the ops the checkers blamed.
//!
//! x is time in seconds since the start of the run; each row is a client (or a group of
//! consecutive clients when there are too many to draw one row each); each op is a bar from
//! invocation to completion coloured by outcome. Bars of one colour closer than a pixel are
//! merged, so a 100k-op history stays a few hundred kilobytes.

use crate::check::CheckReport;
use crate::history::{NodeIndex, Op, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// One fault the nemesis injected, as a band across the picture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpan {
    /// What it was ("partition {1} | {2,3}", "kill -9", "clock +300ms", ...).
    pub label: String,
    /// The nodes it hit.
    pub nodes: Vec<NodeIndex>,
    pub start_ns: u64,
    pub end_ns: u64,
}

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 30.0;
const TITLE_H: f64 = 30.0;
/// Room above the rows for staggered fault labels.
const FAULT_LABEL_ROWS: usize = 3;
const LINE_H: f64 = 13.0;
/// Most rows drawn; more clients are grouped.
const MAX_ROWS: usize = 64;
/// Rows share at most this much height.
const MAX_ROWS_H: f64 = 768.0;
/// Merged bars drawn per row and colour; the rest are counted in a note.
const MAX_BARS_PER_ROW: usize = 3000;
/// Blamed ops outlined individually.
const MAX_MARKED: usize = 5000;
/// Anomalies listed under the chart.
const MAX_LISTED: usize = 40;
/// Characters of one listed anomaly line (the width of the picture in 11px monospace).
const MAX_LINE_CHARS: usize = 195;
/// Lines one listed anomaly may take.
const MAX_WRAPPED_LINES: usize = 3;

const OK_COLOR: &str = "#2e9e44";
const FAIL_COLOR: &str = "#d9534f";
const UNKNOWN_COLOR: &str = "#f0a030";
const FAULT_COLORS: [&str; 4] = ["#5b8def", "#b05bef", "#ef5bb0", "#5befd0"];

/// Renders the history as an SVG document (no external resources).
pub fn render_svg(
    history: &[Op],
    faults: &[FaultSpan],
    report: &CheckReport,
    title: &str,
) -> String {
    let t_end = history
        .iter()
        .map(|o| o.end_ns.max(o.start_ns))
        .chain(faults.iter().map(|f| f.end_ns.max(f.start_ns)))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |ns: u64| LEFT + plot_w * (ns as f64 / t_end as f64);
    let px_ns = (t_end as f64 / plot_w).max(1.0);

    // Rows: one per client, or consecutive clients grouped.
    let clients: BTreeSet<u32> = history.iter().map(|o| o.client).collect();
    let clients: Vec<u32> = clients.into_iter().collect();
    let per_row = clients.len().div_ceil(MAX_ROWS).max(1);
    let row_of: HashMap<u32, usize> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i / per_row))
        .collect();
    let rows = clients.len().div_ceil(per_row).max(1);
    let row_h = (MAX_ROWS_H / rows as f64).clamp(3.0, 16.0);
    let top = TITLE_H + LINE_H * FAULT_LABEL_ROWS as f64 + 4.0;
    let rows_h = row_h * rows as f64;
    let axis_y = top + rows_h;

    let blamed: HashMap<u64, &str> = report
        .anomalies
        .iter()
        .flat_map(|a| a.op_ids.iter().map(move |id| (*id, a.kind.as_str())))
        .collect();
    // Each anomaly wrapped to the picture's width, at most MAX_WRAPPED_LINES lines.
    let listed: Vec<String> = report
        .anomalies
        .iter()
        .take(MAX_LISTED)
        .flat_map(|a| {
            let chars: Vec<char> = format!("[{}] {}: {}", a.checker, a.kind, a.message)
                .chars()
                .collect();
            let mut lines: Vec<String> = chars
                .chunks(MAX_LINE_CHARS)
                .take(MAX_WRAPPED_LINES)
                .map(|c| c.iter().collect())
                .collect();
            if chars.len() > MAX_LINE_CHARS * MAX_WRAPPED_LINES {
                if let Some(last) = lines.last_mut() {
                    last.push_str(" ...");
                }
            }
            lines
        })
        .collect();
    let mut notes: Vec<String> = Vec::new();
    let list_top = axis_y + 56.0;
    // Two possible notes (elided bars, capped markers) under the list.
    let height = list_top + LINE_H * (listed.len() + 3) as f64 + 10.0;

    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="monospace" font-size="11">"#
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{height:.0}" fill="#ffffff"/><text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"##,
        esc(title)
    );

    // Fault bands behind everything.
    for (i, f) in faults.iter().enumerate() {
        let (x0, x1) = (x(f.start_ns), x(f.end_ns.max(f.start_ns)));
        let color = FAULT_COLORS[i % FAULT_COLORS.len()];
        let label_y = TITLE_H + LINE_H * (i % FAULT_LABEL_ROWS + 1) as f64;
        let nodes: Vec<String> = f.nodes.iter().map(|n| n.to_string()).collect();
        let _ = write!(
            s,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="0.15"/><text x="{x0:.1}" y="{label_y:.1}" fill="{color}">{} [{}]</text>"#,
            top,
            (x1 - x0).max(1.0),
            rows_h,
            esc(&f.label),
            nodes.join(",")
        );
    }

    // Row labels and guide lines.
    for r in 0..rows {
        let y = top + r as f64 * row_h;
        let first = clients.get(r * per_row).copied().unwrap_or(0);
        let last = clients
            .get(((r + 1) * per_row).min(clients.len()).saturating_sub(1))
            .copied()
            .unwrap_or(first);
        let label = if first == last {
            format!("client {first}")
        } else {
            format!("clients {first}-{last}")
        };
        if row_h >= 8.0 || r % (8.0 / row_h).ceil() as usize == 0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="{:.0}">{}</text>"#,
                LEFT - 6.0,
                y + row_h * 0.8,
                row_h.clamp(7.0, 11.0),
                esc(&label)
            );
        }
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eeeeee"/>"##,
            WIDTH - RIGHT
        );
    }

    // Bars, merged per row and outcome; rarer outcomes drawn last so they stay visible.
    let mut lanes: BTreeMap<(u8, usize), Vec<(u64, u64)>> = BTreeMap::new();
    for o in history {
        let rank = match o.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Unknown => 2,
        };
        let row = row_of.get(&o.client).copied().unwrap_or(0);
        lanes
            .entry((rank, row))
            .or_default()
            .push((o.start_ns, o.end_ns.max(o.start_ns)));
    }
    let bar_h = (row_h * 0.6).max(2.0);
    let bar_y = |row: usize| top + row as f64 * row_h + (row_h - bar_h) / 2.0;
    let mut elided = 0usize;
    let mut drawn = 0usize;
    for ((rank, row), mut spans) in lanes {
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in spans {
            match merged.last_mut() {
                Some(last) if a as f64 <= last.1 as f64 + px_ns => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        if merged.len() > MAX_BARS_PER_ROW {
            elided += merged.len() - MAX_BARS_PER_ROW;
            merged.truncate(MAX_BARS_PER_ROW);
        }
        drawn += merged.len();
        let color = [OK_COLOR, FAIL_COLOR, UNKNOWN_COLOR][usize::from(rank)];
        let _ = write!(s, r#"<g fill="{color}">"#);
        for (a, b) in merged {
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}"/>"#,
                x(a),
                bar_y(row),
                (x(b) - x(a)).max(1.0)
            );
        }
        s.push_str("</g>");
    }
    if elided > 0 {
        notes.push(format!(
            "{elided} merged bars not drawn (more than {MAX_BARS_PER_ROW} per row and outcome)"
        ));
    }

    // Blamed ops: outlined, with a marker above, each one (not merged).
    s.push_str(r##"<g fill="none" stroke="#000000" stroke-width="1.2">"##);
    for (marked, o) in history
        .iter()
        .filter(|o| blamed.contains_key(&o.id))
        .enumerate()
    {
        if marked == MAX_MARKED {
            notes.push(format!(
                "only the first {MAX_MARKED} blamed ops are outlined"
            ));
            break;
        }
        let row = row_of.get(&o.client).copied().unwrap_or(0);
        let (x0, x1) = (x(o.start_ns), x(o.end_ns.max(o.start_ns)));
        let y = bar_y(row);
        let kind = blamed.get(&o.id).copied().unwrap_or("");
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>#{} {}</title></rect><path d="M{:.1} {:.1} l-3 -5 h6 z" fill="#000000"/>"##,
            x0 - 1.0,
            y - 1.0,
            (x1 - x0).max(1.0) + 2.0,
            bar_h + 2.0,
            o.id,
            esc(kind),
            x0,
            y - 1.0
        );
    }
    s.push_str("</g>");

    // Time axis.
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{axis_y:.1}" x2="{:.1}" y2="{axis_y:.1}" stroke="#000000"/>"##,
        WIDTH - RIGHT
    );
    let step = tick_step_ns(t_end);
    // Enough decimals to tell the ticks apart: step = m * 10^k ns.
    let mut decimals = 0usize;
    let mut unit = 1_000_000_000u64;
    while decimals < 9 && !step.is_multiple_of(unit) {
        unit /= 10;
        decimals += 1;
    }
    let mut t = 0u64;
    while t <= t_end {
        let tx = x(t);
        let _ = write!(
            s,
            r##"<line x1="{tx:.1}" y1="{axis_y:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#000000"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{:.decimals$}</text>"##,
            axis_y + 5.0,
            axis_y + 17.0,
            t as f64 / 1e9
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">time (s)</text>"#,
        WIDTH - RIGHT,
        axis_y + 30.0
    );

    // Legend.
    let ly = axis_y + 32.0;
    let mut lx = LEFT;
    for (label, color, opacity) in [
        ("ok", OK_COLOR, "1"),
        ("fail", FAIL_COLOR, "1"),
        ("unknown", UNKNOWN_COLOR, "1"),
        ("fault", FAULT_COLORS[0], "0.3"),
    ] {
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="8" fill="{color}" fill-opacity="{opacity}"/><text x="{:.1}" y="{ly:.1}">{label}</text>"#,
            ly - 8.0,
            lx + 18.0
        );
        lx += 90.0;
    }
    let _ = write!(
        s,
        r##"<rect x="{lx:.1}" y="{:.1}" width="14" height="8" fill="none" stroke="#000000"/><text x="{:.1}" y="{ly:.1}">anomalous op</text>"##,
        ly - 8.0,
        lx + 18.0
    );
    lx += 130.0;
    let _ = write!(
        s,
        r#"<text x="{lx:.1}" y="{ly:.1}">{} ops, {} clients in {rows} rows, {drawn} bars; {} anomalies, {} lost</text>"#,
        history.len(),
        clients.len(),
        report.anomalies.len(),
        report.lost
    );

    // Anomaly list and notes.
    let mut y = list_top;
    let header = if report.anomalies.is_empty() {
        "no anomalies".to_string()
    } else if report.anomalies.len() > MAX_LISTED {
        format!(
            "anomalies (first {MAX_LISTED} of {}):",
            report.anomalies.len()
        )
    } else {
        "anomalies:".to_string()
    };
    let _ = write!(
        s,
        r#"<text x="10" y="{y:.1}" font-weight="bold">{header}</text>"#
    );
    for line in listed.iter().chain(&notes) {
        y += LINE_H;
        let _ = write!(s, r#"<text x="10" y="{y:.1}">{}</text>"#, esc(line));
    }
    s.push_str("</svg>\n");
    s
}

/// A round tick interval giving about ten ticks over `t_end_ns`.
fn tick_step_ns(t_end_ns: u64) -> u64 {
    let target = (t_end_ns / 10).max(1);
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = base.saturating_mul(m);
            if step >= target {
                return step;
            }
        }
        if base > u64::MAX / 100 {
            return u64::MAX;
        }
        base *= 10;
    }
}

/// Escapes text for XML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Anomaly, Checker};
    use crate::history::{Call, Port};

    /// Checks that `svg` is one well-formed element tree: every tag closed in order, no stray
    /// `<` or `&` in text. Returns the number of elements.
    fn well_formed(svg: &str) -> Result<usize, String> {
        let mut stack: Vec<&str> = Vec::new();
        let mut elements = 0;
        let mut rest = svg.trim_end();
        if !rest.starts_with("<svg") {
            return Err("does not start with <svg".into());
        }
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            if let Some(amp) = text.find('&') {
                let ent = &text[amp..];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| ent.starts_with(e))
                {
                    return Err(format!("bare & in text {text:?}"));
                }
            }
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            if tag.contains('<') {
                return Err(format!("< inside tag {tag:?}"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(top) if top == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else {
                let name = tag
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/');
                elements += 1;
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &rest[close + 1..];
            if stack.is_empty() && !rest.trim().is_empty() {
                return Err(format!("content after the root element: {rest:?}"));
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        Ok(elements)
    }

    fn op(id: u64, client: u32, start_ns: u64, end_ns: u64, outcome: Outcome) -> Op {
        Op {
            id,
            client,
            node: 1,
            port: Port::Rw,
            start_ns,
            end_ns,
            outcome,
            error: None,
            call: Call::SetAdd { value: id },
        }
    }

    #[test]
    fn the_well_formedness_check_can_fail() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(well_formed("<svg><rect/></svg><x/>").is_err());
        assert_eq!(
            well_formed("<svg><rect/><text>a &amp; b</text></svg>"),
            Ok(3)
        );
    }

    #[test]
    fn a_small_run_has_rows_faults_markers_and_the_anomaly_list() {
        let h = vec![
            op(1, 1, 0, 200_000_000, Outcome::Ok),
            op(2, 2, 100_000_000, 900_000_000, Outcome::Unknown),
            op(3, 1, 300_000_000, 400_000_000, Outcome::Fail),
            op(4, 3, 1_000_000_000, 2_500_000_000, Outcome::Ok),
        ];
        let faults = vec![FaultSpan {
            label: "partition {1} | {2,3} <majority>".into(),
            nodes: vec![1, 2, 3],
            start_ns: 500_000_000,
            end_ns: 1_500_000_000,
        }];
        let report = CheckReport {
            anomalies: vec![Anomaly::new(
                Checker::Set,
                "lost-add",
                "4 was acknowledged & lost",
                vec![4],
            )],
            lost: 1,
            ..CheckReport::default()
        };
        let svg = render_svg(&h, &faults, &report, "run <7> & co");
        let n = well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(n > 20, "{svg}");
        for needle in [
            "run &lt;7&gt; &amp; co",
            "partition {1} | {2,3} &lt;majority&gt; [1,2,3]",
            "client 1",
            "client 3",
            "<title>#4 lost-add</title>",
            "[set] lost-add: 4 was acknowledged &amp; lost",
            OK_COLOR,
            FAIL_COLOR,
            UNKNOWN_COLOR,
            "time (s)",
            ">2.5<",
        ] {
            assert!(svg.contains(needle), "missing {needle:?} in\n{svg}");
        }
    }

    #[test]
    fn an_empty_history_still_renders() {
        let svg = render_svg(&[], &[], &CheckReport::default(), "empty");
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(svg.contains("no anomalies"));
    }

    #[test]
    fn a_hundred_thousand_ops_stay_small() {
        // 1000 clients (many fresh ids after unknown outcomes), 100 ops each, 60 s.
        let mut h = Vec::new();
        for c in 0..1000u32 {
            for i in 0..100u64 {
                let start = i * 600_000_000 + u64::from(c) * 1000;
                let outcome = match (c as u64 + i) % 50 {
                    0 => Outcome::Unknown,
                    1 => Outcome::Fail,
                    _ => Outcome::Ok,
                };
                h.push(op(
                    u64::from(c) * 100 + i,
                    c,
                    start,
                    start + 3_000_000,
                    outcome,
                ));
            }
        }
        let report = CheckReport {
            anomalies: (0..100)
                .map(|i| {
                    Anomaly::new(
                        Checker::Register,
                        "nonlinearizable",
                        "x".repeat(500),
                        vec![i * 997],
                    )
                })
                .collect(),
            ..CheckReport::default()
        };
        let t = std::time::Instant::now();
        let svg = render_svg(&h, &[], &report, "big");
        let took = t.elapsed();
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}"));
        let rows = svg.matches(">clients ").count();
        assert!(rows > 0 && rows <= MAX_ROWS, "{rows} rows");
        assert!(svg.len() < 3_000_000, "{} bytes", svg.len());
        assert!(svg.contains("first 40 of 100"));
        println!(
            "svg of {} ops: {} bytes, {rows} rows, in {took:?}",
            h.len(),
            svg.len()
        );
    }
}
