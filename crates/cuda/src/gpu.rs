//! The GPU path: cudarc with dynamic loading, kernels from [`crate::kernels::SOURCE`].

use crate::CudaError;
use crate::kernels::{self, SOURCE};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// A GPU with the worker's kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    label_matmul: CudaFunction,
    aes: CudaFunction,
    sgemm: CudaFunction,
    sbox: cudarc::driver::CudaSlice<u8>,
}

fn drv(e: impl std::fmt::Display) -> CudaError {
    CudaError::Driver(e.to_string())
}

fn cfg(launch: ((u32, u32, u32), (u32, u32, u32))) -> LaunchConfig {
    LaunchConfig {
        grid_dim: launch.0,
        block_dim: launch.1,
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// Load the driver and NVRTC, open GPU 0, compile and load the kernels.
    pub fn open() -> Result<Self, CudaError> {
        // SAFETY: these only try to dlopen the libraries; they do not call into them.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NoNvrtc);
        }
        let n = CudaContext::device_count().map_err(|e| CudaError::NoDevice(e.to_string()))?;
        if n < 1 {
            return Err(CudaError::NoDevice("the driver reports 0 devices".into()));
        }
        let ctx = CudaContext::new(0).map_err(drv)?;
        let ptx =
            cudarc::nvrtc::compile_ptx(SOURCE).map_err(|e| CudaError::Compile(e.to_string()))?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let f = |name: &str| module.load_function(name).map_err(drv);
        let stream = ctx.default_stream();
        let sbox = stream.clone_htod(&crate::soft_aes::SBOX).map_err(drv)?;
        Ok(Self {
            label_matmul: f(kernels::NAMES[0])?,
            aes: f(kernels::NAMES[1])?,
            sgemm: f(kernels::NAMES[2])?,
            stream,
            sbox,
            ctx,
        })
    }

    /// Name and memory of the GPU.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        format!("cuda (GPU 0: {name})")
    }

    pub fn label_matmul_mod(
        &self,
        w: &[u32],
        x: &[u8],
        m: usize,
        k: usize,
        d: usize,
        p: u32,
    ) -> Result<Vec<u8>, CudaError> {
        let s = &self.stream;
        let dw = s.clone_htod(w).map_err(drv)?;
        let dx = s.clone_htod(x).map_err(drv)?;
        let mut out = s.alloc_zeros::<u8>(m * d).map_err(drv)?;
        let (m32, k32, d32) = (m as u32, k as u32, d as u32);
        let mut b = s.launch_builder(&self.label_matmul);
        b.arg(&dw)
            .arg(&dx)
            .arg(&mut out)
            .arg(&m32)
            .arg(&k32)
            .arg(&d32)
            .arg(&p);
        // SAFETY: argument count and types match the kernel's signature; sizes were checked.
        unsafe { b.launch(cfg(kernels::label_matmul_launch(m32, d32))) }.map_err(drv)?;
        s.clone_dtoh(&out).map_err(drv)
    }

    pub fn aes128_ecb(&self, rk: &[u8; 176], data: &[u8]) -> Result<Vec<u8>, CudaError> {
        let s = &self.stream;
        let n = (data.len() / 16) as u32;
        let drk = s.clone_htod(rk.as_slice()).map_err(drv)?;
        let din = s.clone_htod(data).map_err(drv)?;
        let mut out = s.alloc_zeros::<u8>(data.len()).map_err(drv)?;
        let mut b = s.launch_builder(&self.aes);
        b.arg(&drk).arg(&self.sbox).arg(&din).arg(&mut out).arg(&n);
        // SAFETY: as above.
        unsafe { b.launch(cfg(kernels::aes_launch(n))) }.map_err(drv)?;
        s.clone_dtoh(&out).map_err(drv)
    }

    pub fn sgemm(
        &self,
        a: &[f32],
        bm: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let s = &self.stream;
        let da = s.clone_htod(a).map_err(drv)?;
        let db = s.clone_htod(bm).map_err(drv)?;
        let mut c = s.alloc_zeros::<f32>(m * n).map_err(drv)?;
        let (m32, n32, k32) = (m as u32, n as u32, k as u32);
        let mut b = s.launch_builder(&self.sgemm);
        b.arg(&da)
            .arg(&db)
            .arg(&mut c)
            .arg(&m32)
            .arg(&n32)
            .arg(&k32);
        // SAFETY: as above.
        unsafe { b.launch(cfg(kernels::sgemm_launch(m32, n32))) }.map_err(drv)?;
        s.clone_dtoh(&c).map_err(drv)
    }
}
