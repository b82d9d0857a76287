//! One SVG bar chart per metric, drawn from the report's JSON: a bar per
//! competitor at its median, a whisker from min to max, the median and its
//! ratios written beside the bar, so the comparison reads at a glance.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 130.0;
const TEXT_W: f64 = 230.0;
const BAR_H: f64 = 18.0;
const GAP: f64 = 6.0;
const TOP: f64 = 40.0;

/// Bars are coloured by family: the kernel, vmpod, and the others.
fn colour(key: &str) -> &'static str {
    match key {
        k if k.starts_with("kernel") => "#9e9e9e",
        k if k.starts_with("vmpod") => "#1f77b4",
        k if k.starts_with("haproxy") => "#ff7f0e",
        k if k.starts_with("pasta") => "#2ca02c",
        _ => "#9467bd",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The chart of one metric of the JSON report, or `None` without figures.
pub fn svg(metric: &Value, order: &[&str], date: &str) -> Option<String> {
    let results = metric["results"].as_object()?;
    let rows: Vec<(&str, &Value)> = order
        .iter()
        .filter_map(|k| results.get(*k).map(|v| (*k, v)))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let max = rows
        .iter()
        .filter_map(|(_, v)| v["max"].as_f64())
        .fold(0.0_f64, f64::max);
    let scale = if max > 0.0 {
        (WIDTH - LABEL_W - TEXT_W - 10.0) / max
    } else {
        0.0
    };
    let height = TOP + rows.len() as f64 * (BAR_H + GAP) + 24.0;
    let better = if metric["higher_is_better"].as_bool() == Some(true) {
        "higher is better"
    } else {
        "lower is better"
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="18" font-size="14" font-weight="bold">{} ({})</text>
<text x="8" y="33" fill="#555">median (whisker: min–max); × kernel / × haproxy / × passt; {better}; {}</text>
"##,
        esc(metric["label"].as_str().unwrap_or("")),
        esc(metric["unit"].as_str().unwrap_or("")),
        esc(date),
    );
    for (i, (key, v)) in rows.iter().enumerate() {
        let y = TOP + i as f64 * (BAR_H + GAP);
        let (Some(median), Some(lo), Some(hi)) =
            (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64())
        else {
            continue;
        };
        let ratios: Vec<String> = ["vs_kernel", "vs_haproxy", "vs_pasta"]
            .iter()
            .map(|r| {
                v[*r]
                    .as_f64()
                    .map_or("—".to_string(), |x| format!("{x:.2}×"))
            })
            .collect();
        let mid = y + BAR_H / 2.0;
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{key}</text>
<rect x="{LABEL_W}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{c}"/>
<line x1="{x0:.1}" x2="{x1:.1}" y1="{mid}" y2="{mid}" stroke="black"/>
<line x1="{x0:.1}" x2="{x0:.1}" y1="{a}" y2="{b}" stroke="black"/>
<line x1="{x1:.1}" x2="{x1:.1}" y1="{a}" y2="{b}" stroke="black"/>
<text x="{tx:.1}" y="{ty}">{m}   {r}</text>
"#,
            lx = LABEL_W - 6.0,
            ty = y + BAR_H - 4.0,
            key = esc(key),
            w = median * scale,
            c = colour(key),
            x0 = LABEL_W + lo * scale,
            x1 = LABEL_W + hi * scale,
            a = y + 4.0,
            b = y + BAR_H - 4.0,
            tx = WIDTH - TEXT_W,
            m = num(median),
            r = ratios.join(" / "),
        );
    }
    s += "</svg>\n";
    Some(s)
}

/// Writes `relay-METRIC.svg` for every metric of `json` into `dir`; the
/// files written.
pub fn write_all(json: &Value, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let order: Vec<&str> = json["competitors"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["key"].as_str()).collect())
        .unwrap_or_default();
    let date = json["date"].as_str().unwrap_or("");
    let load = json["load_before"].as_str().unwrap_or("");
    let stamp = format!("{date}, load {load}");
    let mut written = Vec::new();
    for m in json["metrics"].as_array().into_iter().flatten() {
        let (Some(key), Some(svg)) = (m["key"].as_str(), svg(m, &order, &stamp)) else {
            continue;
        };
        let path = dir.join(format!("relay-{key}.svg"));
        std::fs::write(&path, svg)?;
        written.push(path);
    }
    Ok(written)
}
