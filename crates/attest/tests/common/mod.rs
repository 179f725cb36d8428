//! Helpers shared by the attestation tests: the real samples and their pinned times.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_attest::snp::{CertRole, build_cert_table};
use tessera_attest::{Evidence, Policy, TeeKind};
use tessera_data::shared_data;

/// A real DCAP sample: quote, collateral, and a time inside the collateral's window
/// (its earliest nextUpdate minus one second, as dcap-qvl's own tests pin it).
pub struct DcapSample {
    pub name: &'static str,
    pub kind: TeeKind,
    pub quote: Vec<u8>,
    pub collateral: Vec<u8>,
    pub at: SystemTime,
}

pub fn at(rfc3339: &str) -> SystemTime {
    tessera_attest::cli::parse_time(rfc3339).expect("test time parses")
}

pub fn secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

pub fn dcap_samples() -> Option<Vec<DcapSample>> {
    let dir = shared_data("intel-dcap-quotes")?;
    let read = |f: &str| std::fs::read(dir.join(f)).expect("sample file reads");
    Some(vec![
        DcapSample {
            name: "sgx_quote",
            kind: TeeKind::Sgx,
            quote: read("sgx_quote"),
            collateral: read("sgx_quote_collateral.json"),
            at: at("2025-07-19T10:01:17Z"),
        },
        DcapSample {
            name: "tdx_quote",
            kind: TeeKind::Tdx,
            quote: read("tdx_quote"),
            collateral: read("tdx_quote_collateral.json"),
            at: at("2025-07-19T10:00:34Z"),
        },
        DcapSample {
            name: "tdx_quote_outdated",
            kind: TeeKind::Tdx,
            quote: read("tdx_quote_outdated"),
            collateral: read("tdx_quote_outdated_collateral.json"),
            at: at("2026-03-20T10:41:14Z"),
        },
    ])
}

pub fn dcap_dir() -> Option<PathBuf> {
    shared_data("intel-dcap-quotes")
}

pub fn snp_dir() -> Option<PathBuf> {
    shared_data("amd-sev-snp")
}

/// The Milan report, its VCEK (DER) and the ASK and ARK (DER) from cert_chain_milan.
pub struct SnpSample {
    pub report: Vec<u8>,
    pub vcek: Vec<u8>,
    pub ask: Vec<u8>,
    pub ark: Vec<u8>,
}

pub fn snp_sample() -> Option<SnpSample> {
    let dir = snp_dir()?;
    let read = |f: &str| std::fs::read(dir.join(f)).expect("sample file reads");
    let chain = tessera_attest::snp::pem_certs(&read("cert_chain_milan")).expect("chain parses");
    assert_eq!(chain.len(), 2, "cert_chain_milan is ASK then ARK");
    Some(SnpSample {
        report: read("report_milan.bin"),
        vcek: read("vcek_milan.der"),
        ask: chain[0].clone(),
        ark: chain[1].clone(),
    })
}

impl SnpSample {
    pub fn table(&self) -> Vec<u8> {
        build_cert_table(&[
            (CertRole::Vcek, self.vcek.clone()),
            (CertRole::Ask, self.ask.clone()),
            (CertRole::Ark, self.ark.clone()),
        ])
    }

    pub fn evidence(&self) -> Evidence {
        Evidence {
            kind: TeeKind::SevSnp,
            report: self.report.clone(),
            aux: self.table(),
        }
    }
}

/// A time inside the Milan VCEK's validity (2023-04-03 … 2030-04-03).
pub fn snp_time() -> SystemTime {
    at("2026-11-20T00:00:00Z")
}

/// A policy that accepts every real kind and every Intel status but Revoked: the tests look
/// at what the claims say.
pub fn permissive() -> Policy {
    Policy {
        accepted_tcb_statuses: tessera_attest::KNOWN_TCB_STATUSES
            .iter()
            .filter(|s| **s != "Revoked")
            .map(|s| s.to_string())
            .collect(),
        ..Policy::default()
    }
}
