//! The integer semantics v2 in the gc scheme: sound k, garbled size and time per network and
//! multiplier width B, and what B buys in accuracy. Run with
//! `cargo bench -p tessera-garble --bench qint [-- k accuracy error time]`; the mnist-8 rows need
//! ../shared/data (they are skipped with a note otherwise).

use std::time::Instant;

use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_engine::quant::{QuantConfig, QuantModel, static_widths};
use tessera_engine::{argmax, run_f32};
use tessera_garble::Seed;
use tessera_garble::network::{NetworkCircuit, encode_input, evaluate, garble};
use tessera_model::{Graph, Tensor, builders};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

/// mnist-8 and the first `n` MNIST test images, when the shared data is there.
fn mnist8(n: usize) -> Option<(Graph, Vec<Tensor>, Vec<u8>)> {
    let dir = tessera_data::shared_data("onnx-mnist-8")?;
    let mdir = tessera_data::shared_data("mnist-t10k")?;
    let g = ok(tessera_model::load_model(
        &dir.join("model.onnx"),
        &tessera_model::ImportOptions::default(),
    ));
    let data = ok(tessera_data::load_mnist_dir(&mdir));
    let images = (0..n.min(data.count))
        .filter_map(|i| data.image(i))
        .collect();
    Some((g, images, data.labels))
}

/// The networks with their calibration inputs: mnist-8 on 64 MNIST images, the builders on
/// 16 generated inputs in [0, 1].
fn networks() -> Vec<(String, Graph, Vec<Tensor>)> {
    let mut out = Vec::new();
    match mnist8(64) {
        Some((g, images, _)) => out.push(("mnist-8".to_string(), g, images)),
        None => println!("(mnist-8 skipped: ../shared/data is absent)"),
    }
    for name in [
        "dash-a", "dash-b", "dash-c", "dash-d", "f-small", "f", "mix",
    ] {
        let spec = builders::find(name).unwrap_or_else(|| panic!("{name}"));
        let g = ok((spec.build)(1));
        let cal = ok(default_calibration_inputs(&g, 0.0, 1.0, 16, 1));
        out.push((name.to_string(), g, cal));
    }
    out
}

fn lowered(g: &Graph, cal: &[Tensor], mult_bits: u32) -> IntModel {
    let c = ok(Calibration::from_inputs(g, cal, "bench"));
    let cfg = QintConfig {
        mult_bits,
        ..QintConfig::default()
    };
    ok(IntModel::new(g, cfg, &c))
}

fn sound(m: &IntModel) -> NetworkCircuit {
    ok(NetworkCircuit::compile_qint_sound(m))
}

fn section_k() {
    println!("\n## sound k and garbled size (8-bit weights and activations, 16-bit logits)\n");
    println!("| network | B | sound k | ciphertexts | garbled MB |");
    println!("|---|---|---|---|---|");
    for (name, g, cal) in networks() {
        for b in [2, 3, 4, 8] {
            let m = lowered(&g, &cal, b);
            let c = sound(&m);
            let cost = ok(c.cost());
            println!(
                "| {name} | {b} | {} | {} | {:.1} |",
                c.primes(),
                cost.ciphertexts,
                cost.bytes as f64 / 1e6
            );
        }
    }
}

fn section_accuracy() {
    println!(
        "\n## mnist-8: float vs v2 top-1 on the 10,000 MNIST test images (calibrated on the first 64)\n"
    );
    let Some((g, images, labels)) = mnist8(10_000) else {
        println!("(skipped: ../shared/data is absent)");
        return;
    };
    let float: Vec<usize> = images
        .iter()
        .map(|x| argmax(ok(run_f32(&g, std::slice::from_ref(x)))[0].data()))
        .collect();
    let float_acc = float
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **p == usize::from(**l))
        .count();
    println!(
        "float accuracy: {:.2}%\n",
        100.0 * float_acc as f64 / images.len() as f64
    );
    println!("| B | agreement with float | accuracy |");
    println!("|---|---|---|");
    for b in [1, 2, 3, 4, 5, 6, 8, 12] {
        let m = lowered(&g, &images[..64], b);
        let (mut agree, mut right) = (0, 0);
        for ((x, f), l) in images.iter().zip(&float).zip(&labels) {
            let y = ok(m.dequantize_output(&ok(m.run(x))));
            let p = argmax(y.data());
            agree += usize::from(p == *f);
            right += usize::from(p == usize::from(*l));
        }
        let n = images.len() as f64;
        println!(
            "| {b} | {:.2}% | {:.2}% |",
            100.0 * agree as f64 / n,
            100.0 * right as f64 / n
        );
    }
}

/// Largest |float − v2| over the largest |float| logit, on 8 generated inputs in [0, 1] that
/// the calibration (16 other generated inputs) did not see.
fn section_error() {
    println!(
        "\n## seeded-random networks: max relative logit error, float vs v2 (8-bit weights and activations)\n"
    );
    println!("| network | B = 1 | B = 2 | B = 3 | B = 4 | B = 8 |");
    println!("|---|---|---|---|---|---|");
    for name in [
        "dash-b",
        "f-small",
        "f",
        "mix",
        "resnet18-32",
        "vgg16-32",
        "resnet32-32",
    ] {
        let spec = builders::find(name).unwrap_or_else(|| panic!("{name}"));
        let g = ok((spec.build)(1));
        let cal = ok(default_calibration_inputs(&g, 0.0, 1.0, 16, 1));
        let test = ok(default_calibration_inputs(&g, 0.0, 1.0, 8, 2));
        let float: Vec<Tensor> = test
            .iter()
            .map(|x| ok(run_f32(&g, std::slice::from_ref(x))).remove(0))
            .collect();
        let mut row = format!("| {name} |");
        for b in [1, 2, 3, 4, 8] {
            let m = lowered(&g, &cal, b);
            let (mut err, mut top) = (0f32, 0f32);
            for (x, f) in test.iter().zip(&float) {
                let y = ok(m.dequantize_output(&ok(m.run(x))));
                for (a, q) in f.data().iter().zip(y.data()) {
                    err = err.max((a - q).abs());
                    top = top.max(a.abs());
                }
            }
            row += &format!(" {:.2}% |", 100.0 * err / top.max(f32::MIN_POSITIVE));
        }
        println!("{row}");
    }
}

/// Median seconds of three garble and three evaluate runs of `c` on input `x`, and the bytes.
fn time_circuit(c: &NetworkCircuit, x: &Tensor<i64>) -> (f64, f64, usize) {
    let (mut tg, mut te) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for rep in 0..3u8 {
        let mut material = Vec::new();
        let t = Instant::now();
        let secrets = ok(garble(c, &Seed::from_bytes([rep; 32]), &mut material));
        tg.push(t.elapsed().as_secs_f64());
        let (inputs, _key) = ok(encode_input(secrets, x));
        let t = Instant::now();
        ok(evaluate(&c.public(), material.as_slice(), &inputs));
        te.push(t.elapsed().as_secs_f64());
        bytes = material.len();
        drop(material);
    }
    tg.sort_by(f64::total_cmp);
    te.sort_by(f64::total_cmp);
    (tg[1], te[1], bytes)
}

/// Garbling and online time at the sound k, v2 (B = 3 and 8) against the power-of-two semantics
/// at f = 4 and its sound k (inputs up to 255 for mnist-8, 1 for the builders), same machine,
/// same run.
fn section_time() {
    println!("\n## garbling and online (evaluation) time at the sound k, all cores, median of 3\n");
    println!("| network | semantics | k | garble s | evaluate s | material MB |");
    println!("|---|---|---|---|---|---|");
    for (name, g, cal) in networks() {
        if !matches!(name.as_str(), "mnist-8" | "f-small") {
            continue;
        }
        let cfg = QuantConfig {
            frac_bits: 4,
            max_bits: None,
        };
        let qm = ok(QuantModel::new(&g, cfg));
        let range = if name == "mnist-8" { 255.0 } else { 1.0 };
        let widths = ok(static_widths(&qm, range));
        let probe = ok(NetworkCircuit::compile(&g, cfg, 2));
        let c = ok(probe
            .clone()
            .with_primes(ok(probe.primes_needed(&widths, 0))));
        let x = ok(qm.quantize_inputs(std::slice::from_ref(&cal[0])));
        let (tg, te, bytes) = time_circuit(&c, &x[0]);
        println!(
            "| {name} | pow2 f = 4 | {} | {tg:.2} | {te:.2} | {:.1} |",
            c.primes(),
            bytes as f64 / 1e6
        );
        for b in [3, 8] {
            let m = lowered(&g, &cal, b);
            let c = sound(&m);
            let x = ok(m.quantize_input(&cal[0]));
            let (tg, te, bytes) = time_circuit(&c, &x);
            println!(
                "| {name} | v2 B = {b} | {} | {tg:.2} | {te:.2} | {:.1} |",
                c.primes(),
                bytes as f64 / 1e6
            );
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: only `cargo bench`
    // measures anything.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench` (release)");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    if want("k") {
        section_k();
    }
    if want("accuracy") {
        section_accuracy();
    }
    if want("error") {
        section_error();
    }
    if want("time") {
        section_time();
    }
}
