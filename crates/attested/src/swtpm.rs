//! A software TPM (swtpm) on loopback for tests and the local demo, and a synthetic measured
//! host: an IMA log whose entries are extended into the TPM's PCR 10 as the kernel would.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_tpm::verifier::QUOTE_BANK;
use tessera_tpm::{
    Agent, FileDigest, HashAlg, ImaEntry, ImaLog, ImaSource, PcrSelection, RuntimePolicy,
};

use crate::error::AttestedError;

/// What to tell a user without swtpm.
pub const SWTPM_MISSING: &str = "swtpm is not installed: the local flow needs a software TPM. \
     Install the Debian packages swtpm and swtpm-tools (apt-get install swtpm swtpm-tools), \
     or run on a host with a TPM";

/// Whether `swtpm` runs.
pub fn swtpm_installed() -> bool {
    Command::new("swtpm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running swtpm with its state directory; stopped and removed on drop.
pub struct Swtpm {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl std::fmt::Debug for Swtpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Swtpm(127.0.0.1:{})", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port_pair() -> Option<u16> {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let p = addr.port();
        if p < 65535 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Some(p);
        }
    }
    None
}

impl Swtpm {
    /// Starts swtpm on two free consecutive loopback ports with its state under `base`.
    pub fn start(base: &Path) -> Result<Swtpm, AttestedError> {
        if !swtpm_installed() {
            return Err(AttestedError::Swtpm(SWTPM_MISSING.into()));
        }
        for attempt in 0..5 {
            let port = free_port_pair().ok_or_else(|| {
                AttestedError::Swtpm("no two consecutive free loopback ports".into())
            })?;
            let dir = base.join(format!("swtpm-{}-{port}-{attempt}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| AttestedError::io("creating", &dir, e))?;
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--tpmstate", &format!("dir={}", dir.display())])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| AttestedError::Swtpm(format!("starting swtpm: {e}")))?;
            let mut tpm = Swtpm { child, dir, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            // Ready when both the control and the TPM port accept connections: swtpm opens
            // them one after the other, and a client that connects to the TPM port between the
            // two is refused (seen under load in CI).
            let ctrl = SocketAddr::from(([127, 0, 0, 1], port + 1));
            let server = SocketAddr::from(([127, 0, 0, 1], port));
            while Instant::now() < deadline {
                if let Ok(Some(_)) = tpm.child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&ctrl, Duration::from_millis(200)).is_ok()
                    && TcpStream::connect_timeout(&server, Duration::from_millis(200)).is_ok()
                {
                    return Ok(tpm);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(tpm);
        }
        Err(AttestedError::Swtpm(
            "swtpm did not start on loopback after 5 attempts".into(),
        ))
    }

    /// The TCTI string for this swtpm.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

/// A synthetic measured host: the files it has run, in order.
#[derive(Clone, Debug, Default)]
pub struct HostImage {
    /// `(path, content digest)` of each measured file.
    pub files: Vec<(String, Vec<u8>)>,
}

impl HostImage {
    /// A training host's software: an interpreter, a numeric library and the trainer, with
    /// digests derived from their names and versions.
    pub fn training_host() -> HostImage {
        let f = |p: &str, v: &str| (p.to_string(), HashAlg::Sha256.digest(v.as_bytes()));
        HostImage {
            files: vec![
                f("/usr/bin/tessera", "tessera 0.1.0 agent"),
                f("/usr/lib/x86_64-linux-gnu/libc.so.6", "glibc 2.41"),
                f("/usr/lib/x86_64-linux-gnu/libgomp.so.1", "libgomp 14"),
            ],
        }
    }

    /// The Keylime runtime policy that allows exactly these files (as `keylime-policy create
    /// runtime` would generate from the host image), with `/tmp` excluded.
    pub fn allow_list(&self) -> Result<String, AttestedError> {
        let mut p = RuntimePolicy::new(HashAlg::Sha1);
        for (path, d) in &self.files {
            p.allow(path, d);
        }
        p.exclude("/tmp/.*")
            .map_err(|e| AttestedError::Swtpm(e.to_string()))?;
        Ok(p.to_keylime_json())
    }
}

/// A booted host: its TPM agent and the IMA log it has extended into PCR 10.
pub struct MeasuredHost {
    /// The TPM agent (dropped before the TPM).
    pub agent: Agent,
    /// The IMA log so far.
    pub log: ImaLog,
    /// Boot PCR values 0–9 (SHA-256 bank).
    pub boot_pcrs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for MeasuredHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeasuredHost")
            .field("agent", &self.agent)
            .field("entries", &self.log.entries().len())
            .finish()
    }
}

impl MeasuredHost {
    /// Connects to the TPM at `tcti`, records `boot_aggregate`, then measures `image`'s files.
    pub fn boot(tcti: &str, image: &HostImage) -> Result<MeasuredHost, AttestedError> {
        let mut agent = Agent::connect(Some(tcti))?;
        let boot = agent.read_pcrs(&PcrSelection::new(
            QUOTE_BANK,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        ))?;
        let boot_pcrs: Vec<Vec<u8>> = (0..=9u8)
            .map(|i| {
                boot.get(QUOTE_BANK, i)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            })
            .collect();
        let parts: Vec<&[u8]> = boot_pcrs.iter().map(Vec::as_slice).collect();
        let aggregate = HashAlg::Sha256.digest_parts(&parts);
        let mut host = MeasuredHost {
            agent,
            log: ImaLog::new(HashAlg::Sha1),
            boot_pcrs,
        };
        host.measure(ImaEntry::ima_ng(
            "boot_aggregate",
            FileDigest::new(HashAlg::Sha256, aggregate),
            HashAlg::Sha1,
        ))?;
        for (path, digest) in &image.files {
            host.run_file(path, digest)?;
        }
        Ok(host)
    }

    /// Measures a file the host runs (an `ima-ng` entry with its SHA-256 digest).
    pub fn run_file(&mut self, path: &str, digest: &[u8]) -> Result<(), AttestedError> {
        self.measure(ImaEntry::ima_ng(
            path,
            FileDigest::new(HashAlg::Sha256, digest.to_vec()),
            HashAlg::Sha1,
        ))
    }

    /// Appends an entry and extends PCR 10 (SHA-1 and SHA-256 banks) as the kernel would.
    pub fn measure(&mut self, entry: ImaEntry) -> Result<(), AttestedError> {
        let digests: Vec<(HashAlg, Vec<u8>)> = [HashAlg::Sha1, HashAlg::Sha256]
            .into_iter()
            .map(|b| (b, entry.pcr_digest(b)))
            .collect();
        let pcr = u8::try_from(entry.pcr).unwrap_or(10);
        self.agent.extend_pcr(pcr, &digests)?;
        self.log.push(entry);
        Ok(())
    }

    /// The log, as the agent reads it.
    pub fn ima(&self) -> ImaSource {
        ImaSource::Bytes(self.log.to_bytes())
    }
}

impl crate::host::Host for MeasuredHost {
    fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }
    fn ima(&self) -> ImaSource {
        MeasuredHost::ima(self)
    }
    /// Stands in for the kernel: the file's `ima-ng` entry, extended into PCR 10.
    fn measure_file(&mut self, path: &str, sha256: &[u8]) -> Result<(), AttestedError> {
        self.run_file(path, sha256)
    }
}
