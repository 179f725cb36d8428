//! Malformed input never panics: a bounded, seeded fuzz of `Evidence::decode`, the raw-file
//! recogniser and `verify` over mutations of every real sample and of simulated evidence.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_attest::cli::detect;
use tessera_attest::sim::PlatformKey;
use tessera_attest::{Evidence, Policy, TeeKind, measure, verify};

fn mutate(rng: &mut ChaCha8Rng, b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    match rng.random_range(0..6) {
        0 if !v.is_empty() => {
            let n = rng.random_range(1..=8.min(v.len()));
            for _ in 0..n {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
        }
        1 => v.truncate(rng.random_range(0..=v.len())),
        2 => {
            let n = rng.random_range(1..64);
            v.extend((0..n).map(|_| rng.random::<u8>()));
        }
        3 if v.len() > 8 => {
            // Overwrite a 32-bit field with an extreme length.
            let i = rng.random_range(0..v.len() - 4);
            let x: u32 = [0, 1, 0x7fff_ffff, u32::MAX, v.len() as u32][rng.random_range(0..5)];
            v[i..i + 4].copy_from_slice(&x.to_le_bytes());
        }
        4 if v.len() > 2 => {
            let a = rng.random_range(0..v.len());
            let b = rng.random_range(a..v.len());
            v.drain(a..b);
        }
        _ => {
            let n = rng.random_range(0..300);
            v = (0..n).map(|_| rng.random()).collect();
        }
    }
    v
}

#[test]
fn decode_detect_and_verify_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7e55e7a);
    let dir = std::env::temp_dir().join(format!("tessera-attest-fuzz-{}", std::process::id()));
    let key = PlatformKey::load_or_create(&dir.join("k")).unwrap();
    let mut seeds: Vec<Evidence> = vec![key.attest(&measure(&[b"x"]), &[7; 64])];
    if let Some(s) = snp_sample() {
        seeds.push(s.evidence());
    }
    if let Some(d) = dcap_samples() {
        for s in d {
            seeds.push(Evidence {
                kind: s.kind,
                report: s.quote,
                aux: s.collateral,
            });
        }
    }
    let mut policy = permissive();
    policy.allow_simulated = true;
    let now = snp_time();
    let start = std::time::Instant::now();
    let mut n = 0;
    while n < 3000 && start.elapsed().as_secs() < 12 {
        let seed = &seeds[n % seeds.len()];
        n += 1;
        // The container.
        let enc = mutate(&mut rng, &seed.encode());
        if let Ok(e) = Evidence::decode(&enc) {
            let _ = verify(&e, &policy, now);
        }
        // Raw files.
        let raw = mutate(&mut rng, &seed.report);
        if let Ok(e) = detect(&raw) {
            let _ = verify(&e, &policy, now);
        }
        let _ = detect(&hex::encode(&raw).into_bytes());
        // The evidence's parts, separately.
        let part = rng.random_range(0..2);
        let mut e = seed.clone();
        if part == 0 {
            e.report = mutate(&mut rng, &e.report);
        } else {
            e.aux = mutate(&mut rng, &e.aux);
        }
        let _ = verify(&e, &policy, now);
        for kind in TeeKind::ALL {
            let _ = verify(&Evidence { kind, ..e.clone() }, &policy, now);
        }
    }
    eprintln!("{n} fuzz rounds");
    assert!(n >= 200, "too few rounds ran: {n}");
    let _ = Policy::default();
    let _ = std::fs::remove_dir_all(&dir);
}
