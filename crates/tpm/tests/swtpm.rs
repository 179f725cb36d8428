//! End to end against a software TPM (swtpm) that each test starts and stops on loopback: the
//! agent creates its keys in swtpm, a synthetic IMA log is built and extended into PCR 10, and
//! the verifier accepts the honest host and rejects each attack with a reason that names it.
//!
//! Without swtpm installed these tests print why they skip, unless `CI` is set, where they fail.
#![cfg(feature = "agent")]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use tessera_tpm::verifier::{QUOTE_BANK, QUOTED_PCRS};
use tessera_tpm::{
    Agent, AttestationPolicy, EntryRejection, Evidence, FileDigest, HashAlg, ImaEntry, ImaLog,
    ImaSource, PcrSelection, RuntimePolicy, Verifier, VerifyError, activation_proof,
    quote_qualifying_data, quote_selection,
};

/// A swtpm process with its state directory; killed and removed on drop.
struct Swtpm {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn swtpm_installed() -> bool {
    Command::new("swtpm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two consecutive free loopback ports (the swtpm TCTI uses `port` and `port + 1`).
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let p = addr.port();
        if p < 65535 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free loopback ports");
}

fn start_swtpm() -> Option<Swtpm> {
    if !swtpm_installed() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "swtpm is not installed, and CI must run the TPM tests: apt-get install swtpm swtpm-tools"
            );
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: swtpm is not installed (Debian: apt-get install swtpm swtpm-tools, or run scripts/setup.sh as root)"
        );
        return None;
    }
    for attempt in 0..5 {
        let port = free_port_pair();
        let dir = std::env::temp_dir().join(format!(
            "tessera-swtpm-{}-{port}-{attempt}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
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
            .expect("spawn swtpm");
        let mut tpm = Swtpm { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port + 1));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = tpm.child.try_wait() {
                break; // exited: the port was taken after all
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(tpm);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(tpm);
    }
    panic!("swtpm did not start on loopback after 5 attempts");
}

fn sha256_digest(tag: &str) -> FileDigest {
    FileDigest::new(HashAlg::Sha256, HashAlg::Sha256.digest(tag.as_bytes()))
}

/// A host: swtpm, its agent, a synthetic IMA log already extended into PCR 10, and the policy
/// that accepts it.
struct Host {
    // Dropped first, so that it flushes its keys while swtpm still runs.
    agent: Agent,
    log: ImaLog,
    policy: AttestationPolicy,
    _tpm: Swtpm,
}

impl Host {
    fn new() -> Option<Host> {
        let tpm = start_swtpm()?;
        let mut agent =
            Agent::connect(Some(&format!("swtpm:host=127.0.0.1,port={}", tpm.port))).unwrap();
        let boot = agent
            .read_pcrs(&PcrSelection::new(QUOTE_BANK, &QUOTED_PCRS[..10]))
            .unwrap();
        let aggregate = HashAlg::Sha256.digest_parts(
            &(0..=9)
                .map(|i| boot.get(QUOTE_BANK, i).unwrap())
                .collect::<Vec<_>>(),
        );

        let mut log = ImaLog::new(HashAlg::Sha1);
        log.push(ImaEntry::ima_ng(
            "boot_aggregate",
            FileDigest::new(HashAlg::Sha256, aggregate),
            HashAlg::Sha1,
        ));
        log.push(ImaEntry::ima_sig(
            "/usr/bin/python3",
            sha256_digest("python3"),
            &[],
            HashAlg::Sha1,
        ));
        log.push(ImaEntry::ima_ng(
            "/usr/lib/libtorch.so",
            sha256_digest("libtorch"),
            HashAlg::Sha1,
        ));
        log.push(ImaEntry::violation(
            "/tmp/scratch",
            HashAlg::Sha256,
            HashAlg::Sha1,
        ));
        let mut host = Host {
            _tpm: tpm,
            agent,
            log: ImaLog::new(HashAlg::Sha1),
            policy: placeholder_policy(),
        };
        for e in log.entries() {
            host.measure(e.clone());
        }

        let mut allow = RuntimePolicy::new(HashAlg::Sha1);
        allow.allow("/usr/bin/python3", &sha256_digest("python3").value);
        allow.allow("/usr/lib/libtorch.so", &sha256_digest("libtorch").value);
        allow.exclude("/tmp/.*").unwrap();
        // The log holds a violation on /tmp: this policy opts in to excluding violations on
        // excluded paths (refused by default, since a violation's path is not measured).
        allow.allow_excluded_violations(true);
        // Through Keylime's JSON, as a stakeholder would hand it over.
        let allow = RuntimePolicy::from_keylime_json(&allow.to_keylime_json()).unwrap();
        let mut policy = AttestationPolicy::new(host.agent.ek_public().clone(), allow);
        for pcr in 0..=9u8 {
            policy
                .boot_pcrs
                .insert(pcr, vec![boot.get(QUOTE_BANK, pcr).unwrap().to_vec()]);
        }
        host.policy = policy;
        Some(host)
    }

    /// Appends an entry to the log and extends PCR 10 as the kernel would.
    fn measure(&mut self, entry: ImaEntry) {
        let digests: Vec<(HashAlg, Vec<u8>)> = [HashAlg::Sha1, HashAlg::Sha256]
            .into_iter()
            .map(|b| (b, entry.pcr_digest(b)))
            .collect();
        self.agent.extend_pcr(entry.pcr as u8, &digests).unwrap();
        self.log.push(entry);
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(self.policy.clone()).unwrap()
    }

    fn ima(&self) -> ImaSource {
        ImaSource::Bytes(self.log.to_bytes())
    }
}

fn placeholder_policy() -> AttestationPolicy {
    AttestationPolicy {
        trusted_eks: Vec::new(),
        boot_pcrs: Default::default(),
        allow_lists: Vec::new(),
        ima_template_hash_alg: HashAlg::Sha1,
        nonce_lifetime: Duration::from_secs(60),
        allow_unquoted_tail: false,
    }
}

/// Runs one honest round and returns the verifier's result.
fn attest(
    host: &mut Host,
    verifier: &Verifier,
    binding: &[u8],
) -> Result<tessera_tpm::Verdict, VerifyError> {
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let ima = host.ima();
    let evidence = host.agent.respond(&challenge, binding, &ima).unwrap();
    verifier.verify(pending, &evidence)
}

fn expect_err(result: Result<tessera_tpm::Verdict, VerifyError>, words: &str) -> VerifyError {
    match result {
        Ok(v) => panic!("accepted, expected a rejection mentioning {words:?}: {v:?}"),
        Err(e) => {
            assert!(
                e.to_string().contains(words),
                "rejection {e} does not mention {words:?}"
            );
            e
        }
    }
}

#[test]
fn honest_host_is_accepted() {
    let Some(mut host) = Host::new() else { return };
    let verifier = host.verifier();
    let verdict = attest(&mut host, &verifier, b"agent key-exchange public key").unwrap();
    assert_eq!(verdict.ima_entries, 4);
    assert_eq!(verdict.ima_excluded, 1, "the violation on /tmp is excluded");
    assert_eq!(verdict.ima_unquoted, 0);
    assert_eq!(verdict.binding, b"agent key-exchange public key");
    assert_eq!(verdict.ek_name, host.agent.ek_public().name());
    assert_eq!(verdict.ak_name, host.agent.ak_public().name());
    assert_eq!(
        verdict.pcrs.get(QUOTE_BANK, 10).unwrap(),
        host.log.replay(10, QUOTE_BANK).as_slice()
    );

    // More files measured, attested again: still fine.
    host.measure(ImaEntry::ima_ng(
        "/tmp/out.bin",
        sha256_digest("anything"),
        HashAlg::Sha1,
    ));
    let verdict = attest(&mut host, &verifier, b"k2").unwrap();
    assert_eq!(verdict.ima_entries, 5);
}

#[test]
fn unknown_file_digest_is_rejected() {
    let Some(mut host) = Host::new() else { return };
    host.measure(ImaEntry::ima_ng(
        "/usr/bin/python3",
        sha256_digest("trojaned python3"),
        HashAlg::Sha1,
    ));
    let verifier = host.verifier();
    let e = expect_err(attest(&mut host, &verifier, b""), "unknown file digest");
    assert!(
        matches!(
            e,
            VerifyError::EntryNotAllowed {
                index: 4,
                reason: EntryRejection::UnknownDigest { .. },
                ..
            }
        ),
        "{e:?}"
    );
    // A file not listed at all.
    let Some(mut host) = Host::new() else { return };
    host.measure(ImaEntry::ima_ng(
        "/usr/bin/nc",
        sha256_digest("nc"),
        HashAlg::Sha1,
    ));
    let verifier = host.verifier();
    let e = expect_err(
        attest(&mut host, &verifier, b""),
        "unknown file /usr/bin/nc",
    );
    assert!(
        matches!(
            e,
            VerifyError::EntryNotAllowed {
                reason: EntryRejection::UnknownFile { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn tampered_log_entry_is_rejected() {
    let Some(mut host) = Host::new() else { return };
    // The host ran /usr/bin/nc (measured), then edited the log to hide it behind an allowed path.
    host.measure(ImaEntry::ima_ng(
        "/usr/bin/nc",
        sha256_digest("libtorch"),
        HashAlg::Sha1,
    ));
    let verifier = host.verifier();
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let mut log = host.log.to_bytes();
    let at = log.windows(11).rposition(|w| w == b"/usr/bin/nc").unwrap();
    log[at + 9..at + 11].copy_from_slice(b"sh");
    let evidence = host
        .agent
        .respond(&challenge, b"", &ImaSource::Bytes(log))
        .unwrap();
    let e = expect_err(verifier.verify(pending, &evidence), "tampered");
    assert!(matches!(e, VerifyError::TamperedLogEntry(_)), "{e:?}");
}

#[test]
fn log_that_does_not_replay_is_rejected() {
    let Some(mut host) = Host::new() else { return };
    host.measure(ImaEntry::ima_ng(
        "/usr/bin/nc",
        sha256_digest("nc"),
        HashAlg::Sha1,
    ));
    let verifier = host.verifier();
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    // The host drops the entry it wants to hide: every remaining entry is intact.
    let mut hidden = ImaLog::new(HashAlg::Sha1);
    for e in host
        .log
        .entries()
        .iter()
        .filter(|e| e.path() != Some(&b"/usr/bin/nc"[..]))
    {
        hidden.push(e.clone());
    }
    let evidence = host
        .agent
        .respond(&challenge, b"", &ImaSource::Bytes(hidden.to_bytes()))
        .unwrap();
    let e = expect_err(
        verifier.verify(pending, &evidence),
        "does not replay to the quoted PCR 10",
    );
    assert!(matches!(e, VerifyError::ImaReplay { .. }), "{e:?}");
}

#[test]
fn stale_or_replayed_nonce_is_rejected() {
    let Some(mut host) = Host::new() else { return };
    let verifier = host.verifier();
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let ima = host.ima();
    let old = host.agent.respond(&challenge, b"", &ima).unwrap();
    verifier.verify(pending, &old).unwrap();

    // The same evidence replayed to a new challenge.
    let (_, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let e = expect_err(verifier.verify(pending, &old), "stale or replayed");
    assert!(matches!(e, VerifyError::NonceMismatch), "{e:?}");

    // An honest answer that comes too late.
    let mut policy = host.policy.clone();
    policy.nonce_lifetime = Duration::from_millis(1);
    let strict = Verifier::new(policy).unwrap();
    let (challenge, pending) = strict.challenge(&host.agent.identity()).unwrap();
    let late = host.agent.respond(&challenge, b"", &ima).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let e = expect_err(strict.verify(pending, &late), "stale nonce");
    assert!(matches!(e, VerifyError::NonceExpired { .. }), "{e:?}");

    // The binding is part of the nonce check: evidence for binding A does not pass as B.
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let mut ev = host.agent.respond(&challenge, b"A", &ima).unwrap();
    ev.binding = b"B".to_vec();
    expect_err(verifier.verify(pending, &ev), "stale or replayed");
}

/// A TPMT_PUBLIC claiming to be a TPM-bound restricted RSA signing key, for a software key.
fn software_ak(sk: &RsaPrivateKey) -> Vec<u8> {
    let n = sk.n().to_bytes_be();
    let mut t = Vec::new();
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // nameAlg SHA-256
    t.extend_from_slice(&0x0005_0072u32.to_be_bytes()); // fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign
    t.extend_from_slice(&0u16.to_be_bytes()); // no authPolicy
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
    t.extend_from_slice(&0x0014u16.to_be_bytes()); // RSASSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&(n.len() as u16).to_be_bytes());
    t.extend_from_slice(&n);
    t
}

#[test]
fn quote_by_key_not_bound_to_ek_is_rejected() {
    let Some(mut host) = Host::new() else { return };
    let verifier = host.verifier();
    // The attacker presents the trusted EK with an AK it holds in software, so that it can sign
    // any PCR values it likes.
    let sk = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let mut identity = host.agent.identity();
    identity.ak_public = software_ak(&sk);
    let (challenge, pending) = verifier.challenge(&identity).unwrap();
    // The real TPM will not activate a credential made for a key that is not resident in it.
    assert!(
        host.agent
            .activate_credential(&challenge.credential)
            .is_err()
    );

    // A forged quote over the honest PCR values (whatever it claims, the signature is fine).
    let pcrs = host.agent.read_pcrs(&quote_selection()).unwrap();
    let mut digest_parts = Vec::new();
    for p in QUOTED_PCRS {
        digest_parts.extend_from_slice(pcrs.get(QUOTE_BANK, p).unwrap());
    }
    let mut attest = Vec::new();
    attest.extend_from_slice(&0xFF54_4347u32.to_be_bytes());
    attest.extend_from_slice(&0x8018u16.to_be_bytes());
    attest.extend_from_slice(&0u16.to_be_bytes()); // qualifiedSigner
    attest.extend_from_slice(&32u16.to_be_bytes());
    attest.extend_from_slice(&quote_qualifying_data(&challenge.nonce, b""));
    attest.extend_from_slice(&[0u8; 8 + 4 + 4 + 1 + 8]); // clock info, firmware
    attest.extend_from_slice(&1u32.to_be_bytes());
    attest.extend_from_slice(&[0x00, 0x0B, 3, 0xFF, 0x07, 0x00]);
    attest.extend_from_slice(&32u16.to_be_bytes());
    attest.extend_from_slice(&HashAlg::Sha256.digest(&digest_parts));
    let sig = sk
        .sign(
            Pkcs1v15Sign::new::<sha2::Sha256>(),
            &HashAlg::Sha256.digest(&attest),
        )
        .unwrap();
    let mut signature = vec![0x00, 0x14, 0x00, 0x0B];
    signature.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    signature.extend_from_slice(&sig);
    let evidence = Evidence {
        activation_proof: activation_proof(&[0u8; 32], &challenge.nonce, &attest),
        attest,
        signature,
        pcrs,
        ima_log: host.log.to_bytes(),
        binding: Vec::new(),
    };
    let e = expect_err(
        verifier.verify(pending, &evidence),
        "not bound to that endorsement key",
    );
    assert!(matches!(e, VerifyError::AkNotBoundToEk), "{e:?}");

    // The honest AK's quote presented for the software AK fails the signature check instead.
    let (challenge, pending) = verifier.challenge(&identity).unwrap();
    let honest_challenge = verifier.challenge(&host.agent.identity()).unwrap().0;
    let ima = host.ima();
    let mut ev = host.agent.respond(&honest_challenge, b"", &ima).unwrap();
    ev.activation_proof = activation_proof(&[0u8; 32], &challenge.nonce, &ev.attest);
    let e = expect_err(
        verifier.verify(pending, &ev),
        "quote signature check failed",
    );
    assert!(matches!(e, VerifyError::QuoteSignature(_)), "{e:?}");
}

#[test]
fn pcr10_extended_after_the_quote_is_rejected() {
    let Some(mut host) = Host::new() else { return };
    let verifier = host.verifier();
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let credential = host
        .agent
        .activate_credential(&challenge.credential)
        .unwrap();
    let (attest, signature) = host
        .agent
        .quote(
            &quote_qualifying_data(&challenge.nonce, b""),
            &quote_selection(),
        )
        .unwrap();
    // Something runs between the quote and the reads.
    host.measure(ImaEntry::ima_ng(
        "/usr/bin/nc",
        sha256_digest("nc"),
        HashAlg::Sha1,
    ));
    let pcrs = host.agent.read_pcrs(&quote_selection()).unwrap();
    let evidence = Evidence {
        activation_proof: activation_proof(&credential, &challenge.nonce, &attest),
        attest: attest.clone(),
        signature: signature.clone(),
        pcrs,
        ima_log: host.log.to_bytes(),
        binding: Vec::new(),
    };
    let e = expect_err(
        verifier.verify(pending, &evidence),
        "PCR 10 extended after the quote",
    );
    assert!(matches!(e, VerifyError::PcrDigest(_)), "{e:?}");

    // Quoted PCR values, but a log that goes on past the quoted PCR 10.
    let (challenge, pending) = verifier.challenge(&host.agent.identity()).unwrap();
    let credential = host
        .agent
        .activate_credential(&challenge.credential)
        .unwrap();
    let (attest, signature) = host
        .agent
        .quote(
            &quote_qualifying_data(&challenge.nonce, b""),
            &quote_selection(),
        )
        .unwrap();
    let pcrs = host.agent.read_pcrs(&quote_selection()).unwrap();
    host.measure(ImaEntry::ima_ng(
        "/usr/bin/python3",
        sha256_digest("python3"),
        HashAlg::Sha1,
    ));
    let evidence = Evidence {
        activation_proof: activation_proof(&credential, &challenge.nonce, &attest),
        attest,
        signature,
        pcrs,
        ima_log: host.log.to_bytes(),
        binding: Vec::new(),
    };
    let e = expect_err(
        verifier.verify(pending, &evidence),
        "PCR 10 extended after the quote",
    );
    assert!(
        matches!(e, VerifyError::UnquotedEntries { extra: 1, .. }),
        "{e:?}"
    );
}

#[test]
fn untrusted_ek_and_wrong_boot_pcr_are_rejected() {
    let Some(mut host) = Host::new() else { return };
    // A policy that trusts another TPM's EK.
    let mut policy = host.policy.clone();
    let mut other = host.agent.ek_public().as_bytes().to_vec();
    let n = other.len();
    other[n - 1] ^= 1; // another modulus
    policy.trusted_eks = vec![tessera_tpm::PublicArea::parse(&other).unwrap()];
    let e = Verifier::new(policy)
        .unwrap()
        .challenge(&host.agent.identity())
        .unwrap_err();
    assert!(matches!(e, VerifyError::UntrustedEk { .. }), "{e:?}");

    // A boot PCR value the stakeholders did not allow.
    let mut policy = host.policy.clone();
    policy.boot_pcrs.insert(4, vec![vec![0x44; 32]]);
    let verifier = Verifier::new(policy).unwrap();
    let e = expect_err(
        attest(&mut host, &verifier, b""),
        "boot PCR check failed: PCR 4",
    );
    assert!(matches!(e, VerifyError::BootPcr { pcr: 4, .. }), "{e:?}");
}
