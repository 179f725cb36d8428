//! `tessera run` (one input under one scheme) and `tessera eval` (a data set: accuracy of the
//! float and integer engines, and a scheme's outputs checked against the integer reference).

use crate::quant_args::QuantArgs;
use crate::scheme_setup::{make_scheme, require_scheme};
use crate::table::Table;
use crate::{CliError, Result, pct, print_json, progress, resolve_model};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tessera_data::{Dataset, load_input, load_mnist_dir, synth};
use tessera_engine::quant::{NodeWidth, merge_widths};
use tessera_engine::{ExactModel, FloatModel, Semantics, argmax, run_f32};
use tessera_model::Graph;
use tessera_schemes::{Summary, summarize};

/// Run one input through a model under a scheme and print the prediction and its costs.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// An ONNX file, or a built-in network name.
    model: String,
    /// Input: FILE.pb (ONNX TensorProto), FILE.npy, FILE.png, or IDXFILE:INDEX (an MNIST idx image).
    #[arg(long)]
    input: String,
    /// Protection scheme.
    #[arg(long, default_value = "plain")]
    scheme: String,
    #[command(flatten)]
    quant: QuantArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Accuracy of float vs quantized execution on a data set, with per-layer integer widths.
#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// An ONNX file, or a built-in network name.
    model: String,
    /// Data set: mnist[:N] (MNIST test set from --data) or glyphs[:N] (generated).
    #[arg(long, default_value = "mnist")]
    dataset: String,
    /// Directory holding t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz].
    #[arg(long, default_value = "../shared/data/mnist-t10k")]
    data: PathBuf,
    /// Scheme whose outputs are checked against the integer reference.
    #[arg(long, default_value = "plain")]
    scheme: String,
    #[command(flatten)]
    quant: QuantArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main_run(a: &RunArgs) -> Result<()> {
    run(&a.model, &a.input, &a.scheme, &a.quant, a.json)
}

pub(crate) fn main_eval(a: &EvalArgs) -> Result<()> {
    eval(&a.model, &a.dataset, &a.data, &a.scheme, &a.quant, a.json)
}

fn run(spec: &str, input: &str, scheme: &str, quant: &QuantArgs, json: bool) -> Result<()> {
    let g = resolve_model(spec, &quant.import_options())?;
    let sem = quant.semantics_for(&g, scheme)?;
    require_scheme(scheme, &g, &sem)?;
    let x = load_input(input)?;
    let float = run_f32(&g, std::slice::from_ref(&x))?;
    let f0 = float
        .first()
        .ok_or_else(|| CliError::Usage("the model has no output".into()))?;
    let mut s = make_scheme(scheme, &g, quant, &sem)?;
    let r = s.infer(&x)?;
    let caveat = s.caveat();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            scheme: &'a str,
            /// Set when the result holds only with a caveat ("calibrated, not sound").
            caveat: Option<String>,
            class: usize,
            output: &'a [f32],
            exact_output: &'a [i64],
            /// The integer semantics, in words.
            semantics: String,
            /// The real value of one step of `exact_output`.
            output_scale: f64,
            float_output: &'a [f32],
            float_class: usize,
            cost: &'a tessera_schemes::Cost,
        }
        return print_json(&Out {
            scheme,
            caveat,
            class: r.class,
            output: r.output.data(),
            exact_output: r.exact.data(),
            semantics: sem.label(),
            output_scale: r.scale,
            float_output: f0.data(),
            float_class: argmax(f0.data()),
            cost: &r.cost,
        });
    }
    println!(
        "scheme {scheme}{}: class {} (float engine: class {})",
        caveat.map_or(String::new(), |c| format!(" ({c})")),
        r.class,
        argmax(f0.data())
    );
    let mut t = Table::new(&["index", "scheme output", "exact integer", "float"]);
    for (i, ((o, e), f)) in r
        .output
        .data()
        .iter()
        .zip(r.exact.data())
        .zip(f0.data())
        .enumerate()
        .take(20)
    {
        t.row(vec![
            i.to_string(),
            format!("{o:.4}"),
            e.to_string(),
            format!("{f:.4}"),
        ]);
    }
    println!("{}", t.render());
    let c = &r.cost;
    println!(
        "online {:.3} ms, {} B up, {} B down, {} rounds (every link, seen from the data owner's side)",
        c.latency.as_secs_f64() * 1e3,
        c.bytes_up,
        c.bytes_down,
        c.rounds,
    );
    if c.offline > std::time::Duration::ZERO {
        println!(
            "offline {:.3} ms ({:.3} ms of it waited for), {} B up, {} B down",
            c.offline.as_secs_f64() * 1e3,
            c.waited.as_secs_f64() * 1e3,
            c.offline_up,
            c.offline_down
        );
    }
    println!(
        "stored ahead: {} B on the data owner's side, {} B on the untrusted side{}",
        c.stored_client,
        c.stored_server,
        c.trusted_share().map_or(String::new(), |s| format!(
            "; trusted share {:.1}% of the compute time",
            100.0 * s
        ))
    );
    for l in &c.links {
        println!(
            "  link {}: online {} B up / {} B down / {} rounds, offline {} B up / {} B down",
            l.name, l.up, l.down, l.rounds, l.offline_up, l.offline_down
        );
    }
    if let Some(m) = r.cost.modeled_tee {
        println!(
            "modeled latency in a real TEE (cost model, not measured): {:.3} ms",
            m.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

pub(crate) fn parse_dataset(spec: &str, dir: &Path) -> Result<Dataset> {
    let (name, n) = match spec.split_once(':') {
        Some((a, b)) => (
            a,
            Some(b.parse::<usize>().map_err(|_| {
                CliError::Usage(format!("'{b}' is not a count in --dataset {spec}"))
            })?),
        ),
        None => (spec, None),
    };
    let mut d = match name {
        "mnist" => load_mnist_dir(dir)?,
        "glyphs" => synth::glyphs(n.unwrap_or(2000), 2),
        other => {
            return Err(CliError::Usage(format!(
                "unknown data set '{other}'; use mnist[:N] or glyphs[:N]"
            )));
        }
    };
    if let Some(n) = n {
        d.truncate(n);
    }
    Ok(d)
}

#[derive(Serialize)]
pub(crate) struct EvalReport {
    pub(crate) model: String,
    pub(crate) images: usize,
    /// The integer semantics, in words.
    pub(crate) semantics: String,
    pub(crate) float_correct: usize,
    pub(crate) quantized_correct: usize,
    pub(crate) agreement: usize,
    pub(crate) scheme: Summary,
    pub(crate) widths: Vec<NodeWidth>,
}

pub(crate) fn evaluate(
    g: &Graph,
    d: &Dataset,
    scheme: &str,
    quant: &QuantArgs,
    sem: &Semantics,
    show: bool,
) -> Result<EvalReport> {
    use rayon::prelude::*;
    let qm = ExactModel::new(g, sem)?;
    let fm = FloatModel::new(g)?;
    let pb = if show {
        progress(d.count as u64, "reference")
    } else {
        ProgressBar::hidden()
    };
    let refs: Vec<(usize, tessera_model::Tensor<i64>, Vec<NodeWidth>)> = (0..d.count)
        .into_par_iter()
        .map(|i| -> Result<_> {
            let x = d
                .image(i)
                .ok_or_else(|| CliError::Usage(format!("image {i} missing")))?;
            let f = argmax(
                fm.run(std::slice::from_ref(&x))?
                    .first()
                    .map(|t| t.data())
                    .unwrap_or(&[]),
            );
            // Widths are tracked by the power-of-two engine; v2 saturates every activation and
            // its intervals are proven (`inspect` prints them).
            let (out, widths) = match &qm {
                ExactModel::Pow2(q) => {
                    let r = q.run(&[x])?;
                    let out = r
                        .outputs
                        .into_iter()
                        .next()
                        .ok_or_else(|| CliError::Usage("no output".into()))?;
                    (out, r.widths)
                }
                ExactModel::V2(m) => (m.run(&x)?, Vec::new()),
            };
            pb.inc(1);
            Ok((f, out, widths))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mut s = make_scheme(scheme, g, quant, sem)?;
    let pb = if show {
        progress(d.count as u64, scheme)
    } else {
        ProgressBar::hidden()
    };
    let mut runs = Vec::with_capacity(d.count);
    for i in 0..d.count {
        let x = d
            .image(i)
            .ok_or_else(|| CliError::Usage(format!("image {i} missing")))?;
        runs.push(s.infer(&x)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let exact: Vec<_> = refs.iter().map(|r| r.1.clone()).collect();
    let summary = summarize(
        s.as_ref(),
        &runs,
        (!d.labels.is_empty()).then_some(&d.labels[..]),
        &exact,
        scheme != "plain",
    );
    let mut widths = Vec::new();
    let (mut fc, mut qc, mut agree) = (0, 0, 0);
    for (i, (f, out, w)) in refs.iter().enumerate() {
        let q = argmax(qm.dequantize(out)?.data());
        let y = d.labels.get(i).map(|&l| usize::from(l));
        fc += usize::from(Some(*f) == y);
        qc += usize::from(Some(q) == y);
        agree += usize::from(*f == q);
        merge_widths(&mut widths, w);
    }
    Ok(EvalReport {
        model: g.name.clone(),
        images: d.count,
        semantics: sem.label(),
        float_correct: fc,
        quantized_correct: qc,
        agreement: agree,
        scheme: summary,
        widths,
    })
}

pub(crate) fn eval(
    spec: &str,
    dataset: &str,
    dir: &Path,
    scheme: &str,
    quant: &QuantArgs,
    json: bool,
) -> Result<()> {
    let g = resolve_model(spec, &quant.import_options())?;
    let sem = quant.semantics_for(&g, scheme)?;
    require_scheme(scheme, &g, &sem)?;
    let d = parse_dataset(dataset, dir)?;
    let r = evaluate(&g, &d, scheme, quant, &sem, !json)?;
    if json {
        return print_json(&r);
    }
    println!("{} on {} images ({}):", r.model, r.images, r.semantics);
    println!(
        "  float top-1       {} ({})",
        r.float_correct,
        pct(r.float_correct, r.images)
    );
    println!(
        "  quantized top-1   {} ({})",
        r.quantized_correct,
        pct(r.quantized_correct, r.images)
    );
    println!(
        "  float/quantized top-1 agreement {} ({})",
        r.agreement,
        pct(r.agreement, r.images)
    );
    println!(
        "  scheme {}: {} of {} outputs bit-exact with the integer reference, median latency {:.3} ms",
        r.scheme.scheme, r.scheme.exact_matches, r.images, r.scheme.latency_ms_median
    );
    let mut t = Table::new(&["node", "op", "out bits", "acc bits"]);
    for w in &r.widths {
        t.row(vec![
            w.name.clone(),
            w.op.clone(),
            w.out_bits().to_string(),
            w.acc_bits().to_string(),
        ]);
    }
    println!("largest signed integer widths reached:\n{}", t.render());
    Ok(())
}
