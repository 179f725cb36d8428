//! The IMA allow-list: which files (path → digests) and buffers may appear in a measurement log.
//!
//! The on-disk format is Keylime's *runtime policy* (version 1), so that allow-lists generated
//! by `keylime-policy create runtime` can be used unchanged:
//!
//! ```json
//! {
//!   "meta": {"version": 1, "generator": 0, "timestamp": "…"},
//!   "release": 0,
//!   "digests": {"/usr/bin/bash": ["<hex digest>", "…"], "boot_aggregate": ["…"]},
//!   "excludes": ["/tmp/.*", "/var/log/.*"],
//!   "keyrings": {".ima": ["<hex digest of a key>"]},
//!   "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null},
//!   "ima-buf": {"kexec-cmdline": ["<hex digest>"]},
//!   "verification-keys": ""
//! }
//! ```
//!
//! Semantics (those of Keylime): a file entry is accepted when its path matches one of the
//! `excludes` regular expressions (anchored at the start of the path, as Python's `re.match`),
//! or when `digests[path]` lists its digest. Any other path is unknown, and a known path with an
//! unlisted digest is an unknown digest. A buffer entry (`ima-buf`) whose name is a keyring is
//! checked against `keyrings` (or skipped if the keyring is in `ima.ignored_keyrings`, `*` for
//! all), any other buffer against `ima-buf`. Violation entries (all-zero template hash) are
//! refused **before** the excludes are consulted: a violation's template data is not hashed into
//! PCR 10 (it extends all-ones whatever it says), so its path is free for the host to rewrite and
//! would otherwise be relabelled into an excluded directory. A policy may opt in to excluding
//! violations on excluded paths with `"ima": {"allow_excluded_violations": true}` (a tessera
//! extension of the format; that host can then hide any violation). `ima.dm_policy`, `rules`
//! and `verification-keys` (IMA signature checking) are accepted in the file but not enforced:
//! every file must be listed by digest.

use std::collections::{BTreeMap, BTreeSet};

use crate::hash::HashAlg;
use crate::ima::{ImaEntry, ImaEvent};

/// Errors reading a runtime policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not JSON of the runtime-policy shape.
    #[error("runtime policy is not a Keylime runtime policy (JSON): {0}")]
    Json(String),
    /// An unsupported `meta.version`.
    #[error(
        "runtime policy version {0} is not supported: only version 1 (Keylime's current format) is"
    )]
    Version(u64),
    /// A digest that is not hex.
    #[error(
        "runtime policy: digest {value:?} listed for {path:?} is not a hex string of 20, 32, 48 or 64 bytes"
    )]
    BadDigest {
        /// The path or name it is listed under.
        path: String,
        /// The value as written.
        value: String,
    },
    /// An `excludes` pattern that is not a valid regular expression.
    #[error(
        "runtime policy: exclude pattern {pattern:?} is not a valid regular expression: {reason}"
    )]
    BadExclude {
        /// The pattern.
        pattern: String,
        /// The regex compiler's message.
        reason: String,
    },
}

/// Why a measurement-log entry is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRejection {
    /// The file's path is not in the allow-list (nor excluded).
    #[error(
        "unknown file {path}: it is not in the allow-list (digest {digest}); add it or exclude its path"
    )]
    UnknownFile {
        /// The path (lossy UTF-8).
        path: String,
        /// The logged digest, `alg:hex`.
        digest: String,
    },
    /// The path is listed, but not with this digest.
    #[error(
        "unknown file digest {digest} for {path}: the allow-list has {allowed} other digest(s) for it; \
         the file differs from every allowed version"
    )]
    UnknownDigest {
        /// The path (lossy UTF-8).
        path: String,
        /// The logged digest, `alg:hex`.
        digest: String,
        /// How many digests the allow-list has for this path.
        allowed: usize,
    },
    /// A measured buffer (a key, the kexec command line, critical data) that is not allowed.
    #[error(
        "unknown buffer {name} with digest {digest}: list it under \"{section}\" in the runtime policy"
    )]
    UnknownBuffer {
        /// The buffer's name (lossy UTF-8).
        name: String,
        /// The logged digest.
        digest: String,
        /// The policy section it would belong in (`keyrings` or `ima-buf`).
        section: &'static str,
    },
    /// A violation entry (file measured while open for writing, or written while measured).
    #[error(
        "IMA violation for {path}: the file was open for writing while measured (or measured while written); its content is unknown"
    )]
    Violation {
        /// The path (lossy UTF-8).
        path: String,
    },
    /// A template this policy cannot judge (no file digest and name).
    #[error(
        "IMA entry with template {template} has no file digest and path to check against the allow-list"
    )]
    UnsupportedTemplate {
        /// Template name.
        template: String,
    },
}

/// How an entry was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryDecision {
    /// Its digest is listed for its path (or buffer name).
    Listed,
    /// Its path matches an exclude pattern.
    Excluded,
    /// It is the `boot_aggregate` entry and matches the quoted boot PCRs.
    BootAggregate,
    /// It is a key loaded onto an ignored keyring.
    IgnoredKeyring,
}

/// An IMA allow-list in Keylime's runtime-policy format.
#[derive(Debug, Clone)]
pub struct RuntimePolicy {
    digests: BTreeMap<String, BTreeSet<Vec<u8>>>,
    excludes: Vec<String>,
    exclude_set: regex::RegexSet,
    keyrings: BTreeMap<String, BTreeSet<Vec<u8>>>,
    ima_buf: BTreeMap<String, BTreeSet<Vec<u8>>>,
    ignored_keyrings: Vec<String>,
    log_hash_alg: HashAlg,
    allow_excluded_violations: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generator: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImaSection {
    #[serde(default)]
    ignored_keyrings: Vec<String>,
    #[serde(default = "default_log_hash_alg")]
    log_hash_alg: String,
    #[serde(default)]
    dm_policy: Option<serde_json::Value>,
    /// tessera's extension: accept violation entries on excluded paths (their path is not
    /// covered by the PCR, so the host can choose it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    allow_excluded_violations: bool,
}

fn default_log_hash_alg() -> String {
    "sha1".into()
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Json {
    meta: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release: Option<u64>,
    digests: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    excludes: Vec<String>,
    #[serde(default)]
    keyrings: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    ima: Option<ImaSection>,
    #[serde(default, rename = "ima-buf")]
    ima_buf: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "verification-keys")]
    verification_keys: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rules: Option<serde_json::Value>,
}

fn parse_digest_map(
    map: BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, BTreeSet<Vec<u8>>>, PolicyError> {
    let mut out = BTreeMap::new();
    for (path, list) in map {
        let mut set = BTreeSet::new();
        for value in list {
            let bytes = hex::decode(value.trim())
                .ok()
                .filter(|b| HashAlg::ALL.iter().any(|a| a.size() == b.len()));
            match bytes {
                Some(b) => {
                    set.insert(b);
                }
                None => return Err(PolicyError::BadDigest { path, value }),
            }
        }
        out.insert(path, set);
    }
    Ok(out)
}

fn compile_excludes(excludes: &[String]) -> Result<regex::RegexSet, PolicyError> {
    for p in excludes {
        regex::Regex::new(&format!("^(?:{p})")).map_err(|e| PolicyError::BadExclude {
            pattern: p.clone(),
            reason: e.to_string(),
        })?;
    }
    regex::RegexSet::new(excludes.iter().map(|p| format!("^(?:{p})"))).map_err(|e| {
        PolicyError::BadExclude {
            pattern: excludes.join("|"),
            reason: e.to_string(),
        }
    })
}

impl Default for RuntimePolicy {
    fn default() -> Self {
        RuntimePolicy::new(HashAlg::Sha1)
    }
}

impl RuntimePolicy {
    /// An empty allow-list (nothing allowed) for logs with `log_hash_alg` template hashes.
    pub fn new(log_hash_alg: HashAlg) -> RuntimePolicy {
        RuntimePolicy {
            digests: BTreeMap::new(),
            excludes: Vec::new(),
            exclude_set: regex::RegexSet::empty(),
            keyrings: BTreeMap::new(),
            ima_buf: BTreeMap::new(),
            ignored_keyrings: Vec::new(),
            log_hash_alg,
            allow_excluded_violations: false,
        }
    }

    /// Reads a Keylime runtime policy (JSON, version 1).
    pub fn from_keylime_json(text: &str) -> Result<RuntimePolicy, PolicyError> {
        let j: Json = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        if j.meta.version != 1 {
            return Err(PolicyError::Version(j.meta.version));
        }
        let (ignored_keyrings, log_hash_alg, allow_excluded_violations) = match j.ima {
            Some(ima) => {
                let alg = ima
                    .log_hash_alg
                    .parse::<HashAlg>()
                    .map_err(|e| PolicyError::Json(e.to_string()))?;
                (ima.ignored_keyrings, alg, ima.allow_excluded_violations)
            }
            None => (Vec::new(), HashAlg::Sha1, false),
        };
        let exclude_set = compile_excludes(&j.excludes)?;
        Ok(RuntimePolicy {
            digests: parse_digest_map(j.digests)?,
            excludes: j.excludes,
            exclude_set,
            keyrings: parse_digest_map(j.keyrings)?,
            ima_buf: parse_digest_map(j.ima_buf)?,
            ignored_keyrings,
            log_hash_alg,
            allow_excluded_violations,
        })
    }

    /// Writes the policy in Keylime's runtime-policy format (version 1).
    pub fn to_keylime_json(&self) -> String {
        let hexes = |m: &BTreeMap<String, BTreeSet<Vec<u8>>>| -> BTreeMap<String, Vec<String>> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.iter().map(hex::encode).collect()))
                .collect()
        };
        let j = Json {
            meta: Meta {
                version: 1,
                generator: Some(0),
                timestamp: None,
            },
            release: Some(0),
            digests: hexes(&self.digests),
            excludes: self.excludes.clone(),
            keyrings: hexes(&self.keyrings),
            ima: Some(ImaSection {
                ignored_keyrings: self.ignored_keyrings.clone(),
                log_hash_alg: self.log_hash_alg.name().into(),
                dm_policy: None,
                allow_excluded_violations: self.allow_excluded_violations,
            }),
            ima_buf: hexes(&self.ima_buf),
            verification_keys: Some(serde_json::Value::String(String::new())),
            rules: None,
        };
        serde_json::to_string_pretty(&j)
            .unwrap_or_else(|e| unreachable!("string-keyed maps always serialize: {e}"))
    }

    /// The template-hash algorithm of the logs this policy is for (`ima.log_hash_alg`).
    pub fn log_hash_alg(&self) -> HashAlg {
        self.log_hash_alg
    }

    /// Allows `digest` for the file at `path`.
    pub fn allow(&mut self, path: &str, digest: &[u8]) -> &mut Self {
        self.digests
            .entry(path.to_owned())
            .or_default()
            .insert(digest.to_vec());
        self
    }

    /// Allows `digest` for the buffer named `name` (`ima-buf` section).
    pub fn allow_buffer(&mut self, name: &str, digest: &[u8]) -> &mut Self {
        self.ima_buf
            .entry(name.to_owned())
            .or_default()
            .insert(digest.to_vec());
        self
    }

    /// Excludes every path matching `pattern` (a regular expression anchored at the start).
    pub fn exclude(&mut self, pattern: &str) -> Result<&mut Self, PolicyError> {
        let mut all = self.excludes.clone();
        all.push(pattern.to_owned());
        self.exclude_set = compile_excludes(&all)?;
        self.excludes = all;
        Ok(self)
    }

    /// Accept violation entries whose (unmeasured) path is excluded — off by default; see the
    /// module docs for why that lets the host hide any violation.
    pub fn allow_excluded_violations(&mut self, allow: bool) -> &mut Self {
        self.allow_excluded_violations = allow;
        self
    }

    /// Number of paths with listed digests.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether no path has a listed digest.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    fn excluded(&self, path: &[u8]) -> bool {
        std::str::from_utf8(path).is_ok_and(|p| self.exclude_set.is_match(p))
    }

    /// Judges one entry. `boot_aggregates` are the digests the `boot_aggregate` entry may have
    /// given the quoted boot PCRs (see [`crate::verifier::boot_aggregates`]); it is accepted if
    /// it matches one of them or is listed.
    pub fn check_entry(
        &self,
        entry: &ImaEntry,
        boot_aggregates: &[Vec<u8>],
    ) -> Result<EntryDecision, EntryRejection> {
        if entry.is_violation() {
            // First: a violation's path is not measured, so an exclude cannot vouch for it.
            let (path, excluded) = match &entry.event {
                ImaEvent::File { path, .. } => (path.as_slice(), self.excluded(path)),
                ImaEvent::Buffer { name, .. } => (name.as_slice(), false),
                ImaEvent::Other => (&b"(unparsed template)"[..], false),
            };
            if excluded && self.allow_excluded_violations {
                return Ok(EntryDecision::Excluded);
            }
            return Err(EntryRejection::Violation {
                path: String::from_utf8_lossy(path).into_owned(),
            });
        }
        match &entry.event {
            ImaEvent::File { digest, path, .. } => {
                if self.excluded(path) {
                    return Ok(EntryDecision::Excluded);
                }
                let path_text = String::from_utf8_lossy(path).into_owned();
                let listed = std::str::from_utf8(path)
                    .ok()
                    .and_then(|p| self.digests.get(p));
                if listed.is_some_and(|set| set.contains(&digest.value)) {
                    return Ok(EntryDecision::Listed);
                }
                if path.as_slice() == b"boot_aggregate" && boot_aggregates.contains(&digest.value) {
                    return Ok(EntryDecision::BootAggregate);
                }
                match listed {
                    Some(set) => Err(EntryRejection::UnknownDigest {
                        path: path_text,
                        digest: digest.to_string(),
                        allowed: set.len(),
                    }),
                    None => Err(EntryRejection::UnknownFile {
                        path: path_text,
                        digest: digest.to_string(),
                    }),
                }
            }
            ImaEvent::Buffer { digest, name, .. } => {
                let name_text = String::from_utf8_lossy(name).into_owned();
                let is_keyring =
                    self.keyrings.contains_key(&name_text) || name_text.starts_with('.');
                if is_keyring {
                    if self
                        .ignored_keyrings
                        .iter()
                        .any(|k| k == "*" || *k == name_text)
                    {
                        return Ok(EntryDecision::IgnoredKeyring);
                    }
                    if self
                        .keyrings
                        .get(&name_text)
                        .is_some_and(|s| s.contains(&digest.value))
                    {
                        return Ok(EntryDecision::Listed);
                    }
                    return Err(EntryRejection::UnknownBuffer {
                        name: name_text,
                        digest: digest.to_string(),
                        section: "keyrings",
                    });
                }
                if self
                    .ima_buf
                    .get(&name_text)
                    .is_some_and(|s| s.contains(&digest.value))
                {
                    return Ok(EntryDecision::Listed);
                }
                Err(EntryRejection::UnknownBuffer {
                    name: name_text,
                    digest: digest.to_string(),
                    section: "ima-buf",
                })
            }
            ImaEvent::Other => Err(EntryRejection::UnsupportedTemplate {
                template: entry.template_name.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ima::FileDigest;

    const SAMPLE: &str = r#"{
        "meta": {"version": 1, "generator": 1, "timestamp": "2024-01-01 00:00:00"},
        "release": 0,
        "digests": {
            "/usr/bin/bash": ["0000000000000000000000000000000000000000000000000000000000000001",
                              "0000000000000000000000000000000000000001"],
            "boot_aggregate": []
        },
        "excludes": ["/tmp/.*", "/var/log"],
        "keyrings": {".ima": ["00000000000000000000000000000000000000000000000000000000000000aa"]},
        "ima": {"ignored_keyrings": [".builtin_trusted_keys"], "log_hash_alg": "sha1", "dm_policy": null},
        "ima-buf": {"kexec-cmdline": ["00000000000000000000000000000000000000000000000000000000000000bb"]},
        "verification-keys": ""
    }"#;

    fn file(path: &str, d: u8) -> ImaEntry {
        let mut v = vec![0; 32];
        v[31] = d;
        ImaEntry::ima_ng(path, FileDigest::new(HashAlg::Sha256, v), HashAlg::Sha1)
    }

    #[test]
    fn keylime_policy_semantics() {
        let p = RuntimePolicy::from_keylime_json(SAMPLE).unwrap();
        assert_eq!(p.log_hash_alg(), HashAlg::Sha1);
        assert_eq!(
            p.check_entry(&file("/usr/bin/bash", 1), &[]),
            Ok(EntryDecision::Listed)
        );
        assert!(matches!(
            p.check_entry(&file("/usr/bin/bash", 2), &[]),
            Err(EntryRejection::UnknownDigest { allowed: 2, .. })
        ));
        assert!(matches!(
            p.check_entry(&file("/usr/bin/zsh", 1), &[]),
            Err(EntryRejection::UnknownFile { .. })
        ));
        assert_eq!(
            p.check_entry(&file("/tmp/x", 9), &[]),
            Ok(EntryDecision::Excluded)
        );
        assert_eq!(
            p.check_entry(&file("/var/log/y", 9), &[]),
            Ok(EntryDecision::Excluded)
        );
        // Anchored at the start, like Python's re.match.
        assert!(p.check_entry(&file("/home/tmp/x", 9), &[]).is_err());
        let mut ba = vec![0; 32];
        ba[31] = 5;
        assert_eq!(
            p.check_entry(&file("boot_aggregate", 5), &[ba]),
            Ok(EntryDecision::BootAggregate)
        );
        assert!(p.check_entry(&file("boot_aggregate", 5), &[]).is_err());
        let v = ImaEntry::violation("/etc/passwd", HashAlg::Sha256, HashAlg::Sha1);
        assert!(matches!(
            p.check_entry(&v, &[]),
            Err(EntryRejection::Violation { .. })
        ));
        let back = RuntimePolicy::from_keylime_json(&p.to_keylime_json()).unwrap();
        assert_eq!(back.digests, p.digests);
        assert_eq!(back.excludes, p.excludes);
    }

    /// A violation's template data is not covered by PCR 10 (it extends all-ones), so a host can
    /// relabel a violation on /etc/passwd into the excluded /tmp: the log still replays to the
    /// quoted PCR, the path is excluded, and only the violation-first rule refuses it.
    #[test]
    fn a_violation_relabelled_into_an_excluded_path_is_refused() {
        let mut p = RuntimePolicy::from_keylime_json(SAMPLE).unwrap();
        let honest = ImaEntry::violation("/etc/passwd", HashAlg::Sha256, HashAlg::Sha1);
        let relabelled = ImaEntry::violation("/tmp/cover", HashAlg::Sha256, HashAlg::Sha1);
        // The same PCR 10 extension either way: the replay cannot tell them apart.
        assert_eq!(
            honest.pcr_digest(HashAlg::Sha256),
            relabelled.pcr_digest(HashAlg::Sha256)
        );
        assert_eq!(
            p.check_entry(&relabelled, &[]),
            Err(EntryRejection::Violation {
                path: "/tmp/cover".into()
            })
        );
        // Opting in restores the old rule, and survives a round trip through the JSON.
        p.allow_excluded_violations(true);
        assert_eq!(p.check_entry(&relabelled, &[]), Ok(EntryDecision::Excluded));
        let back = RuntimePolicy::from_keylime_json(&p.to_keylime_json()).unwrap();
        assert_eq!(
            back.check_entry(&relabelled, &[]),
            Ok(EntryDecision::Excluded)
        );
        assert!(back.check_entry(&honest, &[]).is_err());
    }

    #[test]
    fn bad_policies_are_named() {
        assert!(matches!(
            RuntimePolicy::from_keylime_json("{}"),
            Err(PolicyError::Json(_))
        ));
        let bad_hex = SAMPLE.replace(
            "00000000000000000000000000000000000000000000000000000000000000bb",
            "zz",
        );
        assert!(matches!(
            RuntimePolicy::from_keylime_json(&bad_hex),
            Err(PolicyError::BadDigest { .. })
        ));
        let bad_re = SAMPLE.replace("/tmp/.*", "/tmp/(");
        assert!(matches!(
            RuntimePolicy::from_keylime_json(&bad_re),
            Err(PolicyError::BadExclude { .. })
        ));
        let typo = SAMPLE.replace("\"excludes\"", "\"exclude\"");
        assert!(matches!(
            RuntimePolicy::from_keylime_json(&typo),
            Err(PolicyError::Json(_))
        ));
        let v2 = SAMPLE.replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            RuntimePolicy::from_keylime_json(&v2),
            Err(PolicyError::Version(2))
        ));
    }
}
