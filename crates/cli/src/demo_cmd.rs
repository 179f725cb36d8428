//! `tessera demo`: the main job — train a model, run private inference under every scheme that
//! works, end with one table comparing their costs.

use crate::compare_cmd::{Row, compare, finish};
use crate::quant_args::QuantArgs;
use crate::{CliError, Result, progress, resolve_model};
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::time::Instant;
use tessera_asym::{TrainOptions, Trainer, rebatch};
use tessera_data::{Dataset, load_mnist_dir, synth};
use tessera_model::{Graph, GraphBuilder, Op, Tensor};
use tessera_schemes::{Link, SCHEMES, Summary};

/// The main job: train a model on generated data, run private inference under every scheme
/// that works, and end with one table comparing their costs. Needs nothing outside the repository.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Test images per scheme.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Use this ONNX model (with --data for MNIST) instead of the self-trained one.
    #[arg(long)]
    model: Option<String>,
    /// MNIST directory, used with --model.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    quant: QuantArgs,
    /// Write the comparison charts (SVG and PNG) and JSON here.
    #[arg(long, default_value = "demo-out", value_name = "DIR")]
    out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(a: &DemoArgs) -> Result<()> {
    demo(a)
}

/// Test images the demo runs through `gc` and `2pc` (each inference carries its own garbling).
const SLOW_IMAGES: usize = 20;

/// The demo's CNN for 16×16 glyphs: small enough for every scheme, with convolutions for asym
/// to split.
fn demo_cnn(batch: usize) -> std::result::Result<Graph, tessera_model::ModelError> {
    let mut b = GraphBuilder::new("demo-cnn", 11);
    let mut x = b.input("input", vec![batch, 1, synth::SIDE, synth::SIDE])?;
    x = b.conv(x, 8, 3, 1, 1)?;
    x = b.relu(x)?;
    x = b.max_pool(x, 2, 2)?;
    x = b.conv(x, 16, 3, 1, 1)?;
    x = b.relu(x)?;
    x = b.max_pool(x, 2, 2)?;
    x = b.flatten(x)?;
    let y = b.dense(x, 10)?;
    b.finish(vec![y])
}

/// Trains [`demo_cnn`] on `train` (whole, in this process) and returns it at batch 1.
fn train_cnn(train: &Dataset, json: bool) -> Result<Graph> {
    let usage = |e: String| CliError::Usage(format!("training the demo's CNN: {e}"));
    let (batch, epochs) = (32usize, 3usize);
    let g = demo_cnn(batch)?;
    let mut t = Trainer::new(
        &g,
        TrainOptions {
            lr: 0.02,
            momentum: 0.9,
            split: None,
        },
    )
    .map_err(|e| usage(e.to_string()))?;
    let steps = train.count / batch;
    let pb = if json {
        ProgressBar::hidden()
    } else {
        progress((epochs * steps) as u64, "training")
    };
    for _ in 0..epochs {
        for s in 0..steps {
            let idx: Vec<usize> = (s * batch..(s + 1) * batch).collect();
            let (x, labels) = crate::train_cmd::batch_of(train, &idx)?;
            let r = t
                .step(&x, &labels, None)
                .map_err(|e| usage(e.to_string()))?;
            pb.set_message(format!("loss {:.3}", r.loss));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    // Trained on inputs in [0, 1]; the schemes feed pixels 0..255: the first convolution
    // (zero padding, so scaling its input is scaling its weights) takes the 1/255.
    let mut g = rebatch(t.graph(), 1).map_err(|e| usage(e.to_string()))?;
    match g.nodes.first_mut().map(|n| &mut n.op) {
        Some(Op::Conv(c)) => c.weight = c.weight.map(|w| w / 255.0),
        _ => return Err(usage("the first layer is not the convolution".into())),
    }
    Ok(g)
}

fn demo(a: &DemoArgs) -> Result<()> {
    let (quant, json, n) = (&a.quant, a.json, a.n);
    let (g, test, calib, calib_source) = match &a.model {
        Some(spec) => {
            let g = resolve_model(spec, &quant.import_options())?;
            let dir = a
                .data
                .clone()
                .unwrap_or_else(|| PathBuf::from("../shared/data/mnist-t10k"));
            let mut d = load_mnist_dir(&dir)?;
            d.truncate(n);
            let calib: Vec<Tensor> = (0..d.count.min(64)).filter_map(|i| d.image(i)).collect();
            (g, d, calib, "the first 64 images of --data")
        }
        None => {
            let train = synth::glyphs(6000, 11);
            let mut test = synth::glyphs(n, 12);
            test.truncate(n);
            let t0 = Instant::now();
            let g = train_cnn(&train, json)?;
            if !json {
                println!(
                    "trained {} (conv 8 3×3, pool, conv 16 3×3, pool, dense 10) on 6,000 generated \
                     glyph images in {:.1} s",
                    g.name,
                    t0.elapsed().as_secs_f64()
                );
            }
            let calib: Vec<Tensor> = (0..64).filter_map(|i| train.image(i)).collect();
            (g, test, calib, "64 training glyphs")
        }
    };
    let names: Vec<String> = SCHEMES.iter().map(|s| s.to_string()).collect();
    let mut r = compare(
        &g,
        &test,
        &calib,
        calib_source,
        quant,
        &names,
        SLOW_IMAGES,
        !json,
    )?;
    r.inputs = format!("{} test images", test.count);
    // attested: train on an attested (software-TPM) host with keys from the broker in the
    // enclave, then predict in the enclave; its row, computed from that run, joins the table.
    let dir = std::env::temp_dir().join(format!("tessera-demo-attested-{}", std::process::id()));
    if !json {
        println!(
            "attested: stakeholders, broker, swtpm-attested host, training, inference in the enclave…"
        );
    }
    let attested = tessera_attested::demo_flow_with(&dir, false);
    let _ = std::fs::remove_dir_all(&dir);
    match attested {
        Ok(x) => {
            let k = x.test_rows.max(1) as u64;
            if !json {
                println!("{}", x.summary());
            }
            r.rows.push(Row {
                summary: Summary {
                    scheme: "attested".into(),
                    protects: "data and model from hosts off the allow-list (software TPM here)"
                        .into(),
                    inferences: x.test_rows,
                    correct: Some((x.test_accuracy * x.test_rows as f64).round() as usize),
                    exact_matches: 0,
                    exact_semantics: false,
                    latency_ms_median: x.inference_mean_ms,
                    bytes_up: x.inference_bytes.0 / k,
                    bytes_down: x.inference_bytes.1 / k,
                    rounds: x.inference_rounds / k,
                    offline_ms_median: 0.0,
                    waited_ms_median: 0.0,
                    offline_up: 0,
                    offline_down: 0,
                    stored_client: 0,
                    stored_server: 0,
                    // Every prediction runs in the inference enclave; nothing is offloaded.
                    trusted_share: (x.inference_enclave_ns > 0).then_some(1.0),
                    modeled_tee_ms_median: Some(x.modeled_sgx_mean_ms),
                    links: vec![Link {
                        name: "client-enclave".into(),
                        up: x.inference_bytes.0 / k,
                        down: x.inference_bytes.1 / k,
                        rounds: x.inference_rounds / k,
                        ..Link::default()
                    }],
                },
                semantics: "float".into(),
                float_correct: None,
            });
            r.notes.push(format!(
                "attested trained its own model ({}, {} epochs on {} generated glyph rows) \
                 on the attested host and predicted {} held-out rows in the enclave (means, float)",
                x.network, x.epochs, x.train_rows, x.test_rows
            ));
        }
        Err(e) => r.skipped.push(crate::compare_cmd::Skipped {
            scheme: "attested".into(),
            reason: format!("not run: {e}"),
        }),
    }
    finish(&mut r, Some(&a.out), json)
}
