//! `tessera characterize`: mean latency under load, from measured per-inference costs and a
//! hardware profile (CryptoNite's system model, `tessera_sim`), for every scheme.
//!
//! Costs come from a costs file (`--costs`: a built-in such as
//! `resnet18-tinyimagenet-cryptonite`, or a path) or from `tessera compare`'s JSON
//! (`--compare`). A compare row becomes one scheme's costs as follows, all parties having run
//! on the measuring machine:
//! - online: the row's median online latency, as the untrusted side's (`server_s`) time, plus
//!   the TEE's modeled overhead (`modeled TEE − latency`, the runtime's SGX1 cost model) as
//!   trusted time; for `tee` and `attested`, whose whole online phase is in the enclave, the
//!   modeled TEE time as trusted time. Bytes and rounds are the row's online figures.
//! - offline: the row's median offline time and bytes, produced in the background by the
//!   enclave (`gc`, trusted time) or by both parties (`2pc`, untrusted time); none for the
//!   other schemes (lhe's encrypted model is uploaded once, not per inference).
//! - stored: the row's bytes per inference on each side.
//!
//! With the `local` profile (factors 1, 500/500 Mbps, 1 ms RTT) this answers the question for
//! the measuring machine; other profiles scale each side.

use crate::chart::{Series, lines};
use crate::table::Table;
use crate::{CliError, Result, human, parse_bytes, print_json};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tessera_sim::{Deployment, PhaseCost, Point, Producer, Profile, SchemeCosts, load_costs};

/// Model a deployment under load: Poisson arrivals over a range of rates, storage budgets on
/// each side, a background precompute worker, FIFO online service; mean latency per scheme.
#[derive(clap::Args)]
pub(crate) struct CharacterizeArgs {
    /// Per-inference costs: a costs file (JSON) or a built-in name
    /// (resnet18-tinyimagenet-cryptonite: CryptoNite's published figures). Repeatable.
    #[arg(long, value_name = "FILE|NAME")]
    costs: Vec<String>,
    /// The JSON `tessera compare --out DIR` wrote (DIR/compare.json): every scheme it ran.
    /// Repeatable.
    #[arg(long, value_name = "FILE")]
    compare: Vec<PathBuf>,
    /// Hardware profile: a JSON file or a built-in name (cryptonite: CryptoNite's Atom client,
    /// EPYC server, 500/500 Mbps; local: the measuring machine). Default: cryptonite for
    /// --costs only, local when --compare is given.
    #[arg(long, value_name = "FILE|NAME")]
    profile: Option<String>,
    /// Arrival rates to sweep, requests per second (default: the profile's).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Client storage budgets to sweep, bytes (K, M, G: powers of 1024; default: the
    /// profile's, decimal GB in the built-in ones).
    #[arg(long, value_delimiter = ',', value_parser = parse_bytes)]
    client_storage: Vec<u64>,
    /// The server's storage budget, bytes (default: the profile's).
    #[arg(long, value_parser = parse_bytes)]
    server_storage: Option<u64>,
    /// Requests simulated per point (default: the profile's; warm-up is 5% of them).
    #[arg(long)]
    requests: Option<usize>,
    /// Seed of the arrivals (every scheme sees the same ones).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the charts (SVG and PNG, one per client storage budget) and the JSON here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// What `characterize` reports.
#[derive(Serialize)]
struct Report {
    profile: Profile,
    deployment: Deployment,
    schemes: Vec<SchemeCosts>,
    points: Vec<Point>,
    /// Per (client storage, rate): the scheme with the lowest mean latency among stable ones.
    winners: Vec<Winner>,
    /// Per (client storage, rate) where both are stable: server-garbler's mean latency over
    /// client-garbler's (CryptoNite's headline), when both schemes are present.
    garbler_ratios: Vec<Ratio>,
    charts: Vec<String>,
}

#[derive(Serialize)]
struct Winner {
    client_storage: Option<u64>,
    lambda: f64,
    scheme: Option<String>,
    mean_s: Option<f64>,
}

#[derive(Serialize)]
struct Ratio {
    client_storage: Option<u64>,
    lambda: f64,
    server_garbler_mean_s: f64,
    client_garbler_mean_s: f64,
    ratio: f64,
}

fn sim_err(e: tessera_sim::SimError) -> CliError {
    CliError::Usage(e.to_string())
}

pub(crate) fn main(a: &CharacterizeArgs) -> Result<()> {
    if a.costs.is_empty() && a.compare.is_empty() {
        return Err(CliError::Usage(
            "give the costs to model: --costs FILE|NAME (e.g. resnet18-tinyimagenet-cryptonite) \
             and/or --compare DIR/compare.json (from `tessera compare --out DIR`)"
                .into(),
        ));
    }
    let mut schemes = Vec::new();
    for c in &a.costs {
        schemes.extend(load_costs(c).map_err(sim_err)?);
    }
    for f in &a.compare {
        schemes.extend(costs_from_compare(f)?);
    }
    let name = a.profile.clone().unwrap_or_else(|| {
        if a.compare.is_empty() {
            "cryptonite".into()
        } else {
            "local".into()
        }
    });
    let profile = Profile::load(&name).map_err(sim_err)?;
    let mut d = profile.deployment.clone().unwrap_or(Deployment {
        arrival_rates: vec![0.01, 0.1, 1.0],
        client_storage_bytes: Vec::new(),
        server_storage_bytes: None,
        requests: 40_000,
        seed: 1,
        warmup: 2_000,
    });
    if !a.rates.is_empty() {
        d.arrival_rates = a.rates.clone();
    }
    if !a.client_storage.is_empty() {
        d.client_storage_bytes = a.client_storage.clone();
    }
    if a.server_storage.is_some() {
        d.server_storage_bytes = a.server_storage;
    }
    if let Some(n) = a.requests {
        d.requests = n;
        d.warmup = n / 20;
    }
    if let Some(s) = a.seed {
        d.seed = s;
    }
    d.validate("the command line").map_err(sim_err)?;
    if !a.json {
        eprintln!(
            "characterize: {} schemes × {} storage budgets × {} rates, {} requests each, profile {}",
            schemes.len(),
            d.client_storage_bytes.len().max(1),
            d.arrival_rates.len(),
            d.requests,
            profile.name
        );
    }
    let points = tessera_sim::sweep(&schemes, &profile, &d).map_err(sim_err)?;
    let mut r = Report {
        winners: winners(&points),
        garbler_ratios: ratios(&points),
        profile,
        deployment: d,
        schemes,
        points,
        charts: Vec::new(),
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        match charts(&r, dir) {
            Ok(files) => r.charts = files.iter().map(|p| p.display().to_string()).collect(),
            Err(e) => eprintln!("charts not written: {e}"),
        }
        let text = serde_json::to_vec_pretty(&r).map_err(|e| CliError::Usage(e.to_string()))?;
        crate::write_atomic(&dir.join("characterize.json"), &text)?;
    }
    if a.json {
        return print_json(&r);
    }
    print_tables(&r);
    Ok(())
}

fn budget(b: Option<u64>) -> String {
    b.map_or("unlimited".into(), |b| format!("{}B", human(b)))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("unstable".into(), |s| {
        if s >= 100.0 {
            format!("{s:.0}")
        } else if s >= 1.0 {
            format!("{s:.2}")
        } else {
            format!("{s:.4}")
        }
    })
}

fn print_tables(r: &Report) {
    let mut t = Table::new(&[
        "scheme",
        "client storage",
        "fit",
        "rate /s",
        "mean s",
        "p95 s",
        "found precompute",
        "load",
        "online s",
        "offline s",
    ]);
    for p in &r.points {
        t.row(vec![
            p.scheme.clone(),
            budget(p.client_storage),
            p.precomputes_fit.map_or("-".into(), |k| {
                if k == u64::MAX {
                    "any".into()
                } else {
                    k.to_string()
                }
            }),
            format!("{}", p.lambda),
            secs(p.mean_s),
            secs(p.p95_s),
            p.hit_fraction
                .map_or("-".into(), |h| format!("{:.1}%", 100.0 * h)),
            format!("{:.3}", p.load),
            secs(Some(p.online_s)),
            secs(Some(p.offline_s)),
        ]);
    }
    println!(
        "profile {} ({} requests per point):\n{}",
        r.profile.name,
        r.deployment.requests,
        t.render()
    );
    // Rates down, client storage budgets across: the scheme with the lowest mean latency.
    let mut budgets: Vec<Option<u64>> = Vec::new();
    for x in &r.winners {
        if !budgets.contains(&x.client_storage) {
            budgets.push(x.client_storage);
        }
    }
    let head: Vec<String> = std::iter::once("rate /s".to_string())
        .chain(budgets.iter().map(|b| format!("client {}", budget(*b))))
        .collect();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    let mut w = Table::new(&head);
    for &l in &r.deployment.arrival_rates {
        let mut cells = vec![format!("{l}")];
        for b in &budgets {
            let x = r
                .winners
                .iter()
                .find(|x| x.client_storage == *b && x.lambda == l);
            cells.push(match x.and_then(|x| x.scheme.clone().zip(x.mean_s)) {
                Some((s, m)) => format!("{s} ({} s)", secs(Some(m))),
                None => "none stable".into(),
            });
        }
        w.row(cells);
    }
    println!("lowest mean latency (which scheme wins):\n{}", w.render());
    if !r.garbler_ratios.is_empty() {
        let mut g = Table::new(&[
            "client storage",
            "rate /s",
            "server-garbler s",
            "client-garbler s",
            "ratio",
        ]);
        for x in &r.garbler_ratios {
            g.row(vec![
                budget(x.client_storage),
                format!("{}", x.lambda),
                secs(Some(x.server_garbler_mean_s)),
                secs(Some(x.client_garbler_mean_s)),
                format!("{:.2}×", x.ratio),
            ]);
        }
        println!(
            "server-garbler over client-garbler mean latency (CryptoNite's headline: 4× for \
             ResNet-18/TinyImageNet):\n{}",
            g.render()
        );
    }
    if !r.charts.is_empty() {
        println!("charts: {}", r.charts.join(", "));
    }
}

/// (client storage budget, arrival rate): the points simulated under the same conditions.
type Group<'a> = ((Option<u64>, f64), Vec<&'a Point>);

/// Points grouped by (client storage, rate), in sweep order.
fn groups(points: &[Point]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for p in points {
        let key = (p.client_storage, p.lambda);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(p),
            None => out.push((key, vec![p])),
        }
    }
    out
}

fn winners(points: &[Point]) -> Vec<Winner> {
    groups(points)
        .into_iter()
        .map(|((client_storage, lambda), ps)| {
            let best = ps
                .iter()
                .filter_map(|p| p.mean_s.map(|m| (m, p)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            Winner {
                client_storage,
                lambda,
                scheme: best.map(|(_, p)| p.scheme.clone()),
                mean_s: best.map(|(m, _)| m),
            }
        })
        .collect()
}

fn ratios(points: &[Point]) -> Vec<Ratio> {
    groups(points)
        .into_iter()
        .filter_map(|((client_storage, lambda), ps)| {
            let mean = |name: &str| {
                ps.iter()
                    .find(|p| p.scheme.contains(name))
                    .and_then(|p| p.mean_s)
            };
            let (s, c) = (mean("server-garbler")?, mean("client-garbler")?);
            Some(Ratio {
                client_storage,
                lambda,
                server_garbler_mean_s: s,
                client_garbler_mean_s: c,
                ratio: s / c.max(f64::MIN_POSITIVE),
            })
        })
        .collect()
}

/// Mean latency against arrival rate, one chart per client storage budget.
fn charts(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let budgets: Vec<Option<u64>> = if r.deployment.client_storage_bytes.is_empty() {
        vec![r.profile.client_storage_bytes]
    } else {
        r.deployment
            .client_storage_bytes
            .iter()
            .copied()
            .map(Some)
            .collect()
    };
    let xs = &r.deployment.arrival_rates;
    let mut files = Vec::new();
    for b in budgets {
        let series: Vec<Series> = r
            .schemes
            .iter()
            .map(|s| Series {
                name: s.scheme.clone(),
                values: xs
                    .iter()
                    .map(|&l| {
                        r.points
                            .iter()
                            .find(|p| {
                                p.scheme == s.scheme && p.client_storage == b && p.lambda == l
                            })
                            .and_then(|p| p.mean_s)
                    })
                    .collect(),
            })
            .collect();
        let tag = b.map_or("unlimited".into(), |b| format!("{}", b));
        files.extend(lines(
            &dir.join(format!("latency-under-load-{tag}")),
            &format!(
                "mean latency under load, client storage {} ({})",
                budget(b),
                r.profile.name
            ),
            "arrival rate, requests/s (log)",
            "mean latency, s (log; gaps: unstable)",
            xs,
            &series,
        )?);
    }
    Ok(files)
}

/// A compare JSON's rows as per-scheme costs (see the module docs for the mapping).
fn costs_from_compare(path: &Path) -> Result<Vec<SchemeCosts>> {
    let file = path.display().to_string();
    let bad = |what: String| {
        CliError::Usage(format!(
            "{file}: {what}; give the compare.json that `tessera compare --out DIR` wrote"
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: file.clone(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let model = v.get("model").and_then(Value::as_str).unwrap_or("model");
    let rows = v
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"rows\" array".into()))?;
    let mut out = Vec::new();
    for row in rows {
        let scheme = row
            .get("scheme")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a row without \"scheme\"".into()))?;
        let f = |k: &str| -> Result<f64> {
            row.get(k)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad(format!("row {scheme}: \"{k}\" missing or not a number ≥ 0")))
        };
        let u = |k: &str| -> Result<u64> {
            row.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("row {scheme}: \"{k}\" missing or not a count")))
        };
        let base = scheme.split(' ').next().unwrap_or(scheme);
        if base == "plain" {
            continue; // the unprotected reference is not a deployment
        }
        let lat = f("latency_ms_median")? / 1e3;
        let modeled = row
            .get("modeled_tee_ms_median")
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|m| m / 1e3);
        let mut online = PhaseCost {
            client_s: 0.0,
            server_s: lat,
            trusted_s: modeled.map_or(0.0, |m| (m - lat).max(0.0)),
            up_bytes: u("bytes_up")?,
            down_bytes: u("bytes_down")?,
            rounds: u("rounds")?,
        };
        if matches!(base, "tee" | "attested") {
            online.server_s = 0.0;
            online.trusted_s = modeled.unwrap_or(lat);
        }
        let offline_s = f("offline_ms_median")? / 1e3;
        let (offline, producer) = if offline_s > 0.0 {
            let enclave = base == "gc";
            (
                Some(PhaseCost {
                    client_s: 0.0,
                    server_s: if enclave { 0.0 } else { offline_s },
                    trusted_s: if enclave { offline_s } else { 0.0 },
                    up_bytes: u("offline_up")?,
                    down_bytes: u("offline_down")?,
                    rounds: 0,
                }),
                if enclave {
                    Producer::Enclave
                } else {
                    Producer::Joint
                },
            )
        } else {
            (None, Producer::None)
        };
        out.push(SchemeCosts {
            scheme: scheme.to_string(),
            offline,
            online,
            client_stored_bytes: u("stored_client")?,
            server_stored_bytes: u("stored_server")?,
            offline_producer: producer,
            source: format!("measured by tessera compare on {model} ({file})"),
        });
    }
    if out.is_empty() {
        return Err(bad("no scheme rows besides plain".into()));
    }
    Ok(out)
}
