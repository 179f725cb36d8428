//! Every kernel against the selftest's independent references (a step-by-step scalar loop, the
//! FIPS-197 vectors and the `aes` crate, exact-integer and f64 GEMM loops): the CPU device
//! always, the GPU where a CUDA GPU is usable (elsewhere the test says why it skips).

use tessera_cuda::{Device, DeviceKind, selftest};

#[test]
fn gpu_kernels_match_their_cpu_twins() {
    let cpu = Device::open(DeviceKind::Cpu).unwrap();
    let checks = selftest::run(&cpu, 7).unwrap();
    assert_eq!(checks.len(), 11, "{checks:?}");
    for c in checks {
        assert!(c.ok, "cpu {}: {}", c.name, c.detail);
    }
    let gpu = match Device::open(DeviceKind::Cuda) {
        Ok(g) => g,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP gpu equivalence: {e}");
            return;
        }
    };
    for seed in 1..4 {
        for c in selftest::run(&gpu, seed).unwrap() {
            assert!(c.ok, "{} on {}: {}", c.name, gpu.describe(), c.detail);
        }
    }
}
