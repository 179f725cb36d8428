//! Preprocessing kept on disk between an offline and an online phase, on either side.
//!
//! Each preprocessing is one object `<time>-<id>.pre` in a store ([`tessera_objstore`]: a
//! local directory, or an S3-compatible store for clusters): visible only once completely
//! written (an interrupted write leaves nothing; synced on a directory), bounded in total by a
//! byte limit, and **deleted when it is taken**, before the online phase that uses it starts,
//! so no preprocessing serves twice even across a crash. A file is an envelope: magic,
//! version, kind (which side, which variant), the digest of the public model it was made for,
//! the payload's length, the payload, a CRC-32; a file that does not match the model, the side
//! or the variant, or that is truncated or corrupt, is refused with an error naming it.

use crate::protocol::TwoPcError;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use tessera_objstore::{Location, Objects};

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

fn st(e: tessera_objstore::StoreError) -> TwoPcError {
    TwoPcError::Store(e.to_string())
}

/// Stored preprocessings: a local directory or an S3-compatible store ([`tessera_objstore`]).
#[derive(Clone, Debug)]
pub struct Store {
    objects: Arc<Objects>,
    limit: u64,
}

impl Store {
    /// Open (and create) the directory `dir`, holding at most `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, TwoPcError> {
        Self::open_at(&Location::Local(dir.to_path_buf()), limit)
    }

    /// Open the store at `loc` (a directory or `s3://bucket/prefix`), holding at most `limit`
    /// bytes.
    pub fn open_at(loc: &Location, limit: u64) -> Result<Self, TwoPcError> {
        Ok(Self {
            objects: Arc::new(Objects::open(loc).map_err(st)?),
            limit,
        })
    }

    /// The byte limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn entries(&self) -> Result<Vec<(String, u64)>, TwoPcError> {
        let mut v: Vec<(String, u64)> = self
            .objects
            .list("")
            .map_err(st)?
            .into_iter()
            .filter(|(n, _)| n.ends_with(".pre") && !n.contains('/'))
            .collect();
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
        for (n, len) in self.entries()? {
            let Some(id) = parse_id(&n) else { continue };
            if len < 38 {
                continue;
            }
            let Ok(head) = self.objects.get_range(&n, 0..38) else {
                continue;
            };
            if &head[..4] == MAGIC && head[5] == kind as u8 && &head[6..38] == model {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn key_of(&self, id: &Id) -> Result<Option<String>, TwoPcError> {
        let h = hex(id);
        Ok(self
            .entries()?
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!("-{h}.pre")))
            .map(|(n, _)| n))
    }

    /// Store `payload` as preprocessing `id` of `kind` for the model with digest `model`
    /// (streamed in parts; visible only once complete, and synced on a local directory).
    pub fn put(
        &self,
        id: &Id,
        kind: Kind,
        model: &[u8; 32],
        payload: &[u8],
    ) -> Result<u64, TwoPcError> {
        use std::io::Write;
        if self.key_of(id)?.is_some() {
            return Err(TwoPcError::Store(format!(
                "preprocessing {} exists already",
                hex(id)
            )));
        }
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(MAGIC);
        head.push(VERSION);
        head.push(kind as u8);
        head.extend_from_slice(model);
        head.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(payload);
        let crc = crc.finalize().to_le_bytes();
        let total = (head.len() + payload.len() + crc.len()) as u64;
        let used = self.used()?;
        if used + total > self.limit {
            return Err(TwoPcError::Store(format!(
                "storing {total} more bytes would pass the limit of {} ({used} used in {}); raise --storage or use some first",
                self.limit,
                self.objects.name()
            )));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!("{stamp:024}-{}.pre", hex(id));
        let mut w = self.objects.writer(&key).map_err(st)?;
        let io = |e: std::io::Error| TwoPcError::Store(format!("writing {key}: {e}"));
        w.write_all(&head).map_err(io)?;
        for part in payload.chunks(8 << 20) {
            w.write_all(part).map_err(io)?;
        }
        w.write_all(&crc).map_err(io)?;
        w.finish().map_err(st)?;
        Ok(total)
    }

    /// Take preprocessing `id`: check it is of `kind` for `model`, delete it, return the
    /// payload.
    pub fn take(&self, id: &Id, kind: Kind, model: &[u8; 32]) -> Result<Vec<u8>, TwoPcError> {
        let key = self.key_of(id)?.ok_or_else(|| {
            TwoPcError::Store(format!(
                "no stored preprocessing {} in {} (used already, or never made here)",
                hex(id),
                self.objects.name()
            ))
        })?;
        let mut payload = self.objects.get(&key).map_err(st)?;
        check_envelope(&payload, kind, model)
            .map_err(|e| TwoPcError::Store(format!("{key} in {}: {e}", self.objects.name())))?;
        // The payload in place (no second copy of a preprocessing that can be gigabytes).
        payload.truncate(payload.len() - 4);
        payload.drain(..HEADER);
        // One use: the object goes before the preprocessing is used.
        self.objects.delete(&key).map_err(st)?;
        Ok(payload)
    }
}

/// Check an envelope (length, checksum, magic and version, kind, model, payload length).
fn check_envelope(b: &[u8], kind: Kind, model: &[u8; 32]) -> Result<(), String> {
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
    Ok(())
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
