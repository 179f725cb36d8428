//! The cost model of a simulated enclave: memory against an EPC budget, page traffic, boundary
//! crossings, and a *modeled* time computed from the published SGX constants (DESIGN §2.6).
//!
//! The model is deliberately simple and every number it uses is written here:
//!
//! * **Clock**: a nominal 3.0 GHz converts cycles to time.
//! * **Working set** of one inference: the model's integer weights (8 bytes per parameter, as the
//!   integer engine stores them), plus the largest activation footprint of any layer (its
//!   inputs, its output and, for a convolution, its im2col buffer, 8 bytes per element), plus a
//!   fixed 8 MiB for code, stacks and buffers.
//! * **Paging**: with a working set `W` within the budget `B`, pages are loaded once when the
//!   model loads and never again. With `W > B`, an inference sweeps the whole working set in
//!   order, which an LRU pager serves with a fault on every page: `⌈W/4096⌉` page-ins and as
//!   many page-outs per inference, at 40,000 cycles per page moved (the SGX1 figure, for
//!   encryption, integrity tree update and the exits involved).
//! * **Crossings**: one ECALL per request (8,000 cycles) and one OCALL per network send or
//!   receive the enclave makes (10,000 cycles).
//! * **Compute**: the measured time of the computation itself, outside any enclave. The modeled
//!   time is `measured compute + paging + crossings`; it is a model, reported beside the
//!   measured time and never added to it.
//!
//! Profiles: `sgx1` (93 MB EPC), `sgx2` (the same constants with a 64 GiB EPC: paging vanishes,
//! crossings remain), `cvm` (SEV-SNP/TDX confidential VM: no EPC limit, no ECALLs; each network
//! send or receive is a VM exit, charged like an OCALL).

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tessera_model::ir::{Graph, Op};

/// Nominal clock that turns modeled cycles into time.
pub const MODEL_GHZ: f64 = 3.0;

/// Bytes of one EPC page.
pub const PAGE_BYTES: u64 = 4096;

/// Fixed part of the working set (code, stacks, buffers).
pub const FIXED_BYTES: u64 = 8 << 20;

/// A set of TEE cost constants.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Profile {
    /// Profile name: `sgx1`, `sgx2` or `cvm`.
    pub name: &'static str,
    /// Protected memory budget in bytes (`u64::MAX`: unlimited).
    pub epc_bytes: u64,
    /// Cycles per 4 KiB page moved in or out.
    pub page_cycles: u64,
    /// Cycles per ECALL (one per request).
    pub ecall_cycles: u64,
    /// Cycles per OCALL or VM exit (one per network send or receive).
    pub ocall_cycles: u64,
}

/// The SGX1 profile (DESIGN §2.6): 93 MB usable EPC.
pub const SGX1: Profile = Profile {
    name: "sgx1",
    epc_bytes: 93_000_000,
    page_cycles: 40_000,
    ecall_cycles: 8_000,
    ocall_cycles: 10_000,
};

/// SGX2: the same transitions, a 64 GiB EPC.
pub const SGX2: Profile = Profile {
    name: "sgx2",
    epc_bytes: 64 << 30,
    page_cycles: 40_000,
    ecall_cycles: 8_000,
    ocall_cycles: 10_000,
};

/// A confidential VM (SEV-SNP, TDX): no EPC limit, no ECALLs, I/O exits charged like OCALLs.
pub const CVM: Profile = Profile {
    name: "cvm",
    epc_bytes: u64::MAX,
    page_cycles: 0,
    ecall_cycles: 0,
    ocall_cycles: 10_000,
};

impl Profile {
    /// The profile called `name`.
    pub fn by_name(name: &str) -> Option<Profile> {
        [SGX1, SGX2, CVM].into_iter().find(|p| p.name == name)
    }

    /// This profile with another EPC budget.
    pub fn with_epc(mut self, bytes: u64) -> Self {
        self.epc_bytes = bytes;
        self
    }
}

/// Memory footprint of a model in the enclave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Integer weights and biases.
    pub weight_bytes: u64,
    /// The largest per-layer activation footprint.
    pub activation_bytes: u64,
}

impl Footprint {
    /// The footprint of running `g` in the integer engine (see the module documentation).
    pub fn of(g: &Graph) -> Self {
        let mut weights = 0u64;
        let mut act = 0u64;
        for n in &g.nodes {
            let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
            let out = numel(g.shape(n.output));
            let ins: u64 = n.inputs.iter().map(|&v| numel(g.shape(v))).sum();
            let mut extra = 0;
            match &n.op {
                Op::Conv(c) => {
                    weights +=
                        c.weight.len() as u64 + c.bias.as_ref().map_or(0, |b| b.len() as u64);
                    // im2col: (C_in/groups · kh · kw) × (H_out · W_out) per group, one at a time.
                    let ws = c.weight.shape();
                    let k: u64 = ws.iter().skip(1).map(|&d| d as u64).product();
                    let o = g.shape(n.output);
                    let hw: u64 = o.iter().skip(2).map(|&d| d as u64).product();
                    extra = k * hw;
                }
                Op::Dense(d) => {
                    weights +=
                        d.weight.len() as u64 + d.bias.as_ref().map_or(0, |b| b.len() as u64);
                }
                Op::Constant(t) => weights += t.len() as u64,
                _ => {}
            }
            act = act.max(out + ins + extra);
        }
        Footprint {
            weight_bytes: weights * 8,
            activation_bytes: act * 8,
        }
    }

    /// The working set of one inference.
    pub fn working_set(&self) -> u64 {
        self.weight_bytes + self.activation_bytes + FIXED_BYTES
    }
}

/// Modeled TEE costs of one request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TeeCost {
    /// Profile used.
    pub profile: String,
    /// Working set in bytes.
    pub working_set: u64,
    /// The EPC budget in bytes.
    pub epc_bytes: u64,
    /// Pages brought in during the request.
    pub page_ins: u64,
    /// Pages evicted during the request.
    pub page_outs: u64,
    /// ECALLs.
    pub ecalls: u64,
    /// OCALLs or VM exits.
    pub ocalls: u64,
    /// Measured computation time (outside any enclave), nanoseconds.
    pub measured_ns: u64,
    /// Modeled time inside the TEE, nanoseconds.
    pub modeled_ns: u64,
}

impl Default for Profile {
    fn default() -> Self {
        SGX1
    }
}

/// Model one request that ran for `measured` with working set `fp`, making `io_ops` network sends
/// or receives inside the enclave.
pub fn model_request(p: &Profile, fp: &Footprint, measured: Duration, io_ops: u64) -> TeeCost {
    let ws = fp.working_set();
    let pages = if ws > p.epc_bytes {
        ws.div_ceil(PAGE_BYTES)
    } else {
        0
    };
    let ecalls = u64::from(p.ecall_cycles > 0);
    let cycles = pages * 2 * p.page_cycles + ecalls * p.ecall_cycles + io_ops * p.ocall_cycles;
    let overhead_ns = (cycles as f64 / MODEL_GHZ) as u64;
    let measured_ns = measured.as_nanos().min(u128::from(u64::MAX)) as u64;
    TeeCost {
        profile: p.name.to_string(),
        working_set: ws,
        epc_bytes: p.epc_bytes,
        page_ins: pages,
        page_outs: pages,
        ecalls,
        ocalls: io_ops,
        measured_ns,
        modeled_ns: measured_ns.saturating_add(overhead_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_model_fits_and_large_one_pages() {
        let small = Footprint {
            weight_bytes: 1 << 20,
            activation_bytes: 1 << 20,
        };
        let c = model_request(&SGX1, &small, Duration::from_millis(1), 2);
        assert_eq!(c.page_ins, 0);
        // 8,000 + 2 × 10,000 cycles at 3 GHz ≈ 9.3 µs.
        assert_eq!(c.modeled_ns, 1_000_000 + 9_333);
        let big = Footprint {
            weight_bytes: 200 << 20,
            activation_bytes: 0,
        };
        let c = model_request(&SGX1, &big, Duration::from_millis(1), 2);
        assert_eq!(c.page_ins, ((200u64 << 20) + FIXED_BYTES) / 4096);
        // 53,248 pages in and out at 40,000 cycles each, 3 GHz: 1.42 s.
        assert_eq!(c.modeled_ns, 1_000_000 + 1_419_956_000, "{c:?}");
        let c2 = model_request(&SGX2, &big, Duration::from_millis(1), 2);
        assert_eq!(c2.page_ins, 0);
        let c3 = model_request(&CVM, &big, Duration::from_millis(1), 2);
        assert_eq!((c3.page_ins, c3.ecalls), (0, 0));
    }

    #[test]
    fn profiles_by_name() {
        assert_eq!(Profile::by_name("sgx1"), Some(SGX1));
        assert_eq!(Profile::by_name("cvm"), Some(CVM));
        assert!(Profile::by_name("tz").is_none());
    }
}
