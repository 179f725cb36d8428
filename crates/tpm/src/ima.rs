//! The Linux IMA measurement log: parsing, writing, template-hash checks and PCR replay.
//!
//! The kernel exports its measurement list as
//! `/sys/kernel/security/ima/binary_runtime_measurements`. Each entry is, little-endian:
//!
//! | field | size |
//! |---|---|
//! | PCR index | u32 |
//! | template hash | the log's template-hash size (20 bytes, SHA-1, in the kernel's export) |
//! | template name length | u32 (at most 255) |
//! | template name | that many bytes |
//! | template data length | u32 (absent for the `ima` template) |
//! | template data | that many bytes: for each field, a u32 length and the field's bytes |
//!
//! The `ima` template (the oldest) has no data length and writes its two fields as a raw 20-byte
//! SHA-1 file digest followed by a u32-length-prefixed file name; its template hash covers the
//! digest and the name zero-padded to 256 bytes. Every other template's hash covers its template
//! data exactly as logged.
//!
//! The kernel extends PCR 10 of every bank with the template hash computed with that bank's
//! algorithm: `PCR ← H(PCR ‖ H(template data))`. A *violation* entry (a file measured while open
//! for writing, or written while open for measurement) is logged with an all-zero template hash
//! but extends the PCR with all-ones (0xFF…) of the bank's size. [`ImaLog::replay`] follows both
//! rules.

use std::borrow::Cow;
use std::fmt;

use crate::hash::HashAlg;

/// The PCR that IMA extends by default.
pub const IMA_PCR: u32 = 10;

/// The longest template name the kernel writes (TCG_EVENT_NAME_LEN_MAX).
const MAX_TEMPLATE_NAME: usize = 255;
/// The `ima` template hashes its file name zero-padded to this many bytes.
const IMA_TEMPLATE_NAME_FIELD: usize = 256;
/// The `ima` template's file digest is always a raw SHA-1.
const IMA_TEMPLATE_DIGEST: usize = 20;

/// Template field identifiers this crate knows (Documentation/security/IMA-templates.rst).
const KNOWN_FIELDS: &[&str] = &[
    "d",
    "n",
    "d-ng",
    "d-ngv2",
    "n-ng",
    "sig",
    "d-modsig",
    "modsig",
    "buf",
    "evmsig",
    "xattrnames",
    "xattrlengths",
    "xattrvalues",
    "iuid",
    "igid",
    "imode",
];

/// Errors parsing or checking an IMA log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImaError {
    /// The log ends inside an entry.
    #[error(
        "IMA log truncated in entry {entry} at byte {offset}: {what} needs {needed} bytes, {left} left; \
         give the whole binary_runtime_measurements file"
    )]
    Truncated {
        /// Index of the entry (0-based).
        entry: usize,
        /// Byte offset where the field starts.
        offset: usize,
        /// The field being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left in the log.
        left: usize,
    },
    /// A template name that is empty, too long or not ASCII.
    #[error(
        "IMA log entry {entry} at byte {offset} has an invalid template name ({reason}); \
         is this a binary_runtime_measurements file with {template_hash_alg} template hashes?"
    )]
    BadTemplateName {
        /// Index of the entry.
        entry: usize,
        /// Byte offset of the entry.
        offset: usize,
        /// What is wrong with it.
        reason: String,
        /// The template-hash algorithm the parser assumed.
        template_hash_alg: HashAlg,
    },
    /// A template field that cannot be read.
    #[error("IMA log entry {entry} ({template}): field {field}: {reason}")]
    BadField {
        /// Index of the entry.
        entry: usize,
        /// Template name.
        template: String,
        /// Field identifier (or position).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry whose template hash is not the hash of its data: the entry was altered.
    #[error(
        "IMA log entry {entry} ({path}) is tampered: its template hash {logged} is not the {alg} hash of \
         its template data ({computed}); the log was modified after the kernel wrote it"
    )]
    TamperedEntry {
        /// Index of the entry.
        entry: usize,
        /// The file path or name the entry names (lossy UTF-8), or its template name.
        path: String,
        /// Template-hash algorithm.
        alg: HashAlg,
        /// Hex of the logged template hash.
        logged: String,
        /// Hex of the hash of the template data.
        computed: String,
    },
    /// No template-hash algorithm makes the whole log parse with consistent hashes.
    #[error(
        "not an IMA binary measurement log: it parses with none of the template-hash sizes 20/32/48/64 \
         (with sha1 template hashes: {sha1_error})"
    )]
    NotALog {
        /// What went wrong when parsing with SHA-1 template hashes (the kernel's format).
        sha1_error: Box<ImaError>,
    },
    /// The ASCII log has a line that cannot be read.
    #[error("IMA ASCII log line {line}: {reason}")]
    BadAsciiLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The file digest of a `d`, `d-ng` or `d-ngv2` field: an algorithm name and the digest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    /// The algorithm as the kernel names it (`sha1`, `sha256`, `sm3-256`, …). For `d-ngv2` fields
    /// the digest type is kept as a prefix (`ima:sha256`, `verity:sha256`).
    pub algorithm: String,
    /// The digest bytes.
    pub value: Vec<u8>,
}

impl FileDigest {
    /// A digest with one of the four hash algorithms.
    pub fn new(alg: HashAlg, value: Vec<u8>) -> FileDigest {
        FileDigest {
            algorithm: alg.name().to_owned(),
            value,
        }
    }

    /// The algorithm, if it is one of the four (a `d-ngv2` type prefix is ignored).
    pub fn hash_alg(&self) -> Option<HashAlg> {
        let name = self.algorithm.rsplit(':').next().unwrap_or(&self.algorithm);
        name.parse().ok()
    }

    /// Lower-case hex of the digest bytes.
    pub fn hex(&self) -> String {
        hex::encode(&self.value)
    }

    /// Whether every byte is zero (the file digest of a violation entry).
    pub fn is_zero(&self) -> bool {
        self.value.iter().all(|b| *b == 0)
    }

    /// Parses a `d-ng`/`d-ngv2` field: `<alg>:\0<digest>` (or `<type>:<alg>:\0<digest>`). A
    /// 20-byte field without a prefix is read as a bare SHA-1 digest.
    fn parse_ng(data: &[u8]) -> Result<FileDigest, String> {
        if let Some(nul) = data.iter().position(|b| *b == 0) {
            let prefix = &data[..nul];
            if nul >= 2
                && prefix.last() == Some(&b':')
                && prefix[..nul - 1]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b':' || *b == b'_')
            {
                let algorithm = String::from_utf8_lossy(&prefix[..nul - 1]).into_owned();
                let value = data[nul + 1..].to_vec();
                let d = FileDigest { algorithm, value };
                if let Some(alg) = d.hash_alg()
                    && d.value.len() != alg.size()
                {
                    return Err(format!(
                        "{} digest has {} bytes, not {}",
                        d.algorithm,
                        d.value.len(),
                        alg.size()
                    ));
                }
                return Ok(d);
            }
        }
        if data.len() == HashAlg::Sha1.size() {
            return Ok(FileDigest::new(HashAlg::Sha1, data.to_vec()));
        }
        Err(format!(
            "{} bytes without an \"<alg>:\\0\" prefix",
            data.len()
        ))
    }

    /// The `d-ng` encoding: `<alg>:\0<digest>`.
    fn encode_ng(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.algorithm.len() + 2 + self.value.len());
        v.extend_from_slice(self.algorithm.as_bytes());
        v.extend_from_slice(b":\0");
        v.extend_from_slice(&self.value);
        v
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex())
    }
}

/// One field of an entry's template data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateField {
    /// The field identifier (`d-ng`, `n-ng`, `sig`, …), or `#<position>` for a template whose
    /// fields this crate does not know.
    pub id: String,
    /// The field's bytes as logged (without the length prefix).
    pub data: Vec<u8>,
}

/// What an entry measured, read from its template fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImaEvent {
    /// A file (templates `ima`, `ima-ng`, `ima-sig`, `ima-modsig`, `ima-ngv2`, `ima-sigv2`,
    /// `evm-sig`, or a custom template with a digest and a name field).
    File {
        /// The file digest.
        digest: FileDigest,
        /// The path as logged (bytes; Linux paths need not be UTF-8), without the trailing NUL.
        path: Vec<u8>,
        /// The IMA signature (`sig` field), if present and non-empty.
        signature: Option<Vec<u8>>,
    },
    /// A measured buffer (`ima-buf`): a key loaded onto a keyring, the kexec command line, a
    /// critical-data record.
    Buffer {
        /// The digest of the buffer.
        digest: FileDigest,
        /// The buffer's name (for keys, the keyring's name).
        name: Vec<u8>,
        /// The buffer itself.
        data: Vec<u8>,
    },
    /// A template without a digest and a name field.
    Other,
}

/// One entry of the measurement log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImaEntry {
    /// The PCR the entry extended (10 unless the IMA policy says otherwise).
    pub pcr: u32,
    /// The template hash as logged (its size is the log's template-hash algorithm's).
    pub template_hash: Vec<u8>,
    /// The template name (`ima-ng`, `ima-sig`, …, or a custom `d-ng|n-ng` format).
    pub template_name: String,
    /// The template fields in order.
    pub fields: Vec<TemplateField>,
    /// What the entry measured.
    pub event: ImaEvent,
}

impl ImaEntry {
    /// An `ima-ng` entry for a file, with its template hash computed with `template_hash_alg`.
    pub fn ima_ng(path: &str, digest: FileDigest, template_hash_alg: HashAlg) -> ImaEntry {
        ImaEntry::with_fields(
            "ima-ng",
            vec![
                TemplateField {
                    id: "d-ng".into(),
                    data: digest.encode_ng(),
                },
                TemplateField {
                    id: "n-ng".into(),
                    data: nul_terminated(path.as_bytes()),
                },
            ],
            template_hash_alg,
        )
    }

    /// An `ima-sig` entry for a file (an empty `signature` for an unsigned file).
    pub fn ima_sig(
        path: &str,
        digest: FileDigest,
        signature: &[u8],
        template_hash_alg: HashAlg,
    ) -> ImaEntry {
        ImaEntry::with_fields(
            "ima-sig",
            vec![
                TemplateField {
                    id: "d-ng".into(),
                    data: digest.encode_ng(),
                },
                TemplateField {
                    id: "n-ng".into(),
                    data: nul_terminated(path.as_bytes()),
                },
                TemplateField {
                    id: "sig".into(),
                    data: signature.to_vec(),
                },
            ],
            template_hash_alg,
        )
    }

    /// A violation entry (`ima-ng`, zero file digest of `file_digest_alg`, zero template hash).
    pub fn violation(path: &str, file_digest_alg: HashAlg, template_hash_alg: HashAlg) -> ImaEntry {
        let mut e = ImaEntry::ima_ng(
            path,
            FileDigest::new(file_digest_alg, file_digest_alg.zero_pcr()),
            template_hash_alg,
        );
        e.template_hash = template_hash_alg.zero_pcr();
        e
    }

    /// An entry of any non-`ima` template from its fields, with its template hash computed.
    pub fn with_fields(
        template_name: &str,
        fields: Vec<TemplateField>,
        template_hash_alg: HashAlg,
    ) -> ImaEntry {
        let event = event_of(template_name, &fields).unwrap_or(ImaEvent::Other);
        let mut e = ImaEntry {
            pcr: IMA_PCR,
            template_hash: Vec::new(),
            template_name: template_name.to_owned(),
            fields,
            event,
        };
        e.template_hash = template_hash_alg.digest(&e.hashed_data());
        e
    }

    /// Whether this is a violation entry (all-zero template hash).
    pub fn is_violation(&self) -> bool {
        self.template_hash.iter().all(|b| *b == 0)
    }

    /// Whether this entry uses the legacy `ima` template.
    pub fn is_ima_template(&self) -> bool {
        self.template_name == "ima"
    }

    /// The bytes the template hash covers: the template data as logged, or for the `ima`
    /// template the SHA-1 digest followed by the name zero-padded to 256 bytes.
    pub fn hashed_data(&self) -> Cow<'_, [u8]> {
        if self.is_ima_template() {
            let mut v = Vec::with_capacity(IMA_TEMPLATE_DIGEST + IMA_TEMPLATE_NAME_FIELD);
            if let Some(d) = self.fields.first() {
                v.extend_from_slice(&d.data);
            }
            let mut name = self
                .fields
                .get(1)
                .map(|f| f.data.clone())
                .unwrap_or_default();
            name.resize(IMA_TEMPLATE_NAME_FIELD, 0);
            v.extend_from_slice(&name);
            Cow::Owned(v)
        } else {
            let mut v = Vec::new();
            for f in &self.fields {
                v.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
                v.extend_from_slice(&f.data);
            }
            Cow::Owned(v)
        }
    }

    /// The digest this entry extends into a PCR of `bank`: all-ones for a violation, otherwise
    /// the hash of the template data with the bank's algorithm.
    pub fn pcr_digest(&self, bank: HashAlg) -> Vec<u8> {
        if self.is_violation() {
            vec![0xFF; bank.size()]
        } else {
            bank.digest(&self.hashed_data())
        }
    }

    /// Whether the logged template hash is the hash of the template data (always true of a
    /// violation entry, whose hash is zero by definition).
    pub fn template_hash_matches(&self, alg: HashAlg) -> bool {
        self.is_violation() || self.template_hash == alg.digest(&self.hashed_data())
    }

    /// The file path or buffer name the entry names, if any.
    pub fn path(&self) -> Option<&[u8]> {
        match &self.event {
            ImaEvent::File { path, .. } => Some(path),
            ImaEvent::Buffer { name, .. } => Some(name),
            ImaEvent::Other => None,
        }
    }

    /// The path or name as (lossy) UTF-8, or the template name in brackets when there is none.
    pub fn display_path(&self) -> String {
        match self.path() {
            Some(p) => String::from_utf8_lossy(p).into_owned(),
            None => format!("[{}]", self.template_name),
        }
    }

    /// The file or buffer digest, if any.
    pub fn digest(&self) -> Option<&FileDigest> {
        match &self.event {
            ImaEvent::File { digest, .. } | ImaEvent::Buffer { digest, .. } => Some(digest),
            ImaEvent::Other => None,
        }
    }

    /// Appends the binary (`binary_runtime_measurements`, little-endian) form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pcr.to_le_bytes());
        out.extend_from_slice(&self.template_hash);
        out.extend_from_slice(&(self.template_name.len() as u32).to_le_bytes());
        out.extend_from_slice(self.template_name.as_bytes());
        if self.is_ima_template() {
            if let Some(d) = self.fields.first() {
                out.extend_from_slice(&d.data);
            }
            let name = self
                .fields
                .get(1)
                .map(|f| f.data.as_slice())
                .unwrap_or_default();
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
        } else {
            let data = self.hashed_data();
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&data);
        }
    }
}

fn nul_terminated(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

fn strip_nul(s: &[u8]) -> Vec<u8> {
    match s.iter().position(|b| *b == 0) {
        Some(i) => s[..i].to_vec(),
        None => s.to_vec(),
    }
}

/// The field identifiers of a template, if the name is a known template or a custom format.
fn template_fields(name: &str) -> Option<Vec<&str>> {
    let fixed: &[&str] = match name {
        "ima" => &["d", "n"],
        "ima-ng" => &["d-ng", "n-ng"],
        "ima-ngv2" => &["d-ngv2", "n-ng"],
        "ima-sig" => &["d-ng", "n-ng", "sig"],
        "ima-sigv2" => &["d-ngv2", "n-ng", "sig"],
        "ima-buf" => &["d-ng", "n-ng", "buf"],
        "ima-modsig" => &["d-ng", "n-ng", "sig", "d-modsig", "modsig"],
        "evm-sig" => &[
            "d-ng",
            "n-ng",
            "evmsig",
            "xattrnames",
            "xattrlengths",
            "xattrvalues",
            "iuid",
            "igid",
            "imode",
        ],
        _ => {
            let parts: Vec<&str> = name.split('|').collect();
            return parts
                .iter()
                .all(|p| KNOWN_FIELDS.contains(p))
                .then_some(parts);
        }
    };
    Some(fixed.to_vec())
}

/// Reads the measured object from the fields.
fn event_of(template: &str, fields: &[TemplateField]) -> Result<ImaEvent, (String, String)> {
    let get = |id: &str| fields.iter().find(|f| f.id == id);
    let digest = if template == "ima" {
        match get("d") {
            Some(f) if f.data.len() == IMA_TEMPLATE_DIGEST => {
                Some(FileDigest::new(HashAlg::Sha1, f.data.clone()))
            }
            Some(f) => return Err(("d".into(), format!("{} bytes, not 20", f.data.len()))),
            None => None,
        }
    } else if let Some(f) = get("d-ng").or_else(|| get("d-ngv2")) {
        Some(FileDigest::parse_ng(&f.data).map_err(|e| (f.id.clone(), e))?)
    } else {
        None
    };
    let name = get("n-ng").or_else(|| get("n")).map(|f| strip_nul(&f.data));
    let (Some(digest), Some(name)) = (digest, name) else {
        return Ok(ImaEvent::Other);
    };
    if let Some(buf) = get("buf") {
        return Ok(ImaEvent::Buffer {
            digest,
            name,
            data: buf.data.clone(),
        });
    }
    let signature = get("sig")
        .filter(|f| !f.data.is_empty())
        .map(|f| f.data.clone());
    Ok(ImaEvent::File {
        digest,
        path: name,
        signature,
    })
}

/// A cursor over the log bytes that reports where it ran out.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    entry: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ImaError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(ImaError::Truncated {
                entry: self.entry,
                offset: self.pos,
                what,
                needed: n,
                left,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ImaError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A parsed IMA measurement log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImaLog {
    template_hash_alg: HashAlg,
    entries: Vec<ImaEntry>,
}

impl ImaLog {
    /// An empty log whose entries carry `template_hash_alg` template hashes.
    pub fn new(template_hash_alg: HashAlg) -> ImaLog {
        ImaLog {
            template_hash_alg,
            entries: Vec::new(),
        }
    }

    /// Parses a binary log (`binary_runtime_measurements`, little-endian) whose template hashes
    /// are `template_hash_alg` hashes: SHA-1 for the kernel's own export (Keylime's
    /// `ima.log_hash_alg`), or a bank's algorithm for logs written by tools such as IBM's TSS.
    pub fn parse(bytes: &[u8], template_hash_alg: HashAlg) -> Result<ImaLog, ImaError> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            entry: 0,
        };
        let mut entries = Vec::new();
        while c.pos < bytes.len() {
            let start = c.pos;
            let pcr = c.u32("PCR index")?;
            let template_hash = c.take(template_hash_alg.size(), "template hash")?.to_vec();
            let name_len = c.u32("template name length")? as usize;
            let entry_index = c.entry;
            let bad_name = |reason: String| ImaError::BadTemplateName {
                entry: entry_index,
                offset: start,
                reason,
                template_hash_alg,
            };
            if name_len == 0 || name_len > MAX_TEMPLATE_NAME {
                return Err(bad_name(format!("length {name_len}, not 1..=255")));
            }
            let name_bytes = c.take(name_len, "template name")?;
            if !name_bytes.iter().all(|b| b.is_ascii_graphic()) {
                return Err(bad_name("not printable ASCII".into()));
            }
            let template_name = String::from_utf8_lossy(name_bytes).into_owned();
            let fields = if template_name == "ima" {
                let d = c.take(IMA_TEMPLATE_DIGEST, "ima template digest")?.to_vec();
                let n_len = c.u32("ima template name length")? as usize;
                if n_len > IMA_TEMPLATE_NAME_FIELD - 1 {
                    return Err(ImaError::BadField {
                        entry: c.entry,
                        template: template_name,
                        field: "n".into(),
                        reason: format!("name of {n_len} bytes, longer than 255"),
                    });
                }
                let n = c.take(n_len, "ima template file name")?.to_vec();
                vec![
                    TemplateField {
                        id: "d".into(),
                        data: d,
                    },
                    TemplateField {
                        id: "n".into(),
                        data: n,
                    },
                ]
            } else {
                let data_len = c.u32("template data length")? as usize;
                let data = c.take(data_len, "template data")?;
                split_fields(data, &template_name).map_err(|(field, reason)| {
                    ImaError::BadField {
                        entry: c.entry,
                        template: template_name.clone(),
                        field,
                        reason,
                    }
                })?
            };
            let event = event_of(&template_name, &fields).map_err(|(field, reason)| {
                ImaError::BadField {
                    entry: c.entry,
                    template: template_name.clone(),
                    field,
                    reason,
                }
            })?;
            entries.push(ImaEntry {
                pcr,
                template_hash,
                template_name,
                fields,
                event,
            });
            c.entry += 1;
        }
        Ok(ImaLog {
            template_hash_alg,
            entries,
        })
    }

    /// Parses a binary log whose template-hash size is not known: tries SHA-1 (the kernel's
    /// export) first, then SHA-256, SHA-384 and SHA-512, and keeps the first under which the whole
    /// log parses and every template hash matches its data.
    pub fn parse_any(bytes: &[u8]) -> Result<ImaLog, ImaError> {
        let mut sha1_error = None;
        for alg in HashAlg::ALL {
            match ImaLog::parse(bytes, alg) {
                Ok(log) if log.check_template_hashes().is_ok() => return Ok(log),
                Ok(log) => {
                    if sha1_error.is_none() {
                        sha1_error = log.check_template_hashes().err();
                    }
                }
                Err(e) => {
                    if sha1_error.is_none() {
                        sha1_error = Some(e);
                    }
                }
            }
        }
        Err(ImaError::NotALog {
            sha1_error: Box::new(sha1_error.unwrap_or(ImaError::Truncated {
                entry: 0,
                offset: 0,
                what: "entry",
                needed: 1,
                left: 0,
            })),
        })
    }

    /// Parses the ASCII form (`ascii_runtime_measurements`): one entry per line,
    /// `PCR template-hash template-name field…`. Templates `ima`, `ima-ng` and `ima-sig` are
    /// supported (the template data is rebuilt from the printed fields, so the template hashes
    /// can be checked and the log replayed exactly as the binary form).
    pub fn parse_ascii(text: &str) -> Result<ImaLog, ImaError> {
        let mut entries = Vec::new();
        let mut alg = None;
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let bad = |reason: String| ImaError::BadAsciiLine {
                line: line_no,
                reason,
            };
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.splitn(5, ' ');
            let pcr = parts.next().unwrap_or_default();
            let Ok(pcr) = pcr.parse::<u32>() else {
                if entries.is_empty() && pcr == "PCR" {
                    continue; // a header line
                }
                return Err(bad(format!("PCR index {pcr:?} is not a number")));
            };
            let hash = hex::decode(parts.next().unwrap_or_default())
                .map_err(|e| bad(format!("template hash is not hex: {e}")))?;
            let this_alg = HashAlg::ALL
                .into_iter()
                .find(|a| a.size() == hash.len())
                .ok_or_else(|| bad(format!("template hash of {} bytes", hash.len())))?;
            if *alg.get_or_insert(this_alg) != this_alg {
                return Err(bad("template hashes of different sizes in one log".into()));
            }
            let template = parts.next().unwrap_or_default();
            let digest_text = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default();
            let (digest_alg, digest_hex) = match digest_text.rsplit_once(':') {
                Some((a, h)) => (Some(a), h),
                None => (None, digest_text),
            };
            let value =
                hex::decode(digest_hex).map_err(|e| bad(format!("file digest is not hex: {e}")))?;
            let mut entry = match template {
                "ima" => {
                    if value.len() != IMA_TEMPLATE_DIGEST {
                        return Err(bad("the ima template's digest must be 20 bytes".into()));
                    }
                    let fields = vec![
                        TemplateField {
                            id: "d".into(),
                            data: value,
                        },
                        TemplateField {
                            id: "n".into(),
                            data: rest.as_bytes().to_vec(),
                        },
                    ];
                    let event = event_of("ima", &fields).map_err(|(_, r)| bad(r))?;
                    ImaEntry {
                        pcr,
                        template_hash: Vec::new(),
                        template_name: "ima".into(),
                        fields,
                        event,
                    }
                }
                "ima-ng" | "ima-sig" => {
                    let digest = FileDigest {
                        algorithm: digest_alg.unwrap_or("sha1").to_owned(),
                        value,
                    };
                    let (path, sig) = if template == "ima-sig" {
                        match rest.rsplit_once(' ') {
                            Some((p, s))
                                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
                            {
                                (
                                    p,
                                    hex::decode(s)
                                        .map_err(|e| bad(format!("signature is not hex: {e}")))?,
                                )
                            }
                            _ => (rest, Vec::new()),
                        }
                    } else {
                        (rest, Vec::new())
                    };
                    if template == "ima-sig" {
                        ImaEntry::ima_sig(path, digest, &sig, this_alg)
                    } else {
                        ImaEntry::ima_ng(path, digest, this_alg)
                    }
                }
                other => {
                    return Err(bad(format!(
                        "template {other:?} is not supported in ASCII logs; use the binary log"
                    )));
                }
            };
            entry.pcr = pcr;
            entry.template_hash = hash;
            entries.push(entry);
        }
        Ok(ImaLog {
            template_hash_alg: alg.unwrap_or(HashAlg::Sha1),
            entries,
        })
    }

    /// The template-hash algorithm of the entries.
    pub fn template_hash_alg(&self) -> HashAlg {
        self.template_hash_alg
    }

    /// The entries in log order.
    pub fn entries(&self) -> &[ImaEntry] {
        &self.entries
    }

    /// Appends an entry.
    pub fn push(&mut self, entry: ImaEntry) {
        self.entries.push(entry);
    }

    /// The binary (`binary_runtime_measurements`) form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            e.encode(&mut out);
        }
        out
    }

    /// Checks that every entry's template hash is the hash of its data; the first entry that
    /// is not is reported as tampered.
    pub fn check_template_hashes(&self) -> Result<(), ImaError> {
        for (i, e) in self.entries.iter().enumerate() {
            if !e.template_hash_matches(self.template_hash_alg) {
                return Err(ImaError::TamperedEntry {
                    entry: i,
                    path: e.display_path(),
                    alg: self.template_hash_alg,
                    logged: hex::encode(&e.template_hash),
                    computed: hex::encode(self.template_hash_alg.digest(&e.hashed_data())),
                });
            }
        }
        Ok(())
    }

    /// The value PCR `pcr` of `bank` holds after all entries for it, starting from zero.
    pub fn replay(&self, pcr: u32, bank: HashAlg) -> Vec<u8> {
        self.entries
            .iter()
            .filter(|e| e.pcr == pcr)
            .fold(bank.zero_pcr(), |acc, e| {
                bank.extend(&acc, &e.pcr_digest(bank))
            })
    }

    /// The number `n` of leading entries after which PCR `pcr` of `bank` equals `target`
    /// (0 when the PCR is still zero), or `None` when no prefix of the log gets there. Entries
    /// after `n` were logged after the PCR held `target` (for a quote: after the quote).
    pub fn replay_to(&self, pcr: u32, bank: HashAlg, target: &[u8]) -> Option<usize> {
        let mut acc = bank.zero_pcr();
        if acc == target {
            return Some(0);
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.pcr != pcr {
                continue;
            }
            acc = bank.extend(&acc, &e.pcr_digest(bank));
            if acc == target {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Splits template data into its length-prefixed fields and names them.
fn split_fields(data: &[u8], template: &str) -> Result<Vec<TemplateField>, (String, String)> {
    let mut raw = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(len_bytes) = data.get(pos..pos + 4) else {
            return Err((format!("#{}", raw.len()), "length prefix cut off".into()));
        };
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        pos += 4;
        let Some(field) = data.get(pos..).and_then(|d| d.get(..len)) else {
            return Err((
                format!("#{}", raw.len()),
                format!(
                    "length {len} runs past the template data ({} bytes left)",
                    data.len() - pos
                ),
            ));
        };
        raw.push(field.to_vec());
        pos += len;
    }
    match template_fields(template) {
        Some(ids) if ids.len() == raw.len() => Ok(ids
            .into_iter()
            .zip(raw)
            .map(|(id, data)| TemplateField {
                id: id.to_owned(),
                data,
            })
            .collect()),
        Some(ids) => Err((
            "template data".into(),
            format!(
                "{} fields, but template {template} has {}",
                raw.len(),
                ids.len()
            ),
        )),
        None => Ok(raw
            .into_iter()
            .enumerate()
            .map(|(i, data)| TemplateField {
                id: format!("#{i}"),
                data,
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ima_ng_roundtrip_and_replay() {
        let mut log = ImaLog::new(HashAlg::Sha1);
        log.push(ImaEntry::ima_ng(
            "boot_aggregate",
            FileDigest::new(HashAlg::Sha256, vec![7; 32]),
            HashAlg::Sha1,
        ));
        log.push(ImaEntry::ima_sig(
            "/usr/bin/true",
            FileDigest::new(HashAlg::Sha256, vec![1; 32]),
            b"sig",
            HashAlg::Sha1,
        ));
        log.push(ImaEntry::violation(
            "/tmp/x",
            HashAlg::Sha256,
            HashAlg::Sha1,
        ));
        let bytes = log.to_bytes();
        let back = ImaLog::parse(&bytes, HashAlg::Sha1).unwrap();
        assert_eq!(back, log);
        back.check_template_hashes().unwrap();
        assert_eq!(ImaLog::parse_any(&bytes).unwrap(), log);
        // The violation extends all-ones.
        let mut pcr = HashAlg::Sha256.zero_pcr();
        for e in log.entries() {
            let d = if e.is_violation() {
                vec![0xFF; 32]
            } else {
                HashAlg::Sha256.digest(&e.hashed_data())
            };
            pcr = HashAlg::Sha256.extend(&pcr, &d);
        }
        assert_eq!(log.replay(IMA_PCR, HashAlg::Sha256), pcr);
        assert_eq!(log.replay_to(IMA_PCR, HashAlg::Sha256, &pcr), Some(3));
        assert_eq!(log.replay_to(IMA_PCR, HashAlg::Sha256, &[1; 32]), None);
        match &log.entries()[1].event {
            ImaEvent::File {
                path,
                signature,
                digest,
            } => {
                assert_eq!(path, b"/usr/bin/true");
                assert_eq!(signature.as_deref(), Some(&b"sig"[..]));
                assert_eq!(digest.hash_alg(), Some(HashAlg::Sha256));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let mut log = ImaLog::new(HashAlg::Sha1);
        log.push(ImaEntry::ima_ng(
            "/bin/sh",
            FileDigest::new(HashAlg::Sha1, vec![3; 20]),
            HashAlg::Sha1,
        ));
        let bytes = log.to_bytes();
        for cut in 1..bytes.len() {
            assert!(
                ImaLog::parse(&bytes[..cut], HashAlg::Sha1).is_err(),
                "cut {cut}"
            );
        }
        assert!(ImaLog::parse(&[0xFF; 200], HashAlg::Sha1).is_err());
        assert!(ImaLog::parse_any(&[0x0A, 0, 0, 0, 1, 2, 3]).is_err());
    }

    #[test]
    fn tampered_entry_is_named() {
        let mut log = ImaLog::new(HashAlg::Sha1);
        log.push(ImaEntry::ima_ng(
            "/bin/sh",
            FileDigest::new(HashAlg::Sha256, vec![3; 32]),
            HashAlg::Sha1,
        ));
        let mut bytes = log.to_bytes();
        let n = bytes.len();
        bytes[n - 3] = b'x'; // "/bin/sh" → "/bin/xh" (the last byte is the NUL)
        let parsed = ImaLog::parse(&bytes, HashAlg::Sha1).unwrap();
        let err = parsed.check_template_hashes().unwrap_err();
        assert!(
            matches!(err, ImaError::TamperedEntry { entry: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("/bin/xh"));
    }

    #[test]
    fn ascii_matches_binary() {
        let mut log = ImaLog::new(HashAlg::Sha1);
        log.push(ImaEntry::ima_ng(
            "boot_aggregate",
            FileDigest::new(HashAlg::Sha256, vec![7; 32]),
            HashAlg::Sha1,
        ));
        log.push(ImaEntry::ima_sig(
            "/usr/bin/a b",
            FileDigest::new(HashAlg::Sha256, vec![1; 32]),
            &[0xAB, 0xCD],
            HashAlg::Sha1,
        ));
        let mut text = String::new();
        for e in log.entries() {
            let d = e.digest().unwrap();
            text.push_str(&format!(
                "10 {} {} {} {}",
                hex::encode(&e.template_hash),
                e.template_name,
                d,
                e.display_path()
            ));
            if let ImaEvent::File {
                signature: Some(s), ..
            } = &e.event
            {
                text.push_str(&format!(" {}", hex::encode(s)));
            }
            text.push('\n');
        }
        let ascii = ImaLog::parse_ascii(&text).unwrap();
        assert_eq!(ascii, log);
        ascii.check_template_hashes().unwrap();
    }
}
