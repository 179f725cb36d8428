//! Preprocessing kept on disk between an offline and an online phase, on either side.
//!
//! Each preprocessing is one file `<time>-<id>.pre` in a directory: written to a temporary
//! file, synced and renamed into place (an interrupted write leaves nothing), bounded in total
//! by a byte limit, and **removed when it is taken**, before the online phase that uses it
//! starts, so no preprocessing serves twice even across a crash. A file is an envelope: magic,
//! version, kind (which side, which variant), the digest of the public model it was made for,
//! the payload's length, the payload, a CRC-32; a file that does not match the model, the side
//! or the variant, or that is truncated or corrupt, is refused with an error naming it.

use crate::protocol::TwoPcError;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"T2PP";
const VERSION: u8 = 2;
const HEADER: usize = 4 + 1 + 1 + 32 + 8;

/// What a stored preprocessing is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The client's side, server-garbler.
    ClientSg = 1,
    /// The client's side, client-garbler.
    ClientCg = 2,
    /// The server's side, server-garbler.
    ServerSg = 3,
    /// The server's side, client-garbler.
    ServerCg = 4,
}

/// A preprocessing's name: 16 random bytes the client chooses.
pub type Id = [u8; 16];

/// The digest of a public model, which every stored preprocessing names.
pub fn model_digest(model: &crate::public::PublicModel) -> Result<[u8; 32], TwoPcError> {
    let b = postcard::to_allocvec(model)
        .map_err(|e| TwoPcError::Protocol(format!("encoding the model description: {e}")))?;
    Ok(Sha256::digest(&b).into())
}

fn io(path: &Path, what: &str, e: std::io::Error) -> TwoPcError {
    TwoPcError::Store(format!("{what} {}: {e}", path.display()))
}

/// A directory of stored preprocessings.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    limit: u64,
}

impl Store {
    /// Open (and create) `dir`, holding at most `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, TwoPcError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating", e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            limit,
        })
    }

    /// The byte limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn entries(&self) -> Result<Vec<(String, u64)>, TwoPcError> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, "reading", e))? {
            let e = e.map_err(|e| io(&self.dir, "reading", e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".pre") {
                let len = e
                    .metadata()
                    .map_err(|err| io(&e.path(), "reading", err))?
                    .len();
                v.push((name, len));
            }
        }
        v.sort();
        Ok(v)
    }

    /// Bytes stored.
    pub fn used(&self) -> Result<u64, TwoPcError> {
        Ok(self.entries()?.iter().map(|(_, l)| l).sum())
    }

    /// Preprocessings stored of `kind` for the model with digest `model`, oldest first.
    pub fn ids(&self, kind: Kind, model: &[u8; 32]) -> Result<Vec<Id>, TwoPcError> {
        let mut out = Vec::new();
        for (n, _) in self.entries()? {
            let Some(id) = parse_id(&n) else { continue };
            let mut head = [0u8; 38];
            let ok = std::fs::File::open(self.dir.join(&n))
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok();
            if ok && &head[..4] == MAGIC && head[5] == kind as u8 && &head[6..38] == model {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn path_of(&self, id: &Id) -> Result<Option<PathBuf>, TwoPcError> {
        let h = hex(id);
        Ok(self
            .entries()?
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!("-{h}.pre")))
            .map(|(n, _)| self.dir.join(n)))
    }

    /// Store `payload` as preprocessing `id` of `kind` for the model with digest `model`.
    pub fn put(
        &self,
        id: &Id,
        kind: Kind,
        model: &[u8; 32],
        payload: &[u8],
    ) -> Result<u64, TwoPcError> {
        if self.path_of(id)?.is_some() {
            return Err(TwoPcError::Store(format!(
                "preprocessing {} exists already",
                hex(id)
            )));
        }
        let mut v = Vec::with_capacity(HEADER + payload.len() + 4);
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.push(kind as u8);
        v.extend_from_slice(model);
        v.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v.extend_from_slice(payload);
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        let used = self.used()?;
        if used + v.len() as u64 > self.limit {
            return Err(TwoPcError::Store(format!(
                "storing {} more bytes would pass the limit of {} ({} used in {}); raise --storage or use some first",
                v.len(),
                self.limit,
                used,
                self.dir.display()
            )));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self.dir.join(format!("{stamp:024}-{}.pre", hex(id)));
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&v)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&path, "writing", e));
        }
        Ok(v.len() as u64)
    }

    /// Take preprocessing `id`: check it is of `kind` for `model`, remove the file, return the
    /// payload.
    pub fn take(&self, id: &Id, kind: Kind, model: &[u8; 32]) -> Result<Vec<u8>, TwoPcError> {
        let path = self.path_of(id)?.ok_or_else(|| {
            TwoPcError::Store(format!(
                "no stored preprocessing {} in {} (used already, or never made here)",
                hex(id),
                self.dir.display()
            ))
        })?;
        let bytes = std::fs::read(&path).map_err(|e| io(&path, "reading", e))?;
        let payload = open_envelope(&bytes, kind, model)
            .map_err(|e| TwoPcError::Store(format!("{}: {e}", path.display())))?;
        // One use: the file goes before the preprocessing is used.
        std::fs::remove_file(&path).map_err(|e| io(&path, "removing", e))?;
        Ok(payload)
    }
}

fn open_envelope(b: &[u8], kind: Kind, model: &[u8; 32]) -> Result<Vec<u8>, String> {
    if b.len() < HEADER + 4 {
        return Err(format!("{} bytes is shorter than a header", b.len()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("the checksum does not match: the file is corrupt".into());
    }
    if &body[..4] != MAGIC || body[4] != VERSION {
        return Err("not a tessera 2pc preprocessing of this version".into());
    }
    if body[5] != kind as u8 {
        return Err(format!(
            "made for another side or variant (kind {}, expected {})",
            body[5], kind as u8
        ));
    }
    if &body[6..38] != model {
        return Err("made for another model (the public description differs)".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[38..46]);
    let len = u64::from_le_bytes(len);
    if len != (body.len() - HEADER) as u64 {
        return Err(format!(
            "announces {len} bytes of payload, holds {}",
            body.len() - HEADER
        ));
    }
    Ok(body[HEADER..].to_vec())
}

fn hex(id: &Id) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_id(name: &str) -> Option<Id> {
    let h = name.strip_suffix(".pre")?.rsplit('-').next()?;
    if h.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (k, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(h.get(2 * k..2 * k + 2)?, 16).ok()?;
    }
    Some(id)
}
