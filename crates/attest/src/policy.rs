//! The verification policy: which evidence a verifier accepts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AttestError, Claims, TeeKind, ct_eq};

/// Intel TCB statuses a policy may name (from Intel's TCB info).
pub const KNOWN_TCB_STATUSES: [&str; 9] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
    "Revoked",
];

/// A verification policy, normally read from a JSON file with [`Policy::load`]. Unknown keys
/// are errors (a misspelt key must not silently weaken the policy). Every key is optional:
///
/// ```json
/// {
///   "allowed_kinds": ["snp", "tdx", "sgx"],
///   "allow_simulated": false,
///   "sim_platform_keys": [],
///   "measurements": ["7a1e5c26…"],
///   "app_measurements": ["3b0f…"],
///   "tdx_rtmrs": ["…", "…", "…", null],
///   "accepted_tcb_statuses": ["UpToDate"],
///   "rejected_advisories": [],
///   "snp_min_tcb": { "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 },
///   "allow_debug": false,
///   "report_data": null
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The TEE kinds accepted. Default: snp, tdx, sgx (and sim, which still needs
    /// `allow_simulated`).
    #[serde(default = "default_kinds")]
    pub allowed_kinds: Vec<TeeKind>,
    /// Accept simulated evidence (no security; development only). Default false.
    #[serde(default)]
    pub allow_simulated: bool,
    /// Fingerprints (hex, see [`crate::sim::PlatformKey::fingerprint`]) of the simulated
    /// platform keys accepted; empty accepts any key.
    #[serde(default)]
    pub sim_platform_keys: Vec<String>,
    /// Expected hardware measurements (hex): SEV-SNP `MEASUREMENT` and TDX `MRTD` (48 bytes:
    /// the launch image of the confidential VM), SGX `MRENCLAVE` (32), or, for simulated
    /// evidence, the application measurement itself (48). Empty accepts any in
    /// [`crate::verify`]; an enclave session ([`crate::verify_session`]) refuses a policy for
    /// a real TEE that leaves it empty.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Expected application measurements (48-byte hex, as printed by
    /// `tessera enclave --measure-only`: enclave binary, model and enclave policy). For
    /// SEV-SNP, TDX and SGX they are carried in the report data of an enclave session
    /// ([`crate::session_report_data`]) and checked by [`crate::check_session_binding`]; an
    /// enclave session refuses a policy for a real TEE that names none. For simulated evidence
    /// they are optional (the simulated report's measurement is the application measurement).
    #[serde(default)]
    pub app_measurements: Vec<String>,
    /// Expected TDX runtime measurement registers RTMR0..RTMR3 (48-byte hex each; `null`
    /// leaves that register unchecked). Absent checks none. An enclave session with TDX
    /// evidence refuses a policy that does not name RTMR0, RTMR1 and RTMR2 (firmware
    /// configuration, the OS loader and kernel, the kernel command line and initrd), since
    /// `MRTD` covers only the virtual firmware.
    #[serde(default)]
    pub tdx_rtmrs: Option<[Option<String>; 4]>,
    /// Intel TCB statuses accepted for SGX and TDX. Default `["UpToDate"]`. (SEV-SNP has no
    /// status from AMD; use `snp_min_tcb`.)
    #[serde(default = "default_statuses")]
    pub accepted_tcb_statuses: Vec<String>,
    /// Intel advisories (`INTEL-SA-…`) that make SGX/TDX evidence unacceptable.
    #[serde(default)]
    pub rejected_advisories: Vec<String>,
    /// Minimum SEV-SNP reported TCB; absent accepts any.
    #[serde(default)]
    pub snp_min_tcb: Option<SnpMinTcb>,
    /// Accept debug-enabled guests and enclaves (whose memory the host can read). Default false.
    #[serde(default)]
    pub allow_debug: bool,
    /// Expected report data (128 hex digits), when a policy is made for one session.
    #[serde(default)]
    pub report_data: Option<String>,
}

/// Minimum SEV-SNP TCB component versions (security version numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpMinTcb {
    /// PSP bootloader SVN.
    #[serde(default)]
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    #[serde(default)]
    pub tee: u8,
    /// SNP firmware SVN.
    #[serde(default)]
    pub snp: u8,
    /// Microcode patch level.
    #[serde(default)]
    pub microcode: u8,
    /// FMC SVN (Turin and later; ignored where the report has none).
    #[serde(default)]
    pub fmc: Option<u8>,
}

fn default_kinds() -> Vec<TeeKind> {
    TeeKind::ALL.to_vec()
}

fn default_statuses() -> Vec<String> {
    vec!["UpToDate".to_string()]
}

impl Default for Policy {
    /// The strict default: real TEEs only, any measurement, TCB `UpToDate`, no debug.
    fn default() -> Self {
        Policy {
            allowed_kinds: default_kinds(),
            allow_simulated: false,
            sim_platform_keys: Vec::new(),
            measurements: Vec::new(),
            app_measurements: Vec::new(),
            tdx_rtmrs: None,
            accepted_tcb_statuses: default_statuses(),
            rejected_advisories: Vec::new(),
            snp_min_tcb: None,
            allow_debug: false,
            report_data: None,
        }
    }
}

/// Largest policy file read.
const MAX_POLICY_LEN: u64 = 1 << 20;

impl Policy {
    /// Reads and checks a JSON policy file.
    pub fn load(path: &Path) -> Result<Self, AttestError> {
        let bytes = read_capped(path, MAX_POLICY_LEN)?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// Parses and checks a JSON policy; `origin` names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, AttestError> {
        let p: Policy = serde_json::from_slice(bytes).map_err(|e| AttestError::Policy {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        p.validate(origin)?;
        Ok(p)
    }

    /// A development policy: simulated evidence only (from any platform key), any measurement.
    pub fn simulated_dev() -> Self {
        Policy {
            allowed_kinds: vec![TeeKind::Sim],
            allow_simulated: true,
            ..Policy::default()
        }
    }

    /// Checks the fields that `serde` cannot: hex strings, lengths, status names.
    pub fn validate(&self, origin: &str) -> Result<(), AttestError> {
        let bad = |reason: String| AttestError::Policy {
            path: origin.to_string(),
            reason,
        };
        for m in &self.measurements {
            let b = hex::decode(m.trim())
                .map_err(|e| bad(format!("measurement {m:?} is not hex: {e}")))?;
            if b.len() != 32 && b.len() != 48 {
                return Err(bad(format!(
                    "measurement {m:?} has {} bytes; SGX MRENCLAVE has 32, SNP/TDX/sim measurements 48",
                    b.len()
                )));
            }
        }
        for m in &self.app_measurements {
            let b = hex::decode(m.trim())
                .map_err(|e| bad(format!("app measurement {m:?} is not hex: {e}")))?;
            if b.len() != 48 {
                return Err(bad(format!(
                    "app measurement {m:?} has {} bytes, expected 48 (the output of `tessera enclave --measure-only`)",
                    b.len()
                )));
            }
        }
        for (i, r) in self.tdx_rtmrs.iter().flatten().enumerate() {
            if let Some(r) = r {
                let b = hex::decode(r.trim())
                    .map_err(|e| bad(format!("tdx_rtmrs[{i}] {r:?} is not hex: {e}")))?;
                if b.len() != 48 {
                    return Err(bad(format!(
                        "tdx_rtmrs[{i}] has {} bytes, expected 48",
                        b.len()
                    )));
                }
            }
        }
        for k in &self.sim_platform_keys {
            let b = hex::decode(k.trim())
                .map_err(|e| bad(format!("sim platform key {k:?} is not hex: {e}")))?;
            if b.len() != 32 {
                return Err(bad(format!(
                    "sim platform key fingerprint {k:?} has {} bytes, expected 32",
                    b.len()
                )));
            }
        }
        for s in &self.accepted_tcb_statuses {
            if !KNOWN_TCB_STATUSES.contains(&s.as_str()) {
                return Err(bad(format!(
                    "unknown TCB status {s:?}; known: {}",
                    KNOWN_TCB_STATUSES.join(", ")
                )));
            }
        }
        if self.accepted_tcb_statuses.iter().any(|s| s == "Revoked") {
            return Err(bad(
                "\"Revoked\" cannot be accepted: a revoked platform's keys are compromised".into(),
            ));
        }
        if let Some(rd) = &self.report_data {
            let b =
                hex::decode(rd.trim()).map_err(|e| bad(format!("report_data is not hex: {e}")))?;
            if b.len() != 64 {
                return Err(bad(format!(
                    "report_data has {} bytes, expected 64",
                    b.len()
                )));
            }
        }
        Ok(())
    }

    /// Refuses evidence kinds the policy does not allow (simulated evidence needs
    /// `allow_simulated` as well).
    pub fn check_kind(&self, kind: TeeKind) -> Result<(), AttestError> {
        if kind == TeeKind::Sim && !self.allow_simulated {
            return Err(AttestError::SimulatedNotAllowed);
        }
        if !self.allowed_kinds.contains(&kind) {
            return Err(AttestError::KindNotAllowed {
                kind,
                allowed: self
                    .allowed_kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }

    /// What an enclave session needs the policy to pin for evidence of `kind`, checked before
    /// the evidence is looked at: for SEV-SNP, TDX and SGX the hardware measurement
    /// (`measurements`) and the application measurement (`app_measurements`), and for TDX also
    /// RTMR0, RTMR1 and RTMR2 (`tdx_rtmrs`). Without them any guest on genuine hardware (the
    /// host's own, running its own code) could bind its own certificate. Simulated evidence
    /// needs nothing more here (it needs `allow_simulated`, and proves nothing anyway).
    pub fn require_session_pins(&self, kind: TeeKind) -> Result<(), AttestError> {
        if kind == TeeKind::Sim {
            return Ok(());
        }
        let missing = |missing: &'static str| AttestError::MeasurementRequired { kind, missing };
        if self.app_measurements.is_empty() {
            return Err(missing("app_measurements"));
        }
        if self.measurements.is_empty() {
            return Err(missing("measurements"));
        }
        if kind == TeeKind::Tdx {
            let named = |i: usize| {
                self.tdx_rtmrs
                    .as_ref()
                    .and_then(|r| r.get(i))
                    .is_some_and(Option::is_some)
            };
            if !(named(0) && named(1) && named(2)) {
                return Err(missing("tdx_rtmrs"));
            }
        }
        Ok(())
    }

    /// The checks on authenticated claims that do not depend on the TEE kind: kind,
    /// measurement, TDX RTMRs, report data, Intel TCB status and advisories.
    pub fn check_claims(&self, c: &Claims) -> Result<(), AttestError> {
        self.check_kind(c.kind)?;
        if !self.measurements.is_empty() {
            let ok = self.measurements.iter().any(|m| {
                hex::decode(m.trim())
                    .map(|b| ct_eq(&b, &c.measurement))
                    .unwrap_or(false)
            });
            if !ok {
                return Err(AttestError::MeasurementMismatch {
                    got: hex::encode(&c.measurement),
                    expected: self.measurements.join(", "),
                });
            }
        }
        if c.kind == TeeKind::Tdx
            && let Some(rtmrs) = &self.tdx_rtmrs
        {
            for (index, want) in rtmrs.iter().enumerate() {
                let Some(want) = want else { continue };
                let got = c.rtmrs.get(index).map(Vec::as_slice).unwrap_or(&[]);
                let ok = hex::decode(want.trim())
                    .map(|b| ct_eq(&b, got))
                    .unwrap_or(false);
                if !ok {
                    return Err(AttestError::RtmrMismatch {
                        index,
                        got: hex::encode(got),
                        expected: want.clone(),
                    });
                }
            }
        }
        if let Some(rd) = &self.report_data {
            let want = hex::decode(rd.trim()).unwrap_or_default();
            if !ct_eq(&want, &c.report_data) {
                return Err(AttestError::ReportDataMismatch);
            }
        }
        if matches!(c.kind, TeeKind::Sgx | TeeKind::Tdx) {
            if !self.accepted_tcb_statuses.contains(&c.tcb_status) {
                return Err(AttestError::TcbStatusRejected {
                    status: c.tcb_status.clone(),
                    accepted: self.accepted_tcb_statuses.join(", "),
                    advisories: if c.advisories.is_empty() {
                        "none".into()
                    } else {
                        c.advisories.join(", ")
                    },
                });
            }
            if let Some(a) = c.advisories.iter().find(|a| {
                self.rejected_advisories
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(a))
            }) {
                return Err(AttestError::AdvisoryRejected(a.clone()));
            }
        }
        Ok(())
    }
}

/// Reads at most `cap` bytes of a file; a longer file is an error.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, AttestError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| AttestError::io("open", path, e))?;
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| AttestError::io("read", path, e))?;
    if buf.len() as u64 > cap {
        return Err(AttestError::io(
            "read",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is larger than the {cap}-byte limit"),
            ),
        ));
    }
    Ok(buf)
}
