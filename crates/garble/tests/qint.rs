//! Networks in the integer semantics v2 through the network circuit: at the sound k computed
//! from the circuit's own constants, the plaintext circuit and the garbled evaluation equal
//! `IntModel::run_int` bit for bit — on random residual nets with grouped and depthwise
//! convolutions, clamps (ReLU6), residual adds and padded average pools (proptest, every input
//! extreme included), and on mnist-8 with MNIST images (shared data).

use proptest::prelude::*;
use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_garble::network::{NetworkCircuit, decode, encode_input, evaluate, garble};
use tessera_garble::{GarbleError, OutputLabels, Seed};
use tessera_model::builders;
use tessera_model::{Graph, Tensor};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn model(g: &Graph, cfg: QintConfig, inputs: &[Tensor]) -> IntModel {
    let cal = ok(Calibration::from_inputs(g, inputs, "test"));
    ok(IntModel::new(g, cfg, &cal))
}

/// The circuit at its sound k.
fn sound_circuit(m: &IntModel) -> NetworkCircuit {
    ok(NetworkCircuit::compile_qint_sound(m))
}

fn garbled(c: &NetworkCircuit, x: &Tensor<i64>, seed: u8) -> Result<Tensor<i64>, GarbleError> {
    let mut material = Vec::new();
    let secrets = garble(c, &Seed::from_bytes([seed; 32]), &mut material)?;
    let (inputs, secrets) = encode_input(secrets, x)?;
    let out = evaluate(&c.public(), material.as_slice(), &inputs)?;
    let out = OutputLabels::from_bytes(&out.to_bytes()?)?;
    decode(&secrets, &out)
}

/// Inputs at the interval's ends and in between.
fn extreme_inputs(m: &IntModel, seed: u64) -> Vec<Tensor<i64>> {
    let iq = ok(m.input_quant());
    let shape = m.graph().shape(m.graph().inputs[0]).to_vec();
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let span = (iq.hi - iq.lo + 1) as u64;
    [
        vec![iq.hi; n],
        vec![iq.lo; n],
        (0..n)
            .map(|i| if i % 2 == 0 { iq.hi } else { iq.lo })
            .collect(),
        (0..n).map(|_| iq.lo + (next() % span) as i64).collect(),
    ]
    .into_iter()
    .map(|d| ok(Tensor::new(shape.clone(), d)))
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_residual_nets_are_exact_at_the_sound_k(
        seed in any::<u64>(),
        c in 1usize..=2,
        hw in 4usize..=7,
        mult_bits in 1u32..=10,
        aux_mult_bits in 1u32..=14,
        act_bits in 3u32..=8,
    ) {
        let g = ok(builders::mix_bn(hw, 3 * c, seed));
        let cfg = QintConfig { act_bits, mult_bits, aux_mult_bits, ..QintConfig::default() };
        let m = model(&g, cfg, &ok(default_calibration_inputs(&g, 0.0, 1.0, 4, seed)));
        let circuit = sound_circuit(&m);
        for x in extreme_inputs(&m, seed) {
            let want = ok(m.run_int(&x));
            prop_assert_eq!(ok(circuit.run_plain(&x)), want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// int8 models with their own grids and weights: ShuffleNet's split (slices), concatenation
    /// of branches on different grids and channel shuffle (a transpose) are gathers, masks and
    /// sums of labels; the plaintext circuit equals the engine at the sound k.
    #[test]
    fn int8_shuffle_units_are_exact_at_the_sound_k(seed in any::<u64>(), c in 1usize..=3, hw in 3usize..=6) {
        let g = ok(builders::shuffle_int8(hw, c, seed));
        let m = ok(IntModel::new(&g, QintConfig::default(), &Calibration::given("the model's grids")));
        let circuit = sound_circuit(&m);
        for x in extreme_inputs(&m, seed) {
            prop_assert_eq!(ok(circuit.run_plain(&x)), ok(m.run_int(&x)));
        }
    }
}

#[test]
fn an_int8_shuffle_unit_is_exact_garbled() {
    let g = ok(builders::shuffle_int8(5, 2, 8));
    let m = ok(IntModel::new(
        &g,
        QintConfig::default(),
        &Calibration::given("the model's grids"),
    ));
    let c = sound_circuit(&m);
    for (i, x) in extreme_inputs(&m, 9).iter().enumerate() {
        let want = ok(m.run_int(x));
        assert_eq!(ok(garbled(&c, x, i as u8)), want, "garbled, input {i}");
    }
    eprintln!("shuffle-int8: k = {}", c.primes());
}

#[test]
fn a_residual_net_is_exact_garbled() {
    let g = ok(builders::mix_bn(8, 6, 21));
    let m = model(
        &g,
        QintConfig::default(),
        &ok(default_calibration_inputs(&g, 0.0, 1.0, 8, 2)),
    );
    let c = sound_circuit(&m);
    for (i, x) in extreme_inputs(&m, 5).iter().enumerate() {
        let want = ok(m.run_int(x));
        assert_eq!(ok(c.run_plain(x)), want, "plaintext circuit, input {i}");
        assert_eq!(ok(garbled(&c, x, i as u8)), want, "garbled, input {i}");
    }
    let cost = ok(c.cost());
    eprintln!("mix: k = {}, {} ciphertexts", c.primes(), cost.ciphertexts);
}

/// Below the sound k the plaintext circuit wraps around for some extreme input: the bound is
/// not loose by a whole prime, and k is what keeps the circuit exact.
#[test]
fn the_sound_k_is_needed() {
    let g = ok(builders::mix_bn(6, 6, 4));
    let m = model(
        &g,
        QintConfig::default(),
        &ok(default_calibration_inputs(&g, 0.0, 1.0, 4, 1)),
    );
    let c = sound_circuit(&m);
    let k = c.primes();
    assert!(k > 2);
    let small = ok(NetworkCircuit::compile_qint(&m, 2));
    let wrong = extreme_inputs(&m, 3)
        .iter()
        .any(|x| small.run_plain(x).ok() != Some(ok(m.run_int(x))));
    assert!(wrong, "k = 2 should not hold this network (sound k = {k})");
}

/// The signs run over fewer primes than k where the values they resolve are small, and those
/// bases are what keeps them exact: with every sign over just 2 primes the circuit goes wrong.
#[test]
fn sign_bases_are_narrow_and_needed() {
    let g = ok(builders::mix_bn(6, 6, 4));
    let m = model(
        &g,
        QintConfig::default(),
        &ok(default_calibration_inputs(&g, 0.0, 1.0, 4, 1)),
    );
    let limit = ok(m.input_quant()).max_abs();
    let c0 = ok(NetworkCircuit::compile_qint(&m, 2));
    let k = ok(c0.sound_primes(limit));
    let c0 = ok(c0.with_primes(k));
    let k = c0.primes();
    let bases = ok(c0.sign_bases(limit));
    assert!(
        bases.iter().any(|&j| j != 0 && usize::from(j) < k),
        "some sign runs over fewer than k = {k} primes: {bases:?}"
    );
    assert!(bases.iter().all(|&j| usize::from(j) <= k));
    let narrow = ok(c0.clone().with_sign_bases(&bases));
    assert!(ok(narrow.cost()).ciphertexts < ok(c0.cost()).ciphertexts);
    let two: Vec<u8> = bases.iter().map(|&j| if j == 0 { 0 } else { 2 }).collect();
    let too_narrow = ok(c0.clone().with_sign_bases(&two));
    let wrong = extreme_inputs(&m, 3)
        .iter()
        .any(|x| too_narrow.run_plain(x).ok() != Some(ok(m.run_int(x))));
    assert!(wrong, "signs over 2 primes should not hold this network");
    // Malformed bases are refused.
    assert!(c0.clone().with_sign_bases(&bases[1..]).is_err());
    let over: Vec<u8> = bases
        .iter()
        .map(|&j| if j == 0 { 0 } else { k as u8 + 1 })
        .collect();
    assert!(c0.with_sign_bases(&over).is_err());
}

#[test]
fn mnist8_is_exact_in_v2() {
    let Some(dir) = tessera_data::shared_data("onnx-mnist-8") else {
        return;
    };
    let Some(mdir) = tessera_data::shared_data("mnist-t10k") else {
        return;
    };
    let g = ok(tessera_model::load_model(
        &dir.join("model.onnx"),
        &tessera_model::ImportOptions::default(),
    ));
    let data = ok(tessera_data::load_mnist_dir(&mdir));
    let images: Vec<Tensor> = (0..40).filter_map(|i| data.image(i)).collect();
    let m = model(&g, QintConfig::default(), &images[..32]);
    let c = sound_circuit(&m);
    eprintln!("mnist-8 v2: sound k = {}", c.primes());
    assert!(c.primes() <= 9, "sound k {} for mnist-8", c.primes());
    for (i, x) in images.iter().enumerate() {
        let q = ok(m.quantize_input(x));
        let want = ok(m.run_int(&q));
        assert_eq!(ok(c.run_plain(&q)), want, "plaintext circuit, image {i}");
        if i < 2 {
            assert_eq!(ok(garbled(&c, &q, i as u8)), want, "garbled, image {i}");
        }
    }
}
