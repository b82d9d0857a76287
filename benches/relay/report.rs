//! Figures: min/median/max per competitor and metric, ratios to the kernel
//! path and to haproxy (medians of per-repetition ratios), the targets of
//! issue 7, as Markdown and JSON.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::RunOpts;
use crate::bench::{Competitor, HAPROXY, KERNEL_INGRESS, Plan};

struct Metric {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
}

const fn m(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        higher_is_better,
    }
}

const METRICS: [Metric; 12] = [
    m(
        "tput1_up",
        "throughput, 1 stream, client→server",
        "Gbit/s",
        true,
    ),
    m(
        "tput1_down",
        "throughput, 1 stream, server→client",
        "Gbit/s",
        true,
    ),
    m(
        "tput4_up",
        "throughput, 4 streams, client→server",
        "Gbit/s",
        true,
    ),
    m(
        "tput4_down",
        "throughput, 4 streams, server→client",
        "Gbit/s",
        true,
    ),
    m("lat64_p50", "latency 64 B p50", "µs", false),
    m("lat64_p99", "latency 64 B p99", "µs", false),
    m("lat64_p999", "latency 64 B p99.9", "µs", false),
    m("lat1k_p50", "latency 1 KiB p50", "µs", false),
    m("lat1k_p99", "latency 1 KiB p99", "µs", false),
    m("lat1k_p999", "latency 1 KiB p99.9", "µs", false),
    m("cps", "new connections per second", "conn/s", true),
    m("mem", "memory per idle connection", "KiB", false),
];

const CPU: Metric = m(
    "cpu",
    "CPU per GB relayed (relay process)",
    "CPU s/GB",
    false,
);

/// metric → competitor → repetition → value
#[derive(Default)]
pub struct Results(BTreeMap<String, BTreeMap<String, BTreeMap<usize, f64>>>);

impl Results {
    pub fn add(&mut self, metric: &str, competitor: &str, rep: usize, value: f64) {
        self.0
            .entry(metric.to_string())
            .or_default()
            .entry(competitor.to_string())
            .or_default()
            .insert(rep, value);
    }

    fn reps(&self, metric: &str, competitor: &str) -> Option<&BTreeMap<usize, f64>> {
        self.0
            .get(metric)?
            .get(competitor)
            .filter(|r| !r.is_empty())
    }

    /// Per-repetition ratios of `a` to `b`, their median.
    fn ratio(&self, metric: &str, a: &str, b: &str) -> Option<f64> {
        let (ra, rb) = (self.reps(metric, a)?, self.reps(metric, b)?);
        let ratios: Vec<f64> = ra
            .iter()
            .filter_map(|(rep, va)| rb.get(rep).filter(|vb| **vb != 0.0).map(|vb| va / vb))
            .collect();
        median(ratios)
    }

    /// Per-repetition differences `a - b`, their median.
    fn added(&self, metric: &str, a: &str, b: &str) -> Option<f64> {
        let (ra, rb) = (self.reps(metric, a)?, self.reps(metric, b)?);
        median(
            ra.iter()
                .filter_map(|(rep, va)| rb.get(rep).map(|vb| va - vb))
                .collect(),
        )
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
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

struct Summary {
    values: Vec<f64>,
    min: f64,
    median: f64,
    max: f64,
    vs_kernel: Option<f64>,
    vs_haproxy: Option<f64>,
    /// vmpod ÷ passt on the same side; only for vmpod's relays.
    vs_pasta: Option<f64>,
}

fn summary(results: &Results, metric: &str, c: &Competitor) -> Option<Summary> {
    let reps = results.reps(metric, c.key)?;
    let values: Vec<f64> = reps.values().copied().collect();
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        median: median(values.clone())?,
        values,
        vs_kernel: (c.key != c.kernel_ref())
            .then(|| results.ratio(metric, c.key, c.kernel_ref()))
            .flatten(),
        vs_haproxy: (c.key != HAPROXY)
            .then(|| results.ratio(metric, c.key, HAPROXY))
            .flatten(),
        vs_pasta: c
            .is_vmpod()
            .then(|| results.ratio(metric, c.key, c.pasta_ref()))
            .flatten(),
    })
}

/// Where and when the run happened.
pub struct Context {
    pub date: String,
    pub load_before: String,
    load_after: String,
    duration: Duration,
    machine: Value,
    plan: Plan,
    vmpod_args: Option<String>,
}

fn output(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// `socat -V` names its authors first, then its version.
fn socat_version() -> String {
    Command::new("socat")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("socat version"))
                .map(|l| l.split(" on ").next().unwrap_or(l).to_string())
        })
        .unwrap_or_default()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Context {
    pub fn now(plan: &Plan, opts: &RunOpts) -> Context {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_default();
        Context {
            date: output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            load_before: load(),
            load_after: String::new(),
            duration: Duration::ZERO,
            machine: json!({
                "kernel": output(&["uname", "-r"]),
                "cpu": cpu,
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "haproxy": output(&["haproxy", "-v"]).split(" - ").next().unwrap_or("").to_string(),
                "iperf3": output(&["iperf3", "--version"]),
                "socat": socat_version(),
                "pasta": output(&["pasta", "--version"]),
                "vmpod_commit": output(&["git", "rev-parse", "--short", "HEAD"]),
            }),
            plan: *plan,
            vmpod_args: opts.vmpod_args.clone(),
        }
    }

    pub fn finish(mut self, duration: Duration) -> Context {
        self.load_after = load();
        self.duration = duration;
        self
    }
}

fn fmt(v: f64) -> String {
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

fn ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into())
}

struct Target {
    relay: &'static str,
    what: String,
    measured: Option<f64>,
    goal: String,
    met: Option<bool>,
}

fn targets(results: &Results, competitors: &[&Competitor]) -> Vec<Target> {
    let mut out = Vec::new();
    for c in competitors.iter().filter(|c| c.is_vmpod()) {
        for key in ["tput1_up", "tput1_down", "tput4_up", "tput4_down"] {
            let label = METRICS
                .iter()
                .find(|m| m.key == key)
                .map_or(key, |m| m.label);
            let h = results.ratio(key, c.key, HAPROXY);
            out.push(Target {
                relay: c.key,
                what: format!("{label}: × haproxy"),
                measured: h,
                goal: "≥ 1.5".into(),
                met: h.map(|r| r >= 1.5),
            });
            let k = results.ratio(key, c.key, c.kernel_ref());
            out.push(Target {
                relay: c.key,
                what: format!("{label}: × kernel"),
                measured: k,
                goal: "≥ 0.8".into(),
                met: k.map(|r| r >= 0.8),
            });
            let p = results.ratio(key, c.key, c.pasta_ref());
            out.push(Target {
                relay: c.key,
                what: format!("{label}: × passt"),
                measured: p,
                goal: "≥ 2".into(),
                met: p.map(|r| r >= 2.0),
            });
        }
        for (key, what) in [
            ("lat64_p50", "p50, 64 B"),
            ("lat64_p99", "p99, 64 B"),
            ("lat1k_p50", "p50, 1 KiB"),
            ("lat1k_p99", "p99, 1 KiB"),
        ] {
            let mine = results.added(key, c.key, c.kernel_ref());
            let theirs = results.added(key, HAPROXY, KERNEL_INGRESS);
            out.push(Target {
                relay: c.key,
                what: format!("{what} added over the kernel path (µs)"),
                measured: mine,
                goal: theirs.map_or("≤ haproxy's".into(), |t| {
                    format!("≤ haproxy's {}", fmt(t))
                }),
                met: mine.zip(theirs).map(|(m, t)| m <= t),
            });
        }
        let cps = results.ratio("cps", c.key, HAPROXY);
        out.push(Target {
            relay: c.key,
            what: "new connections per second: × haproxy".into(),
            measured: cps,
            goal: "≥ 1.0".into(),
            met: cps.map(|r| r >= 1.0),
        });
        let mem = results
            .reps("mem", c.key)
            .and_then(|r| median(r.values().copied().collect()));
        out.push(Target {
            relay: c.key,
            what: "memory per idle connection (KiB)".into(),
            measured: mem,
            goal: "≤ 3".into(),
            met: mem.map(|m| m <= 3.0),
        });
        let cpu = results.ratio("cpu", c.key, HAPROXY);
        out.push(Target {
            relay: c.key,
            what: "CPU s per GB: × haproxy".into(),
            measured: cpu,
            goal: "≤ 0.5".into(),
            met: cpu.map(|r| r <= 0.5),
        });
    }
    out
}

pub fn render(ctx: &Context, competitors: &[&Competitor], results: &Results) -> (String, Value) {
    let metrics: Vec<&Metric> = METRICS.iter().chain([&CPU]).collect();
    let mut md = String::new();
    let p = &ctx.plan;
    md += &format!("# Relay benchmark, {}\n\n", ctx.date);
    md += &format!(
        "{} cores ({}), kernel {}, {}, {}, {}. Load average before {}, after {}; the run took {:.0} s.\n\n",
        ctx.machine["cores"],
        ctx.machine["cpu"].as_str().unwrap_or(""),
        ctx.machine["kernel"].as_str().unwrap_or(""),
        ctx.machine["haproxy"].as_str().unwrap_or(""),
        ctx.machine["iperf3"].as_str().unwrap_or(""),
        ctx.machine["socat"].as_str().unwrap_or("").trim(),
        ctx.load_before,
        ctx.load_after,
        ctx.duration.as_secs_f64(),
    );
    md += &format!(
        "{} repetitions, interleaved; iperf3 {} s per run; {} round trips per latency run; \
         connections per second over {} s with {} concurrent clients; memory over {} idle connections \
         ({} for socat, which forks per connection), each on a freshly started relay{}.\n\n",
        p.reps,
        p.iperf_secs,
        p.rr_count,
        p.cps_secs,
        p.cps_concurrency,
        p.idle_connections,
        p.idle_connections_socat,
        ctx.vmpod_args
            .as_ref()
            .map(|a| format!("; vmpod relay extra arguments `{a}`"))
            .unwrap_or_default(),
    );
    md += "Egress competitors carry guest → cluster connections, ingress ones cluster → pod address → guest. \
           \"× kernel\" compares with the kernel path of the same side (egress: forwarding + masquerade; ingress: DNAT), \
           \"× haproxy\" with haproxy without splice, \"× passt\" (vmpod's relays only) with passt's pasta on the same side; all are medians of per-repetition ratios.\n\n";
    md += "## Medians\n\n| metric |";
    for c in competitors {
        md += &format!(" {} |", c.key);
    }
    md += "\n|---|";
    md += &"---:|".repeat(competitors.len());
    md += "\n";
    for m in &metrics {
        md += &format!("| {} ({}) |", m.label, m.unit);
        for c in competitors {
            md += &match summary(results, m.key, c) {
                None => " — |".to_string(),
                Some(s) => format!(" {} |", fmt(s.median)),
            };
        }
        md += "\n";
    }
    md += "\n## vmpod's ratios\n\n× kernel / × haproxy / × passt, medians of per-repetition ratios \
           (for latency, memory and CPU lower is better).\n\n| metric |";
    let vmpods: Vec<&&Competitor> = competitors.iter().filter(|c| c.is_vmpod()).collect();
    for c in &vmpods {
        md += &format!(" {} |", c.key);
    }
    md += "\n|---|";
    md += &"---:|".repeat(vmpods.len());
    md += "\n";
    for m in &metrics {
        md += &format!("| {} |", m.label);
        for c in &vmpods {
            md += &match summary(results, m.key, c) {
                None => " — |".to_string(),
                Some(s) => format!(
                    " {} / {} / {} |",
                    ratio(s.vs_kernel),
                    ratio(s.vs_haproxy),
                    ratio(s.vs_pasta)
                ),
            };
        }
        md += "\n";
    }
    md += "\n## Every figure\n\n| metric | competitor | min | median | max | × kernel | × haproxy | × passt |\n|---|---|---:|---:|---:|---:|---:|---:|\n";
    let mut json_metrics = Vec::new();
    for m in &metrics {
        let mut per = serde_json::Map::new();
        for c in competitors {
            let Some(s) = summary(results, m.key, c) else {
                continue;
            };
            md += &format!(
                "| {} ({}) | {} | {} | {} | {} | {} | {} | {} |\n",
                m.label,
                m.unit,
                c.key,
                fmt(s.min),
                fmt(s.median),
                fmt(s.max),
                ratio(s.vs_kernel),
                ratio(s.vs_haproxy),
                ratio(s.vs_pasta)
            );
            per.insert(
                c.key.to_string(),
                json!({
                    "values": s.values, "min": s.min, "median": s.median, "max": s.max,
                    "vs_kernel": s.vs_kernel, "vs_haproxy": s.vs_haproxy,
                    "vs_pasta": s.vs_pasta,
                }),
            );
        }
        json_metrics.push(json!({
            "key": m.key, "label": m.label, "unit": m.unit,
            "higher_is_better": m.higher_is_better, "results": per,
        }));
    }
    md += &stability_section(results, competitors);
    let dns = dns_section(results);
    md += &dns.0;
    let targets = targets(results, competitors);
    md += "\n## Targets (issues 7 and 17)\n\n| relay | target | measured | goal | met |\n|---|---|---:|---|---|\n";
    let mut json_targets = Vec::new();
    for t in &targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            t.relay,
            t.what,
            t.measured.map(fmt).unwrap_or_else(|| "—".into()),
            t.goal,
            met
        );
        json_targets.push(json!({
            "relay": t.relay, "target": t.what, "measured": t.measured, "goal": t.goal, "met": t.met,
        }));
    }
    let competitors_json: Vec<Value> = competitors
        .iter()
        .map(|c| json!({ "key": c.key, "label": c.label, "kernel_ref": c.kernel_ref() }))
        .collect();
    let json = json!({
        "date": ctx.date,
        "machine": ctx.machine,
        "load_before": ctx.load_before,
        "load_after": ctx.load_after,
        "duration_s": ctx.duration.as_secs_f64(),
        "plan": ctx.plan,
        "vmpod_args": ctx.vmpod_args,
        "competitors": competitors_json,
        "metrics": json_metrics,
        "targets": json_targets,
        "dns": dns.1,
    });
    (md, json)
}

/// How far latency figures move between repetitions: half the range over
/// the median, for the figure itself and for vmpod ÷ haproxy of the same
/// repetition. Each repetition measures one side's competitors
/// interleaved, so the ratio is steadier than the figure when the
/// machine's own tail moves.
fn stability_section(results: &Results, competitors: &[&Competitor]) -> String {
    let spread = |v: &[f64]| -> Option<f64> {
        let med = median(v.to_vec())?;
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(*x), hi.max(*x))
            });
        (v.len() > 1 && med != 0.0).then(|| (hi - lo) / 2.0 / med * 100.0)
    };
    let cell = |v: Option<f64>| v.map_or("—".to_string(), |p| format!("±{p:.0}%"));
    let lat: Vec<&Metric> = METRICS
        .iter()
        .filter(|m| m.key.starts_with("lat"))
        .collect();
    let shown: Vec<&&Competitor> = competitors
        .iter()
        .filter(|c| {
            results
                .reps("lat64_p50", c.key)
                .is_some_and(|r| r.len() > 1)
        })
        .collect();
    if shown.is_empty() {
        return String::new();
    }
    let mut md = "\n## Latency stability between repetitions\n\nHalf the range over the median of each \
                  figure's repetitions; for vmpod's relays also of the per-repetition ratio to haproxy \
                  (\"figure / ratio\").\n\n| metric |"
        .to_string();
    for c in &shown {
        md += &format!(" {} |", c.key);
    }
    md += "\n|---|";
    md += &"---:|".repeat(shown.len());
    md += "\n";
    for m in lat {
        md += &format!("| {} |", m.label);
        for c in &shown {
            let values: Vec<f64> = results
                .reps(m.key, c.key)
                .map(|r| r.values().copied().collect())
                .unwrap_or_default();
            let figure = cell(spread(&values));
            md += &if c.is_vmpod() {
                let ratios: Vec<f64> =
                    match (results.reps(m.key, c.key), results.reps(m.key, HAPROXY)) {
                        (Some(a), Some(h)) => a
                            .iter()
                            .filter_map(|(rep, v)| h.get(rep).filter(|x| **x != 0.0).map(|x| v / x))
                            .collect(),
                        _ => Vec::new(),
                    };
                format!(" {figure} / {} |", cell(spread(&ratios)))
            } else {
                format!(" {figure} |")
            };
        }
        md += "\n";
    }
    md
}

/// The DNS forwarder against a direct query from the guest: queries per
/// second (dnsperf) and latency percentiles, with what the forwarder adds.
fn dns_section(results: &Results) -> (String, Value) {
    const DIRECT: &str = "dns-direct";
    const VMPOD: &str = "dns-vmpod";
    let rows = [
        (
            "dns_qps",
            "queries per second (dnsperf, 100 outstanding)",
            "q/s",
        ),
        ("dns_p50", "latency p50 (one query at a time)", "µs"),
        ("dns_p99", "latency p99", "µs"),
        ("dns_p999", "latency p99.9", "µs"),
    ];
    if results.reps("dns_qps", VMPOD).is_none() {
        return (String::new(), Value::Null);
    }
    let med = |m: &str, k: &str| {
        results
            .reps(m, k)
            .and_then(|r| median(r.values().copied().collect()))
    };
    let show = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "—".into());
    let mut md = String::from(
        "\n## DNS forwarder\n\nThe guest queries the cluster's server directly (kernel forwarding + masquerade) \
         or through vmpod's forwarder on its gateway (`src/dns/forwarder.rs`, on a multi-thread runtime as in `vmpod run`); \
         UDP, one A record per answer. Medians; min–max in brackets.\n\n\
         | metric | direct | vmpod forwarder | × direct | added |\n|---|---:|---:|---:|---:|\n",
    );
    let mut json_rows = serde_json::Map::new();
    for (key, label, unit) in rows {
        let range = |k: &str| {
            results.reps(key, k).map(|r| {
                let mut v: Vec<f64> = r.values().copied().collect();
                v.sort_by(f64::total_cmp);
                (v[0], v[v.len() - 1])
            })
        };
        let cell = |k: &str| {
            let (lo, hi) = range(k).unwrap_or((f64::NAN, f64::NAN));
            format!("{} [{}–{}]", show(med(key, k)), fmt(lo), fmt(hi))
        };
        let ratio_v = results.ratio(key, VMPOD, DIRECT);
        let added = results.added(key, VMPOD, DIRECT);
        md += &format!(
            "| {label} ({unit}) | {} | {} | {} | {} |\n",
            cell(DIRECT),
            cell(VMPOD),
            ratio(ratio_v),
            if unit == "µs" {
                show(added)
            } else {
                "—".into()
            },
        );
        json_rows.insert(
            key.to_string(),
            json!({
                "label": label, "unit": unit,
                "direct": results.reps(key, DIRECT).map(|r| r.values().copied().collect::<Vec<_>>()),
                "vmpod": results.reps(key, VMPOD).map(|r| r.values().copied().collect::<Vec<_>>()),
                "median_direct": med(key, DIRECT), "median_vmpod": med(key, VMPOD),
                "vs_direct": ratio_v, "added": added,
            }),
        );
    }
    (md, Value::Object(json_rows))
}
