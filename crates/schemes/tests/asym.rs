//! `asym` through the runtime (enclave + worker on loopback): the float model's output within
//! 1e-4 relative plus the 2^-(f+1) of the integer transport, and real offloading.

use tessera_engine::quant::QuantConfig;
use tessera_engine::run_f32;
use tessera_model::{Tensor, builders};
use tessera_schemes::{Asym, AsymOptions, Scheme};

#[test]
fn dash_b_split_over_the_wire_matches_the_float_model() {
    let g = builders::dash_b(3).unwrap();
    let cfg = QuantConfig::default();
    // Rank 2 everywhere and no profitability rule: every conv after the first (whose 1-channel
    // input is full rank) goes to the worker.
    let opts = AsymOptions {
        rank: tessera_asym::RankRule::Fixed(2),
        skip_unprofitable: false,
        ..AsymOptions::default()
    };
    let mut s = Asym::new(&g, &tessera_engine::Semantics::Pow2(cfg), &opts).unwrap();
    for seed in 0..3u32 {
        let x = Tensor::new(
            vec![1, 1, 28, 28],
            (0..784u32)
                .map(|i| ((i * 31 + seed * 7) % 256) as f32 / 255.0)
                .collect(),
        )
        .unwrap();
        let want = run_f32(&g, std::slice::from_ref(&x)).unwrap().remove(0);
        let r = s.infer(&x).unwrap();
        let step = 2f32.powi(-(cfg.frac_bits as i32 + 1));
        for (a, b) in r.output.data().iter().zip(want.data()) {
            assert!((a - b).abs() <= 1e-4 * b.abs() + step, "{a} vs {b}");
        }
        assert!(r.cost.rounds >= 1, "at least one layer goes to the worker");
        assert!(r.cost.bytes_up > 0 && r.cost.bytes_down > 0);
        let share = r
            .cost
            .trusted_share()
            .expect("enclave and worker both work");
        assert!(share > 0.0 && share <= 1.0, "{share}");
        let names: Vec<&str> = r.cost.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["client-enclave", "enclave-worker"]);
        assert!(r.cost.links.iter().all(|l| l.up > 0 && l.down > 0));
    }
}
