//! Invariants of the enclave's decomposition.

use proptest::prelude::*;
use tessera_asym::{DecompOptions, RankSpec, decompose, decompose_blocks};

fn spec() -> impl Strategy<Value = RankSpec> {
    prop_oneof![
        (0usize..10).prop_map(RankSpec::Fixed),
        (0.0f32..0.9, 1usize..10).prop_map(|(threshold, max_rank)| RankSpec::Energy {
            threshold,
            max_rank
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn low_rank_plus_residual_is_the_input(
        rows in 1usize..24,
        cols in 1usize..40,
        seed in any::<u64>(),
        spec in spec(),
        oversample in 0usize..6,
        power_iters in 0usize..3,
        sample_cols in 0usize..12,
        data in proptest::collection::vec(-100.0f32..100.0, 24 * 40),
        low in any::<bool>(),
    ) {
        let mut x: Vec<f32> = data[..rows * cols].to_vec();
        if low {
            // A rank-2 matrix plus a little noise.
            for i in 0..rows {
                for j in 0..cols {
                    x[i * cols + j] = data[i] * data[100 + j] * 0.01 + data[200 + i] * data[300 + j] * 0.01 + 0.001 * data[i * cols + j];
                }
            }
        }
        let opts = DecompOptions { oversample, power_iters, sample_cols };
        let lr = decompose(&x, rows, cols, spec, &opts, seed).unwrap();
        let k = lr.rank;
        prop_assert!(k <= rows.min(cols));
        prop_assert_eq!(lr.u.len(), rows * k);
        prop_assert_eq!(lr.v.len(), k * cols);
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-30);
        let maxabs = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for i in 0..rows {
            for j in 0..cols {
                let uv: f32 = (0..k).map(|t| lr.u[i * k + t] * lr.v[t * cols + j]).sum();
                let err = (uv + lr.residual[i * cols + j] - x[i * cols + j]).abs();
                prop_assert!(err <= 1e-5 * norm.max(maxabs), "({i},{j}) err {err}");
            }
        }
        // U has orthonormal columns.
        for a in 0..k {
            for b in 0..k {
                let d: f32 = (0..rows).map(|i| lr.u[i * k + a] * lr.u[i * k + b]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                prop_assert!((d - want).abs() < 1e-3, "UᵀU[{a},{b}] = {d}");
            }
        }
        prop_assert!((0.0..=1.0 + 1e-4).contains(&lr.energy));
        if let RankSpec::Energy { threshold, max_rank } = spec
            && k < max_rank.min(rows.min(cols))
            && norm > 1e-3
        {
            prop_assert!(lr.energy <= f64::from(threshold) + 1e-4, "energy {} > {threshold} at rank {k}", lr.energy);
        }
        if let RankSpec::Fixed(r) = spec && r >= rows.min(cols) && k == rows.min(cols) {
            prop_assert!(lr.energy < 1e-6, "full rank leaves energy {}", lr.energy);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// One basis for side-by-side blocks (a batch `[N, C, H·W]`): every block is rebuilt by
    /// `U·V_b + R_b`, `U` is orthonormal, the energy is that of the whole matrix and the energy
    /// rule holds on it; with every column sampled away or kept, the same identities.
    #[test]
    fn blocks_share_one_basis_and_rebuild_every_block(
        blocks in 1usize..5,
        rows in 1usize..10,
        cols in 1usize..30,
        seed in any::<u64>(),
        spec in spec(),
        sample_cols in 0usize..12,
        data in proptest::collection::vec(-10.0f32..10.0, 4 * 10 * 30),
    ) {
        let x: Vec<f32> = data[..blocks * rows * cols].to_vec();
        let opts = DecompOptions { sample_cols, ..DecompOptions::default() };
        let lr = decompose_blocks(&x, blocks, rows, cols, spec, &opts, seed).unwrap();
        let k = lr.rank;
        prop_assert!(k <= rows.min(blocks * cols));
        prop_assert_eq!(lr.v.len(), blocks * k * cols);
        prop_assert_eq!(lr.residual.len(), x.len());
        let maxabs = x.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for b in 0..blocks {
            for i in 0..rows {
                for j in 0..cols {
                    let uv: f32 = (0..k).map(|t| lr.u[i * k + t] * lr.v[(b * k + t) * cols + j]).sum();
                    let at = (b * rows + i) * cols + j;
                    let err = (uv + lr.residual[at] - x[at]).abs();
                    prop_assert!(err <= 1e-4 * maxabs * (rows as f32).sqrt(), "({b},{i},{j}) err {err}");
                }
            }
        }
        for a in 0..k {
            let d: f32 = (0..rows).map(|i| lr.u[i * k + a] * lr.u[i * k + a]).sum();
            prop_assert!((d - 1.0).abs() < 1e-3);
        }
        let total: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let rr: f64 = lr.residual.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        if total > 1e-6 {
            prop_assert!((lr.energy - rr / total).abs() < 1e-9);
        }
        if let RankSpec::Energy { threshold, max_rank } = spec
            && k < max_rank.min(rows.min(blocks * cols))
            && total > 1e-3
        {
            prop_assert!(lr.energy <= f64::from(threshold) + 1e-4, "energy {} > {threshold} at rank {k}", lr.energy);
        }
    }
}

#[test]
fn bad_sizes_and_non_finite_inputs_are_errors() {
    let o = DecompOptions::default();
    assert!(decompose(&[1.0; 5], 2, 3, RankSpec::Fixed(1), &o, 0).is_err());
    assert!(decompose(&[1.0, f32::NAN, 0.0, 1.0], 2, 2, RankSpec::Fixed(1), &o, 0).is_err());
    let z = decompose(&[0.0; 6], 2, 3, RankSpec::Fixed(1), &o, 0).unwrap();
    assert_eq!((z.rank, z.energy), (0, 0.0));
}
