//! The wire format: round trips, and every malformed object refused by the check meant for it
//! (the checksum is recomputed where a test targets a later check), never a panic.

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::wire::{read_cts, read_params, read_public, write_cts, write_params, write_public};
use tessera_he::{HeError, HeParams, KeyPair};

fn params(acc: u128) -> HeParams {
    let nd = LayerNeed {
        name: "l".into(),
        acc_bound: acc,
        x_bound: 255,
        w_bound: 127,
        terms: 25,
        products: 1,
        product: Product::Encrypted,
    };
    HeParams::choose(&[nd], ParamOptions::default()).expect("params")
}

/// Recompute the trailing CRC so that only the check under test can object.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn wire_detail(e: HeError) -> String {
    match e {
        HeError::Wire { detail, .. } => detail,
        e => panic!("expected a wire error, got {e}"),
    }
}

#[test]
fn parameters_keys_and_ciphertexts_round_trip() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let p = params(1 << 20);
    let back = read_params(&write_params(&p)).expect("params");
    assert_eq!(back.describe(), p.describe());
    let keys = KeyPair::generate(&back, &mut rng);
    let pk = read_public(&back, &write_public(&keys.public).expect("write pk")).expect("read pk");
    let ct = pk.encrypt(&[1, -2, 3, 1 << 19], &mut rng).expect("enc");
    let bytes = write_cts(&back, std::slice::from_ref(&ct)).expect("write");
    let cts = read_cts(&back, &bytes, 1).expect("read");
    assert_eq!(write_cts(&back, &cts).expect("rewrite"), bytes);
    assert_eq!(
        keys.secret.decrypt(&cts[0]).expect("dec")[..4],
        [1, -2, 3, 1 << 19]
    );
}

#[test]
fn each_check_stops_its_own_defect() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let p = params(1 << 20);
    let keys = KeyPair::generate(&p, &mut rng);
    let ct = keys.public.encrypt(&[7; 16], &mut rng).expect("enc");
    let good = write_cts(&p, &[ct]).expect("write");

    // Corruption in transit: the checksum.
    let mut flipped = good.clone();
    flipped[60] ^= 1;
    assert!(wire_detail(read_cts(&p, &flipped, 1).expect_err("crc")).contains("checksum"));
    // Truncation: the length field.
    let short = reseal(good[..good.len() - 9].to_vec());
    assert!(wire_detail(read_cts(&p, &short, 1).expect_err("short")).contains("header says"));
    // Another format version.
    let mut v2 = good.clone();
    v2[4] = 2;
    assert!(wire_detail(read_cts(&p, &reseal(v2), 1).expect_err("version")).contains("version 2"));
    // Another kind of object.
    assert!(wire_detail(read_public(&p, &good).expect_err("kind")).contains("kind 3"));
    // Other parameters.
    let other = params(1 << 28);
    assert!(
        wire_detail(read_cts(&other, &good, 1).expect_err("fp")).contains("other HE parameters")
    );
    // More ciphertexts than the reader expects.
    assert!(wire_detail(read_cts(&p, &good, 0).expect_err("count")).contains("more than"));
    // A residue at or above its prime (all-ones bits in the first packed residue).
    let mut big = good.clone();
    let first = 4 + 1 + 1 + 32 + 8 + 4 + 2;
    let bits = 64 - p.bfv().moduli()[0].leading_zeros() as usize;
    for b in big.iter_mut().skip(first).take(bits.div_ceil(8)) {
        *b = 0xff;
    }
    assert!(
        wire_detail(read_cts(&p, &reseal(big), 1).expect_err("range"))
            .contains("not below its prime")
    );
    // Parameters whose primes the rule would not generate.
    let mut pb = write_params(&p);
    let prime_at = 4 + 1 + 1 + 32 + 8 + 4 + 3 + 16 + 1 + 1;
    pb[prime_at] ^= 2;
    assert!(wire_detail(read_params(&reseal(pb)).expect_err("primes")).contains("primes"));
    // Prime sizes too small for the plaintext modulus (the library would assert): refused by
    // the size check, before any prime is generated.
    let mut small = write_params(&p);
    let first_size = 4 + 1 + 1 + 32 + 8 + 4 + 3 + 16 + 1;
    small[first_size] = 12;
    let e = wire_detail(read_params(&reseal(small)).expect_err("small prime"));
    assert!(e.contains("cannot carry the plaintext modulus"), "{e}");
    // A public key that claims a degree-2 ciphertext.
    let mut pk = write_public(&keys.public).expect("pk");
    pk[4 + 1 + 1 + 32 + 8] = 3;
    assert!(read_public(&p, &reseal(pk)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_objects_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(), seal in any::<bool>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let p = params(1 << 12);
        let keys = KeyPair::generate(&p, &mut rng);
        let ct = keys.public.encrypt(&[1, 2, 3], &mut rng).expect("enc");
        for good in [write_cts(&p, &[ct]).expect("cts"), write_public(&keys.public).expect("pk"), write_params(&p)] {
            let mut b = good.clone();
            let i = pos.index(b.len());
            b[i] = byte;
            let b = if seal { reseal(b) } else { b };
            let _ = read_cts(&p, &b, 4);
            let _ = read_public(&p, &b);
            let _ = read_params(&b);
            let t = &good[..cut.index(good.len())];
            prop_assert!(read_cts(&p, t, 4).is_err() && read_public(&p, t).is_err() && read_params(t).is_err());
        }
    }
}
