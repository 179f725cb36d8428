//! Real evidence from Linux configfs-tsm (kernel 6.7 and newer, inside an SEV-SNP or TDX
//! guest): make an entry under `/sys/kernel/config/tsm/report`, write the report data to its
//! `inblob`, read `outblob` (the SNP report or TDX quote), `auxblob` (SNP certificates, if the
//! host supplies them) and `provider`, and remove the entry. The entry's `generation`
//! counter, read before and after, detects another writer racing on the same entry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{AttestError, Evidence, TeeKind};

/// Where configfs-tsm's report entries live.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// Largest outblob or auxblob read.
const MAX_BLOB: u64 = 1 << 20;

/// Collects evidence for `report_data` from configfs-tsm at its usual place.
pub fn collect(report_data: &[u8; 64]) -> Result<Evidence, AttestError> {
    collect_at(Path::new(TSM_REPORT_DIR), report_data)
}

/// The evidence kind a configfs-tsm `provider` names.
pub fn kind_of_provider(provider: &str) -> Option<TeeKind> {
    match provider.trim() {
        "sev_guest" => Some(TeeKind::SevSnp),
        "tdx_guest" => Some(TeeKind::Tdx),
        _ => None,
    }
}

/// Removes the report entry when dropped.
struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Collects evidence from a configfs-tsm report directory `root`.
pub fn collect_at(root: &Path, report_data: &[u8; 64]) -> Result<Evidence, AttestError> {
    let unavailable = |reason: String| AttestError::TsmUnavailable {
        path: root.to_path_buf(),
        reason,
    };
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(unavailable("it is not a directory".into())),
        Err(e) => return Err(unavailable(e.to_string())),
    }
    let name = format!(
        "tessera-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = root.join(name);
    std::fs::create_dir(&dir)
        .map_err(|e| unavailable(format!("cannot make a report entry: {e}")))?;
    let entry = Entry(dir);
    let attr = |a: &str| entry.0.join(a);
    let read = |a: &str| -> Result<Vec<u8>, AttestError> {
        crate::policy::read_capped(&attr(a), MAX_BLOB)
            .map_err(|e| AttestError::Tsm(format!("reading {a}: {e}")))
    };
    let provider = String::from_utf8_lossy(&read("provider")?)
        .trim()
        .to_string();
    let kind = kind_of_provider(&provider).ok_or_else(|| {
        AttestError::Tsm(format!(
            "provider {provider:?} is not one tessera understands (sev_guest, tdx_guest)"
        ))
    })?;
    std::fs::write(attr("inblob"), report_data)
        .map_err(|e| AttestError::Tsm(format!("writing inblob: {e}")))?;
    let generation = read("generation")?;
    let report = read("outblob")?;
    let aux = match kind {
        TeeKind::SevSnp => read("auxblob").unwrap_or_default(),
        _ => Vec::new(),
    };
    if read("generation")? != generation {
        return Err(AttestError::Tsm(
            "another process wrote the report entry while it was read; retry".into(),
        ));
    }
    if report.is_empty() {
        return Err(AttestError::Tsm("the outblob is empty".into()));
    }
    drop(entry);
    Ok(Evidence { kind, report, aux })
}
