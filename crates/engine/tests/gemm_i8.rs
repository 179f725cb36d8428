//! Every 8-bit GEMM kernel this machine has against the portable one and a naive i64 product,
//! on random shapes (edges of the micro-tile rows, 16-column and 256-column blocks included), on
//! layer shapes that take each parallel split and several cache slices of k, and on the
//! extreme values.

use proptest::prelude::*;
use tessera_engine::gemm_i8::{Kernel, fits_i32, gemm_u8i8};

fn naive(m: usize, n: usize, k: usize, a: &[i8], b: &[u8]) -> Vec<i32> {
    let mut c = vec![0i64; m * n];
    for r in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[r * n + j] += i64::from(a[r * k + p]) * i64::from(b[p * n + j]);
            }
        }
    }
    c.into_iter()
        .map(|v| i32::try_from(v).expect("fits"))
        .collect()
}

#[test]
fn kernels_on_this_machine() {
    let ks = Kernel::available();
    eprintln!(
        "8-bit GEMM kernels here: {ks:?} (best {:?})",
        Kernel::best()
    );
    assert_eq!(ks.first(), Some(&Kernel::Portable));
    assert!(ks.contains(&Kernel::best()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_kernel_is_exact(m in 1usize..=13, n in 1usize..=300, k in 0usize..=70, seed in any::<u64>(), extreme in any::<bool>()) {
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let a: Vec<i8> = (0..m * k).map(|_| if extreme { if next() % 2 == 0 { -127 } else { 127 } } else { next() as i8 }).collect();
        let b: Vec<u8> = (0..k * n).map(|_| if extreme { 255 } else { next() as u8 }).collect();
        prop_assume!(fits_i32(k, 128));
        let want = naive(m, n, k, &a, &b);
        for kern in Kernel::available() {
            let mut c = vec![7i32; m * n];
            gemm_u8i8(kern, m, n, k, &a, &b, &mut c);
            prop_assert_eq!(&c, &want, "{:?}", kern);
        }
    }
}

#[test]
fn a_layer_sized_product() {
    // ResNet-50's first bottleneck 3×3 conv: 64 × (64·9) · (64·9) × 56².
    let (m, k, n) = (64, 576, 3136);
    let a: Vec<i8> = (0..m * k).map(|i| ((i * 37) % 255) as i8).collect();
    let b: Vec<u8> = (0..k * n).map(|i| ((i * 101) % 256) as u8).collect();
    let mut want = vec![0i32; m * n];
    gemm_u8i8(Kernel::Portable, m, n, k, &a, &b, &mut want);
    for kern in Kernel::available() {
        let mut c = vec![0i32; m * n];
        gemm_u8i8(kern, m, n, k, &a, &b, &mut c);
        assert_eq!(c, want, "{kern:?}");
    }
}

#[test]
fn many_rows_few_columns_and_long_sums() {
    // A late layer's shape: many output channels, few positions, k over several cache slices
    // of the kernels (row-parallel, each slice accumulating into C), plus a row count that is
    // not a whole micro-tile block.
    for (m, k, n) in [(517, 2309, 49), (64, 1100, 9), (40, 777, 1000)] {
        let a: Vec<i8> = (0..m * k).map(|i| ((i * 29 + 3) % 255) as i8).collect();
        let b: Vec<u8> = (0..k * n).map(|i| ((i * 53 + 1) % 256) as u8).collect();
        let want = naive(m, n, k, &a, &b);
        for kern in Kernel::available() {
            let mut c = vec![-1i32; m * n];
            gemm_u8i8(kern, m, n, k, &a, &b, &mut c);
            assert_eq!(c, want, "{kern:?} {m}×{k}·{k}×{n}");
        }
    }
}
