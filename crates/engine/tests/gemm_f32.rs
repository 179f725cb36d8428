//! Every float convolution kernel this machine has against an f64 product: random shapes
//! (edges of the micro-tile rows, the 16- and 48-column panels and the column blocks
//! included), layer shapes that take each kernel, each parallel split and several slices of
//! k, with and without a bias. The kernels differ from exact arithmetic only by f32 rounding.

use proptest::prelude::*;
use tessera_engine::gemm_f32::{FKernel, gemm_bias};

/// The exact product (in f64) and, per element, Σ|a·b| + |bias| (what bounds f32 rounding).
fn reference(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for r in 0..m {
        for j in 0..n {
            let b0 = bias.map_or(0.0, |v| f64::from(v[r]));
            let (mut s, mut t) = (b0, b0.abs());
            for p in 0..k {
                let v = f64::from(a[r * k + p]) * f64::from(b[p * n + j]);
                s += v;
                t += v.abs();
            }
            c[r * n + j] = s;
            mag[r * n + j] = t;
        }
    }
    (c, mag)
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn check(m: usize, k: usize, n: usize, seed: u64, with_bias: bool) -> Result<(), String> {
    let a = values(m * k, seed);
    let b = values(k * n, seed ^ 0x9e37);
    let bias = values(m, seed ^ 0x51);
    let bias = with_bias.then_some(bias.as_slice());
    let (want, mag) = reference(m, k, n, &a, &b, bias);
    for kern in FKernel::available() {
        let mut c = vec![f32::NAN; m * n];
        gemm_bias(kern, m, k, n, &a, &b, bias, &mut c);
        for (i, ((&got, &w), &t)) in c.iter().zip(&want).zip(&mag).enumerate() {
            // Any order of k + 1 f32 additions (and the products' own rounding) is within
            // (k + 2)·2^-24·Σ|terms| of the exact sum; twice that, for the final rounding.
            let tol = 2.0 * (k as f64 + 2.0) * 2f64.powi(-24) * t + 1e-6;
            if (f64::from(got) - w).abs() > tol {
                return Err(format!(
                    "{kern:?} {m}×{k}·{k}×{n}: element {i} is {got}, want {w}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn kernels_on_this_machine() {
    let ks = FKernel::available();
    eprintln!(
        "float GEMM kernels here: {ks:?} (best {:?})",
        FKernel::best()
    );
    assert_eq!(ks.first(), Some(&FKernel::Portable));
    assert!(ks.contains(&FKernel::best()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_kernel_agrees(m in 1usize..=19, n in 1usize..=400, k in 0usize..=300, seed in any::<u64>(), bias in any::<bool>()) {
        check(m, k, n, seed, bias).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn layer_shapes() {
    // Column-parallel with several k slices, row-parallel with a ragged last row block, and
    // one narrow product that runs as a single task; then narrow products of 49 and 33
    // columns (two panels, one slice of k) with a ragged row block.
    for (m, k, n) in [
        (64, 576, 3136),
        (517, 1153, 100),
        (40, 300, 1000),
        (3, 5, 7),
        (517, 4700, 49),
        (9, 70, 33),
    ] {
        check(m, k, n, (m * k * n) as u64, true).unwrap_or_else(|e| panic!("{e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// Panels packed straight from the image equal panels packed from the unfolded matrix, bit
    /// for bit, on random windows (strides, padding on each side, dilations).
    #[test]
    fn unfolding_on_the_fly_matches_im2col(
        cin in 1usize..=3, h in 1usize..=19, w in 1usize..=23, kh in 1usize..=3, kw in 1usize..=3,
        s in 1usize..=2, pads in proptest::array::uniform4(0usize..=2), d in 1usize..=2,
        m in 1usize..=9, seed in any::<u64>(),
    ) {
        use tessera_engine::gemm_f32::{Unfold, gemm_columns};
        use tessera_engine::window::{Geometry, im2col};
        let (eh, ew) = ((kh - 1) * d + 1, (kw - 1) * d + 1);
        prop_assume!(h + pads[0] + pads[2] >= eh && w + pads[1] + pads[3] >= ew);
        let oh = (h + pads[0] + pads[2] - eh) / s + 1;
        let ow = (w + pads[1] + pads[3] - ew) / s + 1;
        let g = Geometry { h, w, k: [kh, kw], s: [s, s], p: pads, d: [d, d], oh, ow };
        let x = values(cin * h * w, seed);
        let k = cin * kh * kw;
        let a = values(m * k, seed ^ 5);
        let n = oh * ow;
        let mut col = Vec::new();
        im2col(&x, cin, &g, &mut col);
        for kern in FKernel::available() {
            let mut want = vec![0f32; m * n];
            gemm_bias(kern, m, k, n, &a, &col, None, &mut want);
            let mut got = vec![f32::NAN; m * n];
            if gemm_columns(kern, m, k, n, &a, &Unfold { x: &x, g: &g }, None, &mut got) {
                prop_assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{:?} {:?}", kern, g
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Weights packed once give the narrow products exactly what the panel kernel gives
    /// unpacked (the same chain of fused multiply-adds per output), bit for bit: ragged blocks
    /// of 16 rows, every column group width up to 64, with and without a bias.
    #[test]
    fn packed_weights_give_the_same_bits(m in 1usize..=40, n in 1usize..=64, k in 1usize..=300, seed in any::<u64>(), with_bias in any::<bool>()) {
        use tessera_engine::gemm_f32::{PackedA, gemm_packed, packs};
        let a = values(m * k, seed);
        let b = values(k * n, seed ^ 0x9e37);
        let bias = values(m, seed ^ 0x51);
        let bias = with_bias.then_some(bias.as_slice());
        let pa = PackedA::new(&a, m, k);
        for kern in FKernel::available() {
            let mut got = vec![f32::NAN; m * n];
            if !gemm_packed(kern, &pa, n, &b, bias, &mut got) {
                prop_assert!(!packs(kern, n), "{:?} refused a shape it packs", kern);
                continue;
            }
            let mut want = vec![f32::NAN; m * n];
            gemm_bias(kern, m, k, n, &a, &b, bias, &mut want);
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

/// A prepared float model (narrow convolutions on packed weights) computes every value of a
/// network bit for bit as the unprepared engine does.
#[test]
fn prepared_models_give_the_same_bits() {
    use tessera_engine::{FloatModel, float::run_f32_observe};
    use tessera_model::Tensor;
    for name in ["resnet18-32", "vgg16-32"] {
        let g = (tessera_model::builders::find(name)
            .expect("a builder")
            .build)(3)
        .expect("builds");
        let shape = g.shape(g.inputs[0]).to_vec();
        let len: usize = shape.iter().product();
        let x = Tensor::new(shape, values(len, 11)).expect("input");
        let mut want = Vec::new();
        run_f32_observe(&g, std::slice::from_ref(&x), &mut |_, t| {
            want.push(t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        })
        .expect("runs");
        let fm = FloatModel::new(&g).expect("prepares");
        let mut got = Vec::new();
        fm.run_observe(std::slice::from_ref(&x), &mut |_, t| {
            got.push(t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        })
        .expect("runs");
        assert!(got == want, "{name}: a value differs");
    }
}
