//! Whole-network exactness: for dense ReLU networks, the plaintext backend and the decoded
//! evaluation of a garbling both equal the engine's integer rule bit for bit — for random
//! networks and inputs (proptest) and for the Dash A model (784-128-128-10) quantized by the
//! engine itself.
//!
//! Timings are printed (run with `--nocapture` to see them); the garbled Dash A case runs a few
//! seconds in the dev profile.

use std::time::Instant;

use proptest::prelude::*;
use tessera_engine::quant::{quantize, rescale, static_widths};
use tessera_engine::{QuantConfig, QuantModel};
use tessera_garble::circuit::{DenseLayer, DenseNetwork};
use tessera_garble::{
    CrtBasis, EvalBackend, Evaluator, GarbleBackend, GarbleError, Garbler, Label, OutputDecoder,
    PlainBackend, PlainWire, Seed,
};
use tessera_model::{Graph, Op, Tensor};

/// The engine's rule written out in plain i64: acc = Σ w·x + b, y = rescale(acc, f), ReLU on
/// every layer but the last.
fn reference(net: &DenseNetwork, x: &[i64]) -> Vec<i64> {
    let f = net.frac_bits();
    let last = net.layers().len() - 1;
    let mut x = x.to_vec();
    for (index, layer) in net.layers().iter().enumerate() {
        x = layer
            .weights()
            .chunks(layer.inputs())
            .zip(layer.biases())
            .map(|(row, &b)| {
                let acc = row.iter().zip(&x).map(|(w, v)| w * v).sum::<i64>() + b;
                let y = rescale(acc, f);
                if index == last { y } else { y.max(0) }
            })
            .collect();
    }
    x
}

/// The network on the plaintext backend, decoded.
fn plain_run(net: &DenseNetwork, basis: &CrtBasis, x: &[i64]) -> Result<Vec<i64>, GarbleError> {
    let wires = x
        .iter()
        .map(|&v| {
            let r = basis.encode(v)?;
            Ok(basis
                .moduli()
                .iter()
                .zip(r)
                .map(|(&m, v)| PlainWire::new(m, u64::from(v)))
                .collect())
        })
        .collect::<Result<Vec<Vec<PlainWire>>, GarbleError>>()?;
    net.run(&mut PlainBackend, &wires)?
        .iter()
        .map(|w| basis.decode(&w.iter().map(|p| p.value()).collect::<Vec<_>>()))
        .collect()
}

/// What one garbled run produced besides the values.
struct GarbledRun {
    logits: Vec<i64>,
    ciphertexts: u64,
    garble_s: f64,
    eval_s: f64,
}

/// Garbles the network, encodes `x`, evaluates, and decodes the returned output labels with an
/// [`OutputDecoder`] (digests of the valid labels, as the garbler would).
fn garbled_run(
    net: &DenseNetwork,
    basis: &CrtBasis,
    x: &[i64],
    seed: [u8; 32],
) -> Result<GarbledRun, GarbleError> {
    let start = Instant::now();
    let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes(seed)));
    let zeros: Vec<Vec<Label>> = (0..net.inputs())
        .map(|_| {
            basis
                .moduli()
                .iter()
                .map(|&m| g.garbler_mut().input_wire(m))
                .collect()
        })
        .collect();
    let out_zeros = net.run(&mut g, &zeros)?;
    let (mut garbler, tables) = g.into_parts();
    let mut decoder = OutputDecoder::new([0x5a; 16]);
    for wire in out_zeros.iter().flatten() {
        decoder.push(wire, garbler.delta(wire.modulus()))?;
    }
    let ciphertexts = garbler.cost().ciphertexts;
    let garble_s = start.elapsed().as_secs_f64();

    let mut labels = Vec::with_capacity(x.len());
    for (&v, zero) in x.iter().zip(&zeros) {
        let residues = basis.encode(v)?;
        labels.push(
            zero.iter()
                .zip(residues)
                .map(|(z, r)| garbler.encode(z, u64::from(r)))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }

    let start = Instant::now();
    let mut e = EvalBackend::new(Evaluator::new(garbler.hash_key()), tables);
    let out = net.run(&mut e, &labels)?;
    e.finish()?;
    let eval_s = start.elapsed().as_secs_f64();

    let mut index = 0;
    let mut logits = Vec::with_capacity(out.len());
    for value in &out {
        let mut residues = Vec::with_capacity(value.len());
        for label in value {
            residues.push(decoder.decode(index, label)?);
            index += 1;
        }
        logits.push(basis.decode(&residues)?);
    }
    Ok(GarbledRun {
        logits,
        ciphertexts,
        garble_s,
        eval_s,
    })
}

/// A random dense net from flat weight and bias lists.
fn random_net(
    sizes: &[usize],
    weights: &[i64],
    biases: &[i64],
    f: u32,
) -> Result<DenseNetwork, GarbleError> {
    let mut layers = Vec::new();
    let (mut wi, mut bi) = (0, 0);
    for pair in sizes.windows(2) {
        let (n_in, n_out) = (pair[0], pair[1]);
        layers.push(DenseLayer::new(
            n_in,
            weights[wi..wi + n_in * n_out].to_vec(),
            biases[bi..bi + n_out].to_vec(),
        )?);
        wi += n_in * n_out;
        bi += n_out;
    }
    DenseNetwork::new(layers, f)
}

const SIZES: [usize; 4] = [12, 8, 8, 4];
const WEIGHTS: usize = 12 * 8 + 8 * 8 + 8 * 4;
const BIASES: usize = 8 + 8 + 4;
const INPUT_MAX: i64 = 60;

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_dense_nets_are_exact_in_plaintext_and_garbled(
        f in 3u32..=5,
        weights in prop::collection::vec(-9i64..=9, WEIGHTS),
        biases in prop::collection::vec(-300i64..=300, BIASES),
        x in prop::collection::vec(-INPUT_MAX..=INPUT_MAX, 12),
        seed in any::<[u8; 32]>(),
    ) {
        let net = random_net(&SIZES, &weights, &biases, f).expect("shapes");
        let k = net.min_primes(INPUT_MAX.unsigned_abs()).expect("fits some k");
        let basis = CrtBasis::first_primes(k).expect("basis");
        // The worst case fits with the rescale's headroom.
        let half = (basis.product() / 2) as u128;
        prop_assert!(net.acc_bound(INPUT_MAX.unsigned_abs()) + 2 + (1 << (f - 1)) <= half);

        let want = reference(&net, &x);
        prop_assert_eq!(&plain_run(&net, &basis, &x).expect("plain"), &want);
        let run = garbled_run(&net, &basis, &x, seed).expect("garbled");
        prop_assert_eq!(&run.logits, &want);
        prop_assert_eq!(run.ciphertexts, net.cost(k).expect("cost").ciphertexts);
    }
}

#[test]
fn range_violations_are_refused_or_detected_up_front() {
    let net = random_net(&[2, 1], &[i64::MAX, 1], &[0], 3).expect("shapes");
    assert!(net.min_primes(1 << 20).is_err());
}

/// The dense layers of a Dense/ReLU/Reshape graph, quantized exactly as the engine does:
/// weights at 2^f, biases at 2^(2f).
fn dense_layers(g: &Graph, f: u32) -> DenseNetwork {
    let mut layers = Vec::new();
    let mut relus = 0;
    for n in &g.nodes {
        match &n.op {
            Op::Dense(d) => {
                let w: Vec<i64> = d
                    .weight
                    .data()
                    .iter()
                    .map(|&v| quantize(v, f).expect("weight fits"))
                    .collect();
                let rows = d.weight.shape()[0];
                let b: Vec<i64> = match &d.bias {
                    Some(b) => b
                        .data()
                        .iter()
                        .map(|&v| quantize(v, 2 * f).expect("bias fits"))
                        .collect(),
                    None => vec![0; rows],
                };
                layers.push(DenseLayer::new(d.weight.shape()[1], w, b).expect("shape"));
            }
            Op::Relu => relus += 1,
            Op::Reshape => {}
            other => panic!("not a dense ReLU network: {}", other.kind()),
        }
    }
    // ReLU after every dense layer but the last, as `DenseNetwork` assumes.
    assert_eq!(relus + 1, layers.len());
    DenseNetwork::new(layers, f).expect("chain")
}

/// A synthetic 28×28 "digit": pixels 0..=255 from a seed, scaled to [0, 1] like MNIST.
fn synthetic_image(seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..28 * 28)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // A blob in the middle, noise elsewhere, as integer pixels 0..=255.
            let (r, c) = ((i / 28) as i64 - 14, (i % 28) as i64 - 14);
            let pixel = if r * r + c * c < 40 {
                200 + (s % 56)
            } else {
                s % 64
            };
            pixel as f32 / 255.0
        })
        .collect()
}

/// Dash A at f fractional bits: the network, the engine model, and k from the worst case.
fn dash_a(f: u32) -> (DenseNetwork, QuantModel, CrtBasis) {
    let g = tessera_model::builders::dash_a(11).expect("builds");
    let qm = QuantModel::new(
        &g,
        QuantConfig {
            frac_bits: f,
            max_bits: None,
        },
    )
    .expect("quantizes");
    let net = dense_layers(&g, f);
    let x_max = quantize(1.0, f).expect("fits").unsigned_abs();
    // Our bound is per row; the engine's static widths take max Σ|w| and max |b| separately,
    // so they can only be looser.
    let engine_acc = static_widths(&qm, 1.0)
        .expect("widths")
        .iter()
        .map(|w| w.acc_max)
        .max()
        .unwrap_or(0);
    assert!(net.acc_bound(x_max) <= engine_acc);
    let k = net.min_primes(x_max).expect("fits");
    eprintln!(
        "dash-a f = {f}: worst |acc| = {} (engine static bound {engine_acc}), k = {k}",
        net.acc_bound(x_max)
    );
    (net, qm, CrtBasis::first_primes(k).expect("basis"))
}

fn quantized_input(image: &[f32], f: u32) -> Vec<i64> {
    image
        .iter()
        .map(|&v| quantize(v, f).expect("fits"))
        .collect()
}

fn engine_logits(qm: &QuantModel, image: &[f32]) -> Vec<i64> {
    let t = Tensor::new(vec![1, 1, 28, 28], image.to_vec()).expect("shape");
    let run = qm.run(&[t]).expect("runs");
    run.outputs[0].data().to_vec()
}

#[test]
fn dash_a_plaintext_backend_equals_the_engine() {
    for f in [3, 4] {
        let (net, qm, basis) = dash_a(f);
        let cost = net.cost(basis.len()).expect("cost");
        eprintln!(
            "dash-a f = {f}, k = {}: {} gates, {} ciphertexts, {} bytes",
            basis.len(),
            cost.gates,
            cost.ciphertexts,
            cost.bytes
        );
        for seed in 0..3 {
            let image = synthetic_image(seed);
            let want = engine_logits(&qm, &image);
            let x = quantized_input(&image, f);
            assert_eq!(reference(&net, &x), want, "f = {f}, image {seed}");
            assert_eq!(
                plain_run(&net, &basis, &x).expect("plain"),
                want,
                "f = {f}, image {seed}"
            );
        }
    }
}

#[test]
fn dash_a_garbled_evaluation_equals_the_engine() {
    let f = 4;
    let (net, qm, basis) = dash_a(f);
    let image = synthetic_image(7);
    let want = engine_logits(&qm, &image);
    // A meaningful comparison: logits of both signs, not a network that collapsed to zero.
    assert!(want.iter().any(|&v| v > 0) && want.iter().any(|&v| v < 0));
    let run = garbled_run(&net, &basis, &quantized_input(&image, f), [3; 32]).expect("garbled");
    assert_eq!(run.logits, want);
    let cost = net.cost(basis.len()).expect("cost");
    assert_eq!(run.ciphertexts, cost.ciphertexts);
    eprintln!(
        "dash-a f = {f}, k = {}: {} gates, {} ciphertexts, {} bytes; garble {:.2} s, evaluate {:.2} s",
        basis.len(),
        cost.gates,
        cost.ciphertexts,
        cost.bytes,
        run.garble_s,
        run.eval_s
    );
}
