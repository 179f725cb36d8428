//! Security tests of the garbling (DESIGN §2.1).
//!
//! - The composite-modulus break, demonstrated on a deliberately weak toy garbling mod 86 that
//!   lives only in this file (the library refuses composite moduli), and the counting argument
//!   that rules it out for the supported primes.
//! - Tampering: flipped bits in garbled tables or returned labels, labels of another garbling and
//!   random labels are rejected by the garbler's output check, never decoded to a wrong value.
//! - No (label, tweak) pair is hashed twice across a garbled ReLU over a CRT tensor.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::HashSet;
use tessera_garble::gadget::relu;
use tessera_garble::{
    Backend, CrtBasis, Delta, EvalBackend, Evaluator, GarbleBackend, GarbleError, Garbler, Label,
    LabelTensor, Modulus, OutputDecoder, ProjectionTable, Seed,
};

fn m(q: u64) -> Modulus {
    Modulus::new(q).expect("prime")
}

// ---------------------------------------------------------------------------------------------
// (a) The zero-divisor attack on a composite modulus.
// ---------------------------------------------------------------------------------------------

/// The weak toy modulus: 86 = 2·43, as in Dash's mixed-radix wires.
const Q86: u16 = 86;
/// Digits of a toy label: ⌊128 / log2 86⌋ = 19, the size the modulus alone would give.
const TOY_DIGITS: usize = 19;

/// A toy label mod 86: 19 digits, digit 0 the colour.
type Toy = [u16; TOY_DIGITS];

fn toy_add(a: &Toy, b: &Toy) -> Toy {
    std::array::from_fn(|i| (a[i] + b[i]) % Q86)
}

fn toy_sub(a: &Toy, b: &Toy) -> Toy {
    std::array::from_fn(|i| (a[i] + Q86 - b[i]) % Q86)
}

fn toy_scale(a: &Toy, k: u16) -> Toy {
    std::array::from_fn(|i| (a[i] * (k % Q86)) % Q86)
}

/// A toy tweakable hash to 19 digits mod 86 (fixed-key AES; the small bias of the reduction is
/// irrelevant here). It is as strong a hash as one likes: the attack does not touch it.
fn toy_hash(aes: &Aes128, label: &Toy, row: u16) -> Toy {
    let x = label
        .iter()
        .rev()
        .fold(0u128, |acc, &d| acc * u128::from(Q86) + u128::from(d));
    let mut b = Array::from((x ^ (u128::from(row) << 120)).to_le_bytes());
    aes.encrypt_block(&mut b);
    let mut h = u128::from_le_bytes(b.0);
    std::array::from_fn(|_| {
        let d = (h % u128::from(Q86)) as u16;
        h /= u128::from(Q86);
        d
    })
}

/// A toy projection gate mod 86 → mod 86 without row reduction: row c (the colour of the input
/// label A₀ + x·Δ) is H(A₀ + x·Δ, c) + C₀ + φ(x)·Δ. One offset Δ for the modulus, as usual.
struct ToyGate {
    rows: Vec<Toy>,
}

fn toy_garble(aes: &Aes128, a0: &Toy, c0: &Toy, delta: &Toy, phi: &[u16]) -> ToyGate {
    let mut rows = vec![[0u16; TOY_DIGITS]; usize::from(Q86)];
    for x in 0..Q86 {
        let a = toy_add(a0, &toy_scale(delta, x));
        let out = toy_add(c0, &toy_scale(delta, phi[usize::from(x)]));
        rows[usize::from(a[0])] = toy_add(&toy_hash(aes, &a, a[0]), &out);
    }
    ToyGate { rows }
}

fn toy_eval(aes: &Aes128, gate: &ToyGate, a: &Toy) -> Toy {
    toy_sub(&gate.rows[usize::from(a[0])], &toy_hash(aes, a, a[0]))
}

fn inverse_mod_86(k: u16) -> Option<u16> {
    (1..Q86).find(|&i| (k * i) % Q86 == 1)
}

/// The evaluator holds ONE input label A = A₀ + x·Δ and the gate. 43·Δ has digits in {0, 43}
/// (colour digit 43, since Δ's colour is 1): 2^18 candidates. For each candidate K it opens the
/// row of A + K (the label of x + 43), derives Δ̂ = δ⁻¹·(Y' − Y) with δ = φ(x + 43) − φ(x), and
/// keeps Δ̂ if 43·Δ̂ = K and a third row opens consistently. Returns the recovered offset and the
/// number of candidates tried.
fn zero_divisor_attack(aes: &Aes128, gate: &ToyGate, a: &Toy, phi: &[u16], x: u16) -> (Toy, u64) {
    let y = toy_eval(aes, gate, a);
    let x2 = (x + 43) % Q86;
    let delta_phi = (phi[usize::from(x2)] + Q86 - phi[usize::from(x)]) % Q86;
    let inv = inverse_mod_86(delta_phi).expect("the test picks x with δ invertible");
    let x3 = (x + 1) % Q86;
    let step3 = (phi[usize::from(x3)] + Q86 - phi[usize::from(x)]) % Q86;
    let mut tried = 0u64;
    for bits in 0u32..(1 << (TOY_DIGITS - 1)) {
        tried += 1;
        let mut k = [0u16; TOY_DIGITS];
        k[0] = 43;
        for (i, d) in k.iter_mut().enumerate().skip(1) {
            *d = 43 * ((bits >> (i - 1)) & 1) as u16;
        }
        let y2 = toy_eval(aes, gate, &toy_add(a, &k));
        let cand = toy_scale(&toy_sub(&y2, &y), inv);
        if cand[0] != 1 || toy_scale(&cand, 43) != k {
            continue;
        }
        // Confirm on another row: the label of x + 1 is A + Δ̂.
        let y3 = toy_eval(aes, gate, &toy_add(a, &cand));
        if toy_sub(&y3, &y) == toy_scale(&cand, step3) {
            return (cand, tried);
        }
    }
    panic!("attack found no offset after {tried} candidates");
}

#[test]
fn zero_divisor_attack_breaks_a_composite_modulus_toy() {
    let mut rng = ChaCha20Rng::seed_from_u64(86);
    let aes = Aes128::new(&Array::from(rng.random::<[u8; 16]>()));
    let random_toy =
        |rng: &mut ChaCha20Rng| -> Toy { std::array::from_fn(|_| rng.random_range(0..Q86)) };
    let mut delta = random_toy(&mut rng);
    delta[0] = 1;
    let a0 = random_toy(&mut rng);
    let c0 = random_toy(&mut rng);
    // A secret-looking (random) projection, e.g. a garbled bias lookup.
    let phi: Vec<u16> = (0..Q86).map(|_| rng.random_range(0..Q86)).collect();
    let gate = toy_garble(&aes, &a0, &c0, &delta, &phi);
    // The evaluator's value: any x whose δ = φ(x + 43) − φ(x) is a unit mod 86.
    let x = (0..Q86)
        .find(|&x| {
            let d = (phi[usize::from((x + 43) % Q86)] + Q86 - phi[usize::from(x)]) % Q86;
            inverse_mod_86(d).is_some()
        })
        .expect("a random φ has such an x");
    let a = toy_add(&a0, &toy_scale(&delta, x));
    // Honest evaluation works.
    assert_eq!(
        toy_eval(&aes, &gate, &a),
        toy_add(&c0, &toy_scale(&delta, phi[usize::from(x)]))
    );
    let (recovered, tried) = zero_divisor_attack(&aes, &gate, &a, &phi, x);
    assert!(tried <= 1 << 18);
    assert_eq!(recovered, delta, "the attack recovers the secret offset Δ");
    // With Δ, every row opens: the evaluator learns the output label of every input value.
    for x2 in 0..Q86 {
        let a2 = toy_add(&a, &toy_scale(&delta, (x2 + Q86 - x) % Q86));
        assert_eq!(
            toy_eval(&aes, &gate, &a2),
            toy_add(&c0, &toy_scale(&delta, phi[usize::from(x2)]))
        );
    }
}

/// The size of {k·d mod q : d ∈ Z_q}: how many values one digit of k·Δ can take.
fn digit_image(q: u64, k: u64) -> u64 {
    (0..q).map(|d| (k * d) % q).collect::<HashSet<_>>().len() as u64
}

/// Bits of uncertainty in k·Δ: (n − 1) non-colour digits, each uniform on the image of d ↦ k·d.
fn offset_multiple_bits(q: u64, digits: usize, k: u64) -> f64 {
    (digits as f64 - 1.0) * (digit_image(q, k) as f64).log2()
}

#[test]
fn the_library_refuses_composites_and_prime_offsets_stay_uniform() {
    for (q, factor) in [(86, 2), (98, 2), (76, 2)] {
        assert_eq!(
            Modulus::new(q),
            Err(GarbleError::CompositeModulus { q, factor })
        );
        // The counting argument, for the record: a label sized by q has ⌊128/log2 q⌋ digits,
        // and (q/f)·Δ has at most f^(n−1) values — far below 2^120.
        let n = (128.0 / (q as f64).log2()).floor() as usize;
        let weakest = (1..q)
            .map(|k| offset_multiple_bits(q, n, k))
            .fold(f64::INFINITY, f64::min);
        assert!(weakest <= 40.0, "q = {q}: {weakest} bits");
    }
    // Every supported prime ≤ 23: every k ≠ 0 is a unit, d ↦ k·d is a bijection of Z_q, so
    // k·Δ is uniform on q^(n−1) values; log2 q^n ≥ 120 and log2 q^(n−1) ≥ 120 too.
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    for q in [2u64, 3, 5, 7, 11, 13, 17, 19, 23] {
        let modulus = m(q);
        let n = modulus.digits();
        assert!(n as f64 * (q as f64).log2() >= 120.0, "q = {q}");
        for k in 1..q {
            assert_eq!(digit_image(q, k), q, "q = {q}, k = {k}");
            assert!(offset_multiple_bits(q, n, k) >= 120.0, "q = {q}, k = {k}");
        }
        // And on the library's own offsets: every non-colour digit of k·Δ takes every value
        // over a few hundred random offsets, for every k ≠ 0.
        let deltas: Vec<Delta> = (0..200).map(|_| Delta::random(modulus, &mut rng)).collect();
        for k in 1..q {
            let seen: HashSet<u8> = deltas
                .iter()
                .flat_map(|d| d.times(k).digits()[1..].to_vec())
                .collect();
            assert_eq!(seen.len() as u64, q, "q = {q}, k = {k}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Tampering is detected by the output check.
// ---------------------------------------------------------------------------------------------

/// A garbled chain of projection gates: the tables, the input zero-label, the garbler and the
/// output decoder for the last wire.
struct Chain {
    garbler: Garbler,
    a0: Label,
    tables: Vec<ProjectionTable>,
    phis: Vec<Vec<u8>>,
    decoder: OutputDecoder,
}

const CHAIN: [u64; 7] = [7, 2, 11, 5, 13, 3, 17];

fn garble_chain(seed: u8) -> Chain {
    let mut garbler = Garbler::new(&Seed::from_bytes([seed; 32]));
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(seed));
    let a0 = garbler.input_wire(m(CHAIN[0]));
    let mut wire = a0.clone();
    let mut tables = Vec::new();
    let mut phis = Vec::new();
    for &q in &CHAIN[1..] {
        let p = wire.modulus().q();
        let phi: Vec<u8> = (0..p).map(|_| rng.random_range(0..q as u8)).collect();
        let (t, c0) = garbler.projection(&wire, m(q), &phi).expect("garble");
        tables.push(t);
        phis.push(phi);
        wire = c0;
    }
    let mut decoder = OutputDecoder::random(&mut rng);
    let delta = garbler.delta(wire.modulus()).clone();
    decoder.push(&wire, &delta).expect("push");
    Chain {
        garbler,
        a0,
        tables,
        phis,
        decoder,
    }
}

fn eval_chain(key: [u8; 16], tables: &[ProjectionTable], a: &Label) -> Result<Label, GarbleError> {
    let mut e = Evaluator::new(key);
    let mut l = a.clone();
    for t in tables {
        l = e.projection(t, &l)?;
    }
    Ok(l)
}

fn plain_chain(phis: &[Vec<u8>], x: u8) -> u8 {
    phis.iter().fold(x, |v, phi| phi[usize::from(v)])
}

#[test]
fn every_flipped_table_bit_is_rejected_or_harmless() {
    let mut chain = garble_chain(5);
    let key = chain.garbler.hash_key();
    let x = 4u8;
    let a = chain
        .garbler
        .encode(&chain.a0, u64::from(x))
        .expect("encode");
    let want = plain_chain(&chain.phis, x);
    // Honest runs decode, for every input.
    for x2 in 0..chain.a0.modulus().q() {
        let a2 = chain
            .garbler
            .encode(&chain.a0, u64::from(x2))
            .expect("encode");
        let out = eval_chain(key, &chain.tables, &a2).expect("evaluate");
        assert_eq!(
            chain.decoder.decode(0, &out),
            Ok(plain_chain(&chain.phis, x2))
        );
    }
    // The row the honest evaluation opens in each gate: colour − 1 (none for colour 0).
    let mut opened = Vec::new();
    let mut l = a.clone();
    let mut e = Evaluator::new(key);
    for t in &chain.tables {
        opened.push(usize::from(l.colour()).checked_sub(1));
        l = e.projection(t, &l).expect("evaluate");
    }
    let (mut flips, mut rejected, mut harmless) = (0u32, 0u32, 0u32);
    for (ti, table) in chain.tables.iter().enumerate() {
        for r in 0..table.rows().len() {
            for bit in 0..128 {
                flips += 1;
                let mut rows = table.rows().to_vec();
                let block = rows[r].to_block() ^ (1u128 << bit);
                // A block that is no label mod q is rejected when the table is parsed.
                let Ok(flipped) = Label::from_block(table.output(), block) else {
                    rejected += 1;
                    continue;
                };
                rows[r] = flipped;
                let mut tables = chain.tables.clone();
                tables[ti] =
                    ProjectionTable::new(table.gate(), table.input(), table.output(), rows)
                        .expect("well-formed");
                let out = eval_chain(key, &tables, &a).expect("evaluate");
                match chain.decoder.decode(0, &out) {
                    Err(GarbleError::InvalidOutputLabel { index: 0 }) => rejected += 1,
                    Ok(v) => {
                        // Only a row the evaluation never opened may leave the result intact.
                        assert_eq!(
                            v, want,
                            "table {ti} row {r} bit {bit}: wrong value accepted"
                        );
                        assert_ne!(opened[ti], Some(r), "table {ti} row {r} bit {bit}: missed");
                        harmless += 1;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
    }
    assert!(flips >= 2000, "{flips} flips");
    // Every flip of an opened row was caught (asserted above), and there was at least one.
    let opened_rows = opened.iter().flatten().count() as u32;
    assert!(
        opened_rows > 0 && rejected >= 128 * opened_rows,
        "{rejected} rejected"
    );
    eprintln!("{flips} flips: {rejected} rejected, {harmless} harmless (rows not opened)");
    assert_eq!(flips, rejected + harmless);
}

#[test]
fn flipped_foreign_and_random_output_labels_are_rejected() {
    let mut chain = garble_chain(6);
    let key = chain.garbler.hash_key();
    let a = chain.garbler.encode(&chain.a0, 3).expect("encode");
    let out = eval_chain(key, &chain.tables, &a).expect("evaluate");
    let want = plain_chain(&chain.phis, 3);
    assert_eq!(chain.decoder.decode(0, &out), Ok(want));
    // Every single-bit flip of the returned block.
    for bit in 0..128 {
        let block = out.to_block() ^ (1u128 << bit);
        assert_eq!(
            chain.decoder.decode_block_of(0, block),
            Err(GarbleError::InvalidOutputLabel { index: 0 }),
            "bit {bit}"
        );
    }
    // Labels from another garbling of the same circuit (different seed), for every input.
    let mut other = garble_chain(7);
    let other_key = other.garbler.hash_key();
    for x in 0..other.a0.modulus().q() {
        let a2 = other
            .garbler
            .encode(&other.a0, u64::from(x))
            .expect("encode");
        let foreign = eval_chain(other_key, &other.tables, &a2).expect("evaluate");
        assert_eq!(
            chain.decoder.decode(0, &foreign),
            Err(GarbleError::InvalidOutputLabel { index: 0 })
        );
        // Or this garbling's input label run through the other garbling's tables.
        let a3 = chain
            .garbler
            .encode(&chain.a0, u64::from(x))
            .expect("encode");
        let mixed = eval_chain(key, &other.tables, &a3).expect("evaluate");
        assert!(chain.decoder.decode(0, &mixed).is_err());
    }
    // Random labels and random blocks.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let q = chain.decoder.modulus(0).expect("output 0");
    for _ in 0..2000 {
        assert!(
            chain
                .decoder
                .decode(0, &Label::random(q, &mut rng))
                .is_err()
        );
        assert!(chain.decoder.decode_block_of(0, rng.random()).is_err());
    }
    // A label of the wrong modulus, and an output that does not exist.
    assert!(matches!(
        chain.decoder.decode(0, &Label::random(m(3), &mut rng)),
        Err(GarbleError::ModulusMismatch { .. })
    ));
    assert!(matches!(
        chain.decoder.decode(1, &out),
        Err(GarbleError::UnknownOutput { index: 1, .. })
    ));
}

/// Garbles ReLU of one CRT value; returns the garbler, the tables, the input zero-labels and
/// the output decoder over the output residues.
fn garble_relu(
    basis: &CrtBasis,
    seed: u8,
) -> (Garbler, Vec<ProjectionTable>, Vec<Label>, OutputDecoder) {
    let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([seed; 32])));
    let zeros: Vec<Label> = basis
        .moduli()
        .iter()
        .map(|&q| g.garbler_mut().input_wire(q))
        .collect();
    let outs = relu(&mut g, &zeros).expect("garble");
    let (mut garbler, tables) = g.into_parts();
    let mut decoder = OutputDecoder::random(&mut ChaCha20Rng::seed_from_u64(u64::from(seed)));
    for z in &outs {
        let delta = garbler.delta(z.modulus()).clone();
        decoder.push(z, &delta).expect("push");
    }
    (garbler, tables, zeros, decoder)
}

#[test]
fn flipped_bits_in_a_garbled_relu_are_rejected_or_harmless() {
    let basis = CrtBasis::first_primes(4).expect("basis");
    let (mut garbler, tables, zeros, decoder) = garble_relu(&basis, 9);
    let key = garbler.hash_key();
    let x = -37i64;
    let labels: Vec<Label> = zeros
        .iter()
        .zip(basis.encode(x).expect("in range"))
        .map(|(z, r)| garbler.encode(z, u64::from(r)).expect("encode"))
        .collect();
    let run = |tables: Vec<ProjectionTable>| -> Result<Vec<u8>, GarbleError> {
        let mut e = EvalBackend::new(Evaluator::new(key), tables);
        let out = relu(&mut e, &labels)?;
        e.finish()?;
        out.iter()
            .enumerate()
            .map(|(i, l)| decoder.decode(i, l))
            .collect()
    };
    let want = basis.encode(0).expect("relu(−37) = 0");
    assert_eq!(run(tables.clone()).expect("honest"), want);
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let (mut rejected, mut harmless) = (0u32, 0u32);
    for _ in 0..600 {
        let ti = rng.random_range(0..tables.len());
        let t = &tables[ti];
        let r = rng.random_range(0..t.rows().len());
        let bit = rng.random_range(0..128);
        let mut rows = t.rows().to_vec();
        let Ok(flipped) = Label::from_block(t.output(), rows[r].to_block() ^ (1u128 << bit)) else {
            rejected += 1;
            continue;
        };
        rows[r] = flipped;
        let mut tampered = tables.clone();
        tampered[ti] = ProjectionTable::new(t.gate(), t.input(), t.output(), rows).expect("table");
        match run(tampered) {
            Ok(v) => {
                assert_eq!(
                    v, want,
                    "table {ti} row {r} bit {bit}: wrong value accepted"
                );
                harmless += 1;
            }
            Err(GarbleError::InvalidOutputLabel { .. }) => rejected += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        rejected > 0 && harmless > 0,
        "{rejected} rejected, {harmless} harmless"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) No (label, tweak) pair repeats across a garbled ReLU over a CRT tensor.
// ---------------------------------------------------------------------------------------------

/// One hash input: (input modulus, compressed input label, gate, row).
type HashInput = (u8, u128, u64, u8);

/// The garbling backend, recording every hash input the garbler uses: for a projection gate on
/// the wire A₀ mod p it hashes all p labels A₀ + x·Δ_p, each with tweak (gate, its colour).
struct RecordingGarbler {
    inner: GarbleBackend,
    log: Vec<HashInput>,
}

impl Backend for RecordingGarbler {
    type Wire = Label;
    fn modulus_of(&self, w: &Label) -> Modulus {
        w.modulus()
    }
    fn add(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        self.inner.add(a, b)
    }
    fn sub(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        self.inner.sub(a, b)
    }
    fn mul_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        self.inner.mul_const(a, k)
    }
    fn add_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        self.inner.add_const(a, k)
    }
    fn project(&mut self, a: &Label, q: Modulus, phi: &[u16]) -> Result<Label, GarbleError> {
        let out = self.inner.project(a, q, phi)?;
        let gate = self
            .inner
            .tables()
            .last()
            .ok_or(GarbleError::Internal("no table"))?
            .gate();
        let p = a.modulus();
        let delta = self.inner.garbler_mut().delta(p).clone();
        for x in 0..p.q() {
            let l = delta.encode(a, u64::from(x))?;
            self.log.push((p.q(), l.to_block(), gate, l.colour()));
        }
        Ok(out)
    }
}

/// The evaluation backend, recording the one hash input per gate the evaluator uses.
struct RecordingEvaluator {
    inner: EvalBackend,
    gates: Vec<u64>,
    next: usize,
    log: Vec<HashInput>,
}

impl Backend for RecordingEvaluator {
    type Wire = Label;
    fn modulus_of(&self, w: &Label) -> Modulus {
        w.modulus()
    }
    fn add(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        self.inner.add(a, b)
    }
    fn sub(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        self.inner.sub(a, b)
    }
    fn mul_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        self.inner.mul_const(a, k)
    }
    fn add_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        self.inner.add_const(a, k)
    }
    fn project(&mut self, a: &Label, q: Modulus, phi: &[u16]) -> Result<Label, GarbleError> {
        let gate = *self
            .gates
            .get(self.next)
            .ok_or(GarbleError::TablesExhausted(self.next))?;
        self.next += 1;
        self.log
            .push((a.modulus().q(), a.to_block(), gate, a.colour()));
        self.inner.project(a, q, phi)
    }
}

#[test]
fn no_label_tweak_pair_repeats_across_a_garbled_relu_tensor() {
    const VALUES: usize = 128;
    let basis = CrtBasis::first_primes(7).expect("basis");
    let mut g = RecordingGarbler {
        inner: GarbleBackend::new(Garbler::new(&Seed::from_bytes([77; 32]))),
        log: Vec::new(),
    };
    // The input: a CRT tensor, one LabelTensor of VALUES zero-labels per modulus.
    let zero_tensors: Vec<LabelTensor> = basis
        .moduli()
        .iter()
        .map(|&q| g.inner.garbler_mut().input_tensor(q, &[VALUES]))
        .collect::<Result<_, _>>()
        .expect("inputs");
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let half = basis.max_value();
    let xs: Vec<i64> = (0..VALUES)
        .map(|_| rng.random_range(-half..=half))
        .collect();
    let mut out_zeros: Vec<Vec<Label>> = vec![Vec::new(); basis.len()];
    for v in 0..VALUES {
        let wires: Vec<Label> = zero_tensors
            .iter()
            .map(|t| t.label(v).expect("in range"))
            .collect();
        for (j, w) in relu(&mut g, &wires)
            .expect("garble")
            .into_iter()
            .enumerate()
        {
            out_zeros[j].push(w);
        }
    }
    let garble_log = std::mem::take(&mut g.log);
    let (mut garbler, tables) = g.inner.into_parts();

    // The garbler hashes every (label, tweak) pair at most once, and never reuses a tweak.
    let pairs: HashSet<HashInput> = garble_log.iter().copied().collect();
    assert_eq!(
        pairs.len(),
        garble_log.len(),
        "a (label, tweak) pair repeats"
    );
    let tweaks: HashSet<(u64, u8)> = garble_log.iter().map(|&(_, _, g, r)| (g, r)).collect();
    assert_eq!(tweaks.len(), garble_log.len(), "a tweak repeats");
    let gates: Vec<u64> = tables.iter().map(ProjectionTable::gate).collect();
    assert_eq!(gates.iter().collect::<HashSet<_>>().len(), gates.len());
    assert_eq!(garble_log.len() as u64, garbler.cost().hash_calls);

    // The evaluator's labels: the encoded tensor, residue by residue.
    let label_tensors: Vec<LabelTensor> = zero_tensors
        .iter()
        .zip(basis.moduli())
        .map(|(z, &q)| {
            let j = basis
                .moduli()
                .iter()
                .position(|&m| m == q)
                .expect("modulus");
            let residues: Vec<i64> = xs
                .iter()
                .map(|&x| i64::from(basis.encode(x).expect("in range")[j]))
                .collect();
            garbler.encode_tensor(z, &residues)
        })
        .collect::<Result<_, _>>()
        .expect("encode");
    let mut e = RecordingEvaluator {
        inner: EvalBackend::new(Evaluator::new(garbler.hash_key()), tables),
        gates,
        next: 0,
        log: Vec::new(),
    };
    let mut out_labels: Vec<Vec<Label>> = vec![Vec::new(); basis.len()];
    for v in 0..VALUES {
        let wires: Vec<Label> = label_tensors
            .iter()
            .map(|t| t.label(v).expect("in range"))
            .collect();
        for (j, w) in relu(&mut e, &wires)
            .expect("evaluate")
            .into_iter()
            .enumerate()
        {
            out_labels[j].push(w);
        }
    }
    e.inner.finish().expect("every table used");
    // The evaluator hashes one pair per gate, each among the garbler's, none twice.
    assert_eq!(e.log.len(), e.gates.len());
    assert!(e.log.iter().all(|entry| pairs.contains(entry)));
    assert_eq!(e.log.iter().collect::<HashSet<_>>().len(), e.log.len());

    // The outputs, checked with the batched output decoder, one tensor per modulus.
    let mut decoder = OutputDecoder::random(&mut rng);
    let mut residues_out = vec![vec![0u8; basis.len()]; VALUES];
    for (j, &q) in basis.moduli().iter().enumerate() {
        let zeros = LabelTensor::from_labels(q, &[VALUES], &out_zeros[j]).expect("tensor");
        let delta = garbler.delta(q).clone();
        let range = decoder.push_tensor(&zeros, &delta).expect("push");
        let labels = LabelTensor::from_labels(q, &[VALUES], &out_labels[j]).expect("tensor");
        let values = decoder.decode_tensor(range.start, &labels).expect("valid");
        for (v, r) in values.into_iter().enumerate() {
            residues_out[v][j] = r;
        }
    }
    let sum_q: usize = basis.moduli().iter().map(|q| usize::from(q.q())).sum();
    assert_eq!(
        decoder.bytes_kept(),
        VALUES * (16 * sum_q + basis.len()) + 16
    );
    for (x, r) in xs.iter().zip(&residues_out) {
        assert_eq!(basis.decode(r).expect("residues"), (*x).max(0), "x = {x}");
    }
}

/// A backend that records the modulus of every wire a gadget creates (on top of the cost
/// counter), to check the security floor over the gadgets' own choices of moduli.
#[derive(Default)]
struct Recording {
    inner: tessera_garble::CostBackend,
    moduli: std::collections::BTreeSet<u8>,
}

impl Recording {
    fn seen(&mut self, w: Modulus) -> Modulus {
        self.moduli.insert(w.q());
        w
    }
}

impl Backend for Recording {
    type Wire = Modulus;

    fn modulus_of(&self, w: &Modulus) -> Modulus {
        *w
    }

    fn add(&mut self, a: &Modulus, b: &Modulus) -> Result<Modulus, GarbleError> {
        let w = self.inner.add(a, b)?;
        Ok(self.seen(w))
    }

    fn sub(&mut self, a: &Modulus, b: &Modulus) -> Result<Modulus, GarbleError> {
        let w = self.inner.sub(a, b)?;
        Ok(self.seen(w))
    }

    fn mul_const(&mut self, a: &Modulus, k: u64) -> Result<Modulus, GarbleError> {
        let w = self.inner.mul_const(a, k)?;
        Ok(self.seen(w))
    }

    fn add_const(&mut self, a: &Modulus, k: u64) -> Result<Modulus, GarbleError> {
        let w = self.inner.add_const(a, k)?;
        Ok(self.seen(w))
    }

    fn project(&mut self, a: &Modulus, q: Modulus, phi: &[u16]) -> Result<Modulus, GarbleError> {
        let w = self.inner.project(a, q, phi)?;
        Ok(self.seen(w))
    }
}

/// DESIGN §2.1's floor on every wire of the default configuration: at least 2^120 candidates
/// for the offset. The CRT bases skip the primes below it (31, 37, 41, 43, …), and the gadgets
/// — sign, ReLU, max, both rescales at every scale — only create wires over full-strength
/// moduli, for every supported number of primes.
#[test]
fn every_wire_of_every_gadget_keeps_a_120_bit_offset() {
    use tessera_garble::crt::MAX_CRT_PRIMES;
    use tessera_garble::gadget::{max2, rescale_pow2, rescale_pow2_onestep, sign};
    for k in 2..=MAX_CRT_PRIMES {
        let basis = Modulus::first_primes(k).expect("basis");
        let mut r = Recording::default();
        for &q in &basis {
            r.seen(q);
        }
        sign(&mut r, &basis).expect("sign");
        relu(&mut r, &basis).expect("relu");
        max2(&mut r, &basis, &basis).expect("max2");
        let product: u128 = basis.iter().map(|m| u128::from(m.q())).product();
        let mut l = 0u32;
        // Every l with 2^(l−1) ≤ M/2 (the gadgets' own limit).
        while l == 0 || (1u128 << (l - 1)) <= product / 2 {
            rescale_pow2(&mut r, &basis, l).expect("rescale");
            rescale_pow2_onestep(&mut r, &basis, l).expect("one-step rescale");
            l += 1;
        }
        for &q in &r.moduli {
            let md = m(u64::from(q));
            assert!(
                md.full_strength() && md.delta_entropy_bits() >= 120.0,
                "k = {k}: a wire mod {q} carries only {:.1} bits",
                md.delta_entropy_bits()
            );
        }
    }
    // The primes skipped are the ones below the floor.
    for q in [31u64, 37, 41, 43] {
        assert!(!m(q).full_strength(), "q = {q}");
    }
}
