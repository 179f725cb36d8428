//! The small literature networks compute the same outputs before and after an ONNX
//! export/import round trip.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_engine::run_f32;
use tessera_model::builders::find;
use tessera_model::export::export_model;
use tessera_model::{ImportOptions, Tensor, import_model};

#[test]
fn small_networks_run_the_same_after_a_round_trip() {
    let mut rng = ChaCha20Rng::seed_from_u64(2024);
    for name in ["dash-a", "dash-b", "dash-c", "dash-d", "f-small", "f"] {
        let spec = find(name).expect("builder");
        let g = (spec.build)(3).expect("builds");
        let h = import_model(
            &export_model(&g).expect("exports"),
            &ImportOptions::default(),
        )
        .expect("re-imports");
        let shape = g.shape(g.inputs[0]).to_vec();
        assert_eq!(h.shape(h.inputs[0]), shape.as_slice());
        for _ in 0..3 {
            let n: usize = shape.iter().product();
            let x = Tensor::new(
                shape.clone(),
                (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            )
            .expect("input");
            let a = run_f32(&g, std::slice::from_ref(&x)).expect("runs before");
            let b = run_f32(&h, std::slice::from_ref(&x)).expect("runs after");
            assert_eq!(a.len(), b.len());
            for (ya, yb) in a.iter().zip(&b) {
                assert_eq!(ya.shape(), yb.shape(), "{name}: output shape");
                let scale = ya.data().iter().fold(0f32, |m, v| m.max(v.abs()));
                for (p, q) in ya.data().iter().zip(yb.data()) {
                    assert!(
                        (p - q).abs() <= 1e-5 * p.abs().max(q.abs()).max(scale * 1e-3),
                        "{name}: {p} before vs {q} after the round trip"
                    );
                }
            }
        }
    }
}
