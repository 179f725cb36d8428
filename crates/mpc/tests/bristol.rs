//! The Bristol Fashion circuits of the shared data, in plaintext and garbled, against their
//! known answers: FIPS-197's AES-128 vector, SHA-256 of "abc" (FIPS 180-4), and 64-bit add,
//! subtract, multiply, negate and zero test on random values.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_mpc::bristol::parse;
use tessera_mpc::circuit::{Circuit, from_bits, to_bits};
use tessera_mpc::garble::{evaluate, garble};
use tessera_mpc::stream::{StreamReader, StreamWriter};

fn circuit(name: &str) -> Option<Circuit> {
    let dir = tessera_data::shared_data("bristol-fashion")?;
    let text = std::fs::read_to_string(dir.join(name)).expect("readable");
    Some(parse(&text).expect("parses"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A byte string as circuit bits: the bytes read as one big-endian integer, least significant
/// bit first (the order the FIPS vectors confirm for these circuits).
fn bits_of(bytes: &[u8]) -> Vec<bool> {
    let n = bytes.len() * 8;
    (0..n)
        .map(|k| {
            let j = n - 1 - k;
            (bytes[j / 8] >> (7 - j % 8)) & 1 == 1
        })
        .collect()
}

/// Garble, stream the material through a buffer with small chunks, evaluate, decode.
fn garbled(c: &Circuit, inputs: &[Vec<bool>], seed: u64) -> Vec<Vec<bool>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut w = StreamWriter::with_max_chunk(Vec::new(), 4096);
    let g = garble(c, &mut rng, &mut w).expect("garbles");
    let bytes = w.into_inner();
    let flat: Vec<bool> = inputs.iter().flatten().copied().collect();
    let labels = g.inputs.encode(0, &flat).expect("encode");
    let mut r = StreamReader::new(bytes.as_slice());
    let out = evaluate(c, &labels, &mut r).expect("evaluates");
    let bits = g.decoding.decode(&out).expect("decodes");
    assert_eq!(
        g.check.check(&out).expect("valid labels"),
        bits,
        "the two decodings agree"
    );
    let mut res = Vec::new();
    let mut it = bits.into_iter();
    for group in &c.outputs {
        res.push(it.by_ref().take(group.len()).collect());
    }
    res
}

#[test]
fn aes_128_gives_the_fips_197_ciphertext() {
    let Some(c) = circuit("aes_128.txt") else {
        return;
    };
    let key = bits_of(&hex("000102030405060708090a0b0c0d0e0f"));
    let pt = bits_of(&hex("00112233445566778899aabbccddeeff"));
    let want = bits_of(&hex("69c4e0d86a7b0430d8cdb78070b4c55a"));
    let inputs = vec![key, pt];
    assert_eq!(c.eval(&inputs).expect("plain")[0], want);
    assert_eq!(garbled(&c, &inputs, 1)[0], want);
    assert_eq!(c.and_count(), 6400);
}

#[test]
fn sha256_compression_gives_the_digest_of_abc() {
    let Some(c) = circuit("sha256.txt") else {
        return;
    };
    let mut block = vec![0u8; 64];
    block[..3].copy_from_slice(b"abc");
    block[3] = 0x80;
    block[63] = 24;
    let iv = hex("6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19");
    let want = bits_of(&hex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ));
    let inputs = vec![bits_of(&block), bits_of(&iv)];
    assert_eq!(c.eval(&inputs).expect("plain")[0], want);
    assert_eq!(garbled(&c, &inputs, 2)[0], want);
}

/// A circuit file, its function on (a, b), and how many inputs it takes.
type Case = (&'static str, fn(u64, u64) -> u64, usize);

#[test]
fn sixty_four_bit_arithmetic_circuits_are_right() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let cases: [Case; 5] = [
        ("adder64.txt", |a, b| a.wrapping_add(b), 2),
        ("sub64.txt", |a, b| a.wrapping_sub(b), 2),
        ("mult64.txt", |a, b| a.wrapping_mul(b), 2),
        ("neg64.txt", |a, _| a.wrapping_neg(), 1),
        ("zero_equal.txt", |a, _| u64::from(a == 0), 1),
    ];
    for (name, f, arity) in cases {
        let Some(c) = circuit(name) else { return };
        for i in 0..6 {
            let a: u64 = if i == 0 { 0 } else { rng.random() };
            let b: u64 = rng.random();
            let inputs: Vec<Vec<bool>> = [a, b][..arity]
                .iter()
                .map(|&v| to_bits(u128::from(v), 64))
                .collect();
            let want = u128::from(f(a, b));
            let plain = c.eval(&inputs).expect("plain");
            assert_eq!(from_bits(&plain[0]), want, "{name} plain on {a}, {b}");
            if i < 2 {
                assert_eq!(
                    from_bits(&garbled(&c, &inputs, i)[0]),
                    want,
                    "{name} garbled on {a}, {b}"
                );
            }
        }
    }
}
