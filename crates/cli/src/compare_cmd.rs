//! `tessera compare MODEL`: every scheme of the build on the same inputs, all parties on this
//! machine, one table (and JSON) of the same measured costs, and charts of latency, bytes and
//! stored bytes per scheme. `demo` ends with the same comparison on its own model.
//!
//! The columns follow `tessera_schemes::Cost`'s definitions: online latency and bytes on every
//! link, offline time and bytes apart, the time an inference waited for offline material, stored
//! bytes on each side, and the trusted share as measured trusted-side time over all compute.

use crate::chart::{Series, bars};
use crate::quant_args::QuantArgs;
use crate::run_cmd::evaluate;
use crate::table::Table;
use crate::{CliError, Result, human, pct, print_json, resolve_model};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tessera_data::{Dataset, load_input};
use tessera_engine::Semantics;
use tessera_model::{Graph, Tensor};
use tessera_schemes::{SCHEMES, Summary};

/// Run every scheme (or those named) on one model and the same inputs; print one table of
/// their measured costs and write charts.
#[derive(clap::Args)]
pub(crate) struct CompareArgs {
    /// An ONNX file, or a built-in network name (see `tessera build --list`).
    model: String,
    /// Schemes to run, comma-separated (default: every scheme of this build; a scheme that
    /// cannot run the model is listed with the reason).
    #[arg(long, value_delimiter = ',')]
    schemes: Vec<String>,
    /// Inputs: mnist[:N] (from --data), glyphs[:N], generated[:N] (seeded inputs shaped like
    /// the model's, values 0..255), or a folder of .npy/.pb/.png inputs.
    #[arg(long, default_value = "generated:20")]
    dataset: String,
    /// MNIST directory for --dataset mnist.
    #[arg(long, default_value = "../shared/data/mnist-t10k")]
    data: PathBuf,
    /// At most this many of the inputs for the schemes whose every inference carries its own
    /// offline work when run back to back (gc garbles, 2pc preprocesses).
    #[arg(long, default_value_t = 20)]
    slow_n: usize,
    /// Write the charts (SVG and PNG) and the JSON report into this folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    quant: QuantArgs,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// A scheme that was not run, and why.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Skipped {
    pub scheme: String,
    pub reason: String,
}

/// One scheme's row: its summary and the accuracy of the engines on the same inputs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    #[serde(flatten)]
    pub summary: Summary,
    /// The integer semantics this row ran (a scheme may need v2 where the others ran pow2).
    pub semantics: String,
    /// Float engine top-1 on the same inputs, when labels are known.
    pub float_correct: Option<usize>,
}

/// What `compare` reports.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub model: String,
    pub inputs: String,
    pub rows: Vec<Row>,
    pub skipped: Vec<Skipped>,
    /// Remarks every reader needs (simulated TEE, float schemes, sampled schemes).
    pub notes: Vec<String>,
    /// Chart files written.
    pub charts: Vec<String>,
}

pub(crate) fn main(a: &CompareArgs) -> Result<()> {
    if a.slow_n == 0 {
        return Err(CliError::Usage(
            "--slow-n 0 would run gc and 2pc on no input; give at least 1".into(),
        ));
    }
    let g = resolve_model(&a.model, &a.quant.import_options())?;
    let d = load_inputs(&a.dataset, &a.data, &g)?;
    let calib: Vec<Tensor> = (0..d.count.min(64)).filter_map(|i| d.image(i)).collect();
    let names: Vec<String> = if a.schemes.is_empty() {
        SCHEMES.iter().map(|s| s.to_string()).collect()
    } else {
        a.schemes.clone()
    };
    let mut r = compare(
        &g,
        &d,
        &calib,
        &format!("the first {} inputs of {}", calib.len(), a.dataset),
        &a.quant,
        &names,
        a.slow_n,
        !a.json,
    )?;
    r.inputs = format!("{} ({} inputs)", a.dataset, d.count);
    finish(&mut r, a.out.as_deref(), a.json)
}

/// Write charts and JSON into `out` (when given), then print the table or the JSON.
pub(crate) fn finish(r: &mut Report, out: Option<&Path>, json: bool) -> Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        match charts(r, dir) {
            Ok(files) => r.charts = files.iter().map(|p| p.display().to_string()).collect(),
            // The table and the JSON stand without the pictures.
            Err(e) => eprintln!("charts not written: {e}"),
        }
        let text = serde_json::to_vec_pretty(&r).map_err(|e| CliError::Usage(e.to_string()))?;
        crate::write_atomic(&dir.join("compare.json"), &text)?;
    }
    if json {
        return print_json(r);
    }
    println!("\n{}", table(r));
    for n in &r.notes {
        println!("{n}");
    }
    if !r.charts.is_empty() {
        println!("charts: {}", r.charts.join(", "));
    }
    Ok(())
}

/// The inputs named by `spec`, shaped for `g`: a folder, `generated[:N]` (the benchmarks'
/// seeded inputs), or a data set `parse_dataset` knows.
fn load_inputs(spec: &str, dir: &Path, g: &Graph) -> Result<Dataset> {
    let shape: Vec<usize> = g
        .inputs
        .first()
        .map(|&i| g.shape(i).to_vec())
        .unwrap_or_default();
    let &[1, c, h, w] = shape.as_slice() else {
        return Err(CliError::Usage(format!(
            "compare feeds [1, C, H, W] inputs; this model's input is {shape:?}"
        )));
    };
    let d = if Path::new(spec).is_dir() {
        folder(Path::new(spec), [c, h, w])?
    } else if let Some(n) = spec.strip_prefix("generated") {
        let n = match n.strip_prefix(':') {
            Some(k) => k.parse::<usize>().map_err(|_| {
                CliError::Usage(format!("'{k}' is not a count in --dataset {spec}"))
            })?,
            None if n.is_empty() => 20,
            None => {
                return Err(CliError::Usage(format!(
                    "unknown data set '{spec}'; use generated[:N], mnist[:N], glyphs[:N] or a folder"
                )));
            }
        };
        let images = crate::bench_cmd::synth_images(g, n);
        Dataset {
            count: images.len(),
            channels: c,
            rows: h,
            cols: w,
            pixels: images
                .iter()
                .flat_map(|t| t.data().iter().copied())
                .collect(),
            labels: Vec::new(),
        }
    } else {
        crate::parse_dataset(spec, dir)?
    };
    if (d.channels, d.rows, d.cols) != (c, h, w) {
        return Err(CliError::Usage(format!(
            "the inputs of {spec} are {}×{}×{}, the model takes {c}×{h}×{w}",
            d.channels, d.rows, d.cols
        )));
    }
    if d.count == 0 {
        return Err(CliError::Usage(format!("{spec} holds no inputs")));
    }
    Ok(d)
}

/// Every .npy, .pb and .png file of `dir` (sorted by name), each of shape `[1, C, H, W]`.
fn folder(dir: &Path, chw: [usize; 3]) -> Result<Dataset> {
    let io = |source| CliError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "npy" | "pb" | "png"))
        })
        .collect();
    files.sort();
    let [c, h, w] = chw;
    let mut pixels = Vec::with_capacity(files.len() * c * h * w);
    for f in &files {
        let t = load_input(&f.display().to_string())?;
        if t.shape() != [1, c, h, w] {
            return Err(CliError::Usage(format!(
                "{}: shape {:?}, the model takes [1, {c}, {h}, {w}]",
                f.display(),
                t.shape()
            )));
        }
        pixels.extend_from_slice(t.data());
    }
    Ok(Dataset {
        count: files.len(),
        channels: c,
        rows: h,
        cols: w,
        pixels,
        labels: Vec::new(),
    })
}

/// Runs `names` on `d` (the slow schemes on its first `slow_n` inputs). Under pow2, lhe and
/// 2pc (which reproduce v2 only) run v2 calibrated on `calib`, and their rows say so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare(
    g: &Graph,
    d: &Dataset,
    calib: &[Tensor],
    calib_source: &str,
    quant: &QuantArgs,
    names: &[String],
    slow_n: usize,
    show: bool,
) -> Result<Report> {
    let sem = match (&quant.calibrate, quant.v2_for(g)) {
        (None, true) => quant.semantics_on(g, calib, calib_source)?,
        _ => quant.semantics(g)?,
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut notes = Vec::new();
    let mut sampled = Vec::new();
    // 2pc runs as two rows, one per variant, unless --variant picks one.
    let mut runs: Vec<(String, Option<&str>)> = Vec::new();
    for name in names {
        match (name.as_str(), &quant.variant) {
            ("2pc", None) => {
                runs.push((name.clone(), Some("server-garbler")));
                runs.push((name.clone(), Some("client-garbler")));
            }
            ("2pc", Some(_)) => runs.push((name.clone(), quant.variant.as_deref())),
            _ => runs.push((name.clone(), None)),
        }
    }
    for (name, variant) in &runs {
        let s = name.as_str();
        let label = match variant {
            Some(v) => format!("{s} {v}"),
            None => s.to_string(),
        };
        let mut quant = quant.clone();
        if let Some(v) = variant {
            quant.variant = Some(v.to_string());
        }
        let quant = &quant;
        if s == "attested" {
            skipped.push(Skipped {
                scheme: s.into(),
                reason: "attested trains its own model on the attested host and cannot run a \
                         given ONNX model (demo runs it on its own data)"
                    .into(),
            });
            continue;
        }
        let own;
        let sem_s = match (&sem, s) {
            (Semantics::Pow2(_), "lhe" | "2pc") => {
                let mut q = quant.clone();
                q.semantics = "v2".into();
                own = q.semantics_on(g, calib, calib_source)?;
                &own
            }
            _ => &sem,
        };
        if let Err(e) = crate::scheme_setup::require_scheme(s, g, sem_s) {
            skipped.push(Skipped {
                scheme: s.into(),
                reason: e.to_string(),
            });
            continue;
        }
        let mut sample;
        let data = if matches!(s, "gc" | "2pc") && d.count > slow_n {
            sample = d.clone();
            sample.truncate(slow_n);
            if !sampled.contains(&s) {
                sampled.push(s);
            }
            &sample
        } else {
            d
        };
        match evaluate(g, data, s, quant, sem_s, show) {
            Ok(mut r) => {
                if variant.is_some() {
                    r.scheme.scheme = r.scheme.scheme.replacen(s, &label, 1);
                }
                if show {
                    println!(
                        "{label}: {} of {} bit-exact with the integer reference{}",
                        r.scheme.exact_matches,
                        r.images,
                        r.scheme
                            .correct
                            .map_or(String::new(), |c| format!(", top-1 {}", pct(c, r.images)))
                    );
                }
                rows.push(Row {
                    float_correct: r.scheme.correct.map(|_| r.float_correct),
                    summary: r.scheme,
                    semantics: sem_s.label(),
                });
            }
            Err(e) => skipped.push(Skipped {
                scheme: label,
                reason: format!("failed: {e}"),
            }),
        }
    }
    if rows.iter().any(|r| r.summary.scheme.starts_with("tee"))
        || rows
            .iter()
            .any(|r| r.summary.modeled_tee_ms_median.is_some())
    {
        notes.push(
            "the enclave is SIMULATED here (no security); 'modeled TEE ms' applies the SGX1 cost \
             model to its measured work"
                .into(),
        );
    }
    if !sampled.is_empty() {
        notes.push(format!(
            "{} ran on the first {slow_n} inputs: each inference carries its own offline work \
             ('offline ms'; 'waited ms' is the part a back-to-back run could not hide)",
            sampled.join(" and ")
        ));
    }
    if rows.iter().any(|r| !r.summary.exact_semantics) {
        notes.push(
            "asym is a float scheme: its outputs equal the float engine within 1e-4, not the \
             integer reference ('float' in the bit-exact column)"
                .into(),
        );
    }
    notes.push(
        "bytes: online, every link, seen from the data owner's side (up leaves it); trusted \
         share: measured trusted-side compute time over all compute time"
            .into(),
    );
    Ok(Report {
        model: g.name.clone(),
        inputs: format!("{} inputs", d.count),
        rows,
        skipped,
        notes,
        charts: Vec::new(),
    })
}

/// The comparison table.
pub(crate) fn table(r: &Report) -> String {
    let mut t = Table::new(&[
        "scheme",
        "top-1",
        "bit-exact",
        "online ms",
        "waited ms",
        "offline ms",
        "modeled TEE ms",
        "online up / down",
        "offline up / down",
        "rounds",
        "stored client / server",
        "trusted share",
    ]);
    for row in &r.rows {
        let s = &row.summary;
        t.row(vec![
            s.scheme.clone(),
            s.correct.map_or("-".into(), |c| pct(c, s.inferences)),
            if s.exact_semantics {
                format!("{}/{}", s.exact_matches, s.inferences)
            } else {
                "float".into()
            },
            format!("{:.3}", s.latency_ms_median),
            format!("{:.1}", s.waited_ms_median),
            format!("{:.1}", s.offline_ms_median),
            s.modeled_tee_ms_median
                .map_or("-".into(), |m| format!("{m:.3}")),
            format!("{} / {}", human(s.bytes_up), human(s.bytes_down)),
            format!("{} / {}", human(s.offline_up), human(s.offline_down)),
            s.rounds.to_string(),
            format!("{} / {}", human(s.stored_client), human(s.stored_server)),
            s.trusted_share
                .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
        ]);
    }
    for s in &r.skipped {
        let mut cells = vec![s.scheme.clone(), format!("not run: {}", s.reason)];
        cells.resize(12, String::new());
        t.row(cells);
    }
    let hides: Vec<String> = r
        .rows
        .iter()
        .map(|x| format!("  {:<9} {}", x.summary.scheme, x.summary.protects))
        .collect();
    format!(
        "{} on {}:\n{}\nwhat each scheme hides from the untrusted side:\n{}",
        r.model,
        r.inputs,
        t.render(),
        hides.join("\n")
    )
}

/// Latency, bytes and stored-bytes charts, SVG and PNG each.
fn charts(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let names: Vec<String> = r
        .rows
        .iter()
        .map(|x| {
            // The name without its caveat; 2pc's variants shortened to fit under a bar group.
            let s = &x.summary.scheme;
            s.split(" (")
                .next()
                .unwrap_or(s)
                .replace("server-garbler", "sg")
                .replace("client-garbler", "cg")
        })
        .collect();
    let col = |name: &str, f: &dyn Fn(&Summary) -> f64| Series {
        name: name.into(),
        values: r.rows.iter().map(|x| Some(f(&x.summary))).collect(),
    };
    let mut files = bars(
        &dir.join("latency"),
        &format!("{}: time per inference (median)", r.model),
        "milliseconds (log)",
        &names,
        &[
            col("online", &|s| s.latency_ms_median),
            col("offline", &|s| s.offline_ms_median),
            col("modeled in a TEE (online)", &|s| {
                s.modeled_tee_ms_median.unwrap_or(0.0)
            }),
        ],
        true,
    )?;
    files.extend(bars(
        &dir.join("bytes"),
        &format!(
            "{}: bytes moved per inference (median, every link)",
            r.model
        ),
        "bytes (log)",
        &names,
        &[
            col("online up", &|s| s.bytes_up as f64),
            col("online down", &|s| s.bytes_down as f64),
            col("offline up", &|s| s.offline_up as f64),
            col("offline down", &|s| s.offline_down as f64),
        ],
        true,
    )?);
    files.extend(bars(
        &dir.join("stored"),
        &format!("{}: bytes stored ahead per inference", r.model),
        "bytes (log)",
        &names,
        &[
            col("data owner's side", &|s| s.stored_client as f64),
            col("untrusted side", &|s| s.stored_server as f64),
        ],
        true,
    )?);
    Ok(files)
}
