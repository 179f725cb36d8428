//! tessera's CUDA backend for the untrusted worker.
//!
//! [`Device::open`] gives a [`Device`] whose methods run
//! the worker's data-parallel kernels — label matmul mod p with public weights (the free linear
//! layers of the `gc` evaluator), batched fixed-key AES (the hash under projection gates and
//! output hashing), and float GEMM (the residual convolutions of `asym`, forward and backward via
//! im2col) — on the CPU or, with the `cuda` feature, on the GPU through cudarc with dynamic
//! loading and kernels compiled at run time by NVRTC ([`kernels::SOURCE`]). A build without the
//! feature, or a machine without a driver or GPU, gets a clear error from `open(cuda)`, never a
//! panic.
//!
//! Every GPU kernel has a CPU twin ([`cpu`]). [`selftest`] checks a device, CPU or GPU, against
//! references that share no code with either (a step-by-step scalar loop, the FIPS-197 vectors
//! and the `aes` crate, exact-integer and f64 GEMM loops); the equivalence test runs it on the
//! CPU always and on a GPU where one is usable.
//!
//! What runs where today: `tessera selftest --device cuda` is the only command that computes on
//! the GPU. The gc evaluator and the asym worker do not call these kernels yet, so
//! `tessera worker --device cuda` refuses rather than claim GPU work that does not happen.

#![warn(missing_docs)]

pub mod cpu;
#[cfg(feature = "cuda")]
mod gpu;
pub mod kernels;
pub mod selftest;
pub mod soft_aes;

/// Errors of the device layer.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The build has no GPU path.
    #[error(
        "this tessera build has no CUDA support: rebuild with `cargo build --release --features tessera-cuda/cuda`, or use --device cpu"
    )]
    NotBuilt,
    /// No driver library.
    #[error(
        "no CUDA driver found (libcuda.so could not be loaded): install the NVIDIA driver or set LD_LIBRARY_PATH, or use --device cpu"
    )]
    NoDriver,
    /// No NVRTC library.
    #[error(
        "no NVRTC found (libnvrtc.so could not be loaded): install the CUDA toolkit's NVRTC or set LD_LIBRARY_PATH, or use --device cpu"
    )]
    NoNvrtc,
    /// The driver found no GPU.
    #[error("no CUDA GPU is visible ({0}); use --device cpu")]
    NoDevice(String),
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// NVRTC rejected a kernel.
    #[error("compiling the CUDA kernels with NVRTC failed: {0}")]
    Compile(String),
    /// Arguments of the wrong size.
    #[error("bad kernel arguments: {0}")]
    Shape(String),
    /// An unknown device name.
    #[error("unknown device '{0}': use cpu or cuda")]
    UnknownDevice(String),
}

/// Which device a worker computes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// CPU threads.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
}

impl std::str::FromStr for DeviceKind {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self, CudaError> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => Err(CudaError::UnknownDevice(other.to_string())),
        }
    }
}

/// An opened device.
pub enum Device {
    /// CPU threads.
    Cpu,
    /// A GPU with the kernels loaded.
    #[cfg(feature = "cuda")]
    Cuda(gpu::Gpu),
}

/// Whether this build has the GPU path.
pub const fn built_with_cuda() -> bool {
    cfg!(feature = "cuda")
}

impl Device {
    /// Open `kind`: `cuda` loads the driver and NVRTC, picks GPU 0 and compiles the kernels.
    pub fn open(kind: DeviceKind) -> Result<Self, CudaError> {
        match kind {
            DeviceKind::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::Cuda(gpu::Gpu::open()?)),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err(CudaError::NotBuilt),
        }
    }

    /// One line saying what this device is (for the worker's start-up message).
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => format!(
                "cpu ({} threads)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => g.describe(),
        }
    }

    /// See [`cpu::label_matmul_mod`].
    pub fn label_matmul_mod(
        &self,
        w: &[u32],
        x: &[u8],
        m: usize,
        k: usize,
        d: usize,
        p: u32,
    ) -> Result<Vec<u8>, CudaError> {
        match self {
            Device::Cpu => cpu::label_matmul_mod(w, x, m, k, d, p),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => {
                check_label_matmul(w, x, m, k, d, p)?;
                g.label_matmul_mod(w, x, m, k, d, p)
            }
        }
    }

    /// AES-128 of every block of `data` under `key`.
    pub fn aes128_ecb(&self, key: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, CudaError> {
        let rk = soft_aes::expand_key(key);
        match self {
            Device::Cpu => cpu::aes128_ecb(&rk, data),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => {
                if !data.len().is_multiple_of(16) {
                    return Err(CudaError::Shape(format!(
                        "AES input of {} bytes is not a whole number of blocks",
                        data.len()
                    )));
                }
                g.aes128_ecb(&rk, data)
            }
        }
    }

    /// `a·b` for row-major `a: m × k`, `b: k × n`.
    pub fn sgemm(
        &self,
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, CudaError> {
        match self {
            Device::Cpu => cpu::sgemm(a, b, m, n, k),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => {
                check_gemm(a, b, m, n, k)?;
                g.sgemm(a, b, m, n, k)
            }
        }
    }
}

fn fits_u32(v: usize, what: &str) -> Result<u32, CudaError> {
    u32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds 2^32 − 1")))
}

/// Check the arguments of a label matmul.
pub fn check_label_matmul(
    w: &[u32],
    x: &[u8],
    m: usize,
    k: usize,
    d: usize,
    p: u32,
) -> Result<(), CudaError> {
    if !(2..=256).contains(&p) {
        return Err(CudaError::Shape(format!(
            "modulus {p} is outside 2..=256 (digits are bytes)"
        )));
    }
    for (v, what) in [(m, "rows"), (k, "inner dimension"), (d, "columns")] {
        fits_u32(v, what)?;
    }
    if m.checked_mul(k) != Some(w.len()) || k.checked_mul(d) != Some(x.len()) {
        return Err(CudaError::Shape(format!(
            "weights hold {} values and labels {} digits, expected {m}×{k} and {k}×{d}",
            w.len(),
            x.len()
        )));
    }
    if let Some(bad) = w.iter().find(|&&v| v >= p) {
        return Err(CudaError::Shape(format!(
            "weight {bad} is not reduced mod {p}"
        )));
    }
    if let Some(bad) = x.iter().find(|&&v| u32::from(v) >= p) {
        return Err(CudaError::Shape(format!("digit {bad} is not below {p}")));
    }
    Ok(())
}

/// Check the arguments of a GEMM.
pub fn check_gemm(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<(), CudaError> {
    for (v, what) in [(m, "m"), (n, "n"), (k, "k")] {
        fits_u32(v, what)?;
    }
    if m.checked_mul(k) != Some(a.len()) || k.checked_mul(n) != Some(b.len()) {
        return Err(CudaError::Shape(format!(
            "GEMM operands hold {} and {} values, expected {m}×{k} and {k}×{n}",
            a.len(),
            b.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda);
        assert!("tpu".parse::<DeviceKind>().is_err());
    }

    #[test]
    fn shape_errors_are_clear() {
        let e = cpu::label_matmul_mod(&[1, 2], &[1, 1, 1], 1, 2, 2, 5).unwrap_err();
        assert!(e.to_string().contains("expected 1×2 and 2×2"), "{e}");
        let e = cpu::label_matmul_mod(&[7], &[1], 1, 1, 1, 5).unwrap_err();
        assert!(e.to_string().contains("not reduced"), "{e}");
        assert!(cpu::aes128_ecb(&[0; 176], &[0; 15]).is_err());
        assert!(cpu::sgemm(&[1.0], &[1.0, 2.0], 1, 1, 1).is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = match Device::open(DeviceKind::Cuda) {
            Err(e) => e,
            Ok(_) => panic!("no GPU path in this build"),
        };
        assert!(e.to_string().contains("--features"), "{e}");
    }
}
