//! GPU kernels against their CPU twins. Runs where a CUDA GPU is usable; elsewhere says why it
//! skips (the CPU path is still checked against itself so the harness stays exercised).

use tessera_cuda::{Device, DeviceKind, selftest};

#[test]
fn gpu_kernels_match_their_cpu_twins() {
    let cpu = Device::open(DeviceKind::Cpu).unwrap();
    for c in selftest::run(&cpu, 7).unwrap() {
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
