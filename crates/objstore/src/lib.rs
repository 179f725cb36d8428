//! Object storage for what tessera keeps between phases and hands between machines: garbled
//! material, precomputed preprocessing, uploaded encrypted models.
//!
//! One interface over the `object_store` crate, chosen by a [`Location`]:
//!
//! * a directory on the local filesystem, the embedded default; every object is written to a
//!   staging file, renamed into place when complete, and synced (file and directory) before
//!   [`ObjectWriter::finish`] returns;
//! * `s3://bucket/prefix` for any S3-compatible store, with the usual credential variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT` for
//!   a store other than AWS; `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint such as one on
//!   loopback).
//!
//! Large objects stream both ways in bounded memory: a writer uploads parts of
//! [`PART_BYTES`] (S3 multipart upload; at most two parts in flight), a reader fetches ranges of
//! [`RANGE_BYTES`] with the next [`READ_AHEAD`] in flight while the current one is consumed (one
//! range at a time halved the throughput from a loopback S3 server); from a local directory it
//! reads the object's file directly. An object is visible only
//! once complete: a writer dropped before [`ObjectWriter::finish`] aborts its upload and leaves
//! nothing behind.
//!
//! # Threat model
//!
//! The store is untrusted: it may lose, delay, truncate, replace or replay any object. This
//! crate gives it nothing secret to keep (callers store garbled material, masked shares and
//! ciphertexts) and checks nothing itself beyond lengths; what is read back is checked by the
//! caller's own format — the checksummed chunks of the garbled material and the garbler's check
//! of the output labels — so a damaged or substituted object ends in an error, never a wrong
//! result. Keys are checked here (no empty segments, no `.` or `..`, a small character set) so a
//! key cannot name an object outside the store's prefix.

#![warn(missing_docs)]

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, WriteMultipart};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Bytes per uploaded part (S3 needs at least 5 MiB for every part but the last).
pub const PART_BYTES: usize = 8 << 20;
/// Bytes per ranged read.
pub const RANGE_BYTES: u64 = 8 << 20;
/// Ranged reads a reader keeps in flight ahead of the one it consumes.
pub const READ_AHEAD: usize = 3;

/// Everything that can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location string is not a directory path or an `s3://bucket/prefix` URL.
    #[error("store location '{0}': {1}")]
    Location(String, String),
    /// A key outside the allowed form.
    #[error("object key '{0}': {1}")]
    Key(String, &'static str),
    /// No object under this key.
    #[error(
        "no object '{0}' in {1} (already used and deleted, never written, or lost by the store)"
    )]
    NotFound(String, String),
    /// The store refused or failed an operation.
    #[error(
        "{op} '{key}' in {store}: {source} (check that the store is reachable and, for s3://, \
         that AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the endpoint are right)"
    )]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The object.
        key: String,
        /// The store.
        store: String,
        /// Its error.
        source: Box<object_store::Error>,
    },
    /// A local filesystem error (creating the directory, syncing).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The object changed length while it was being read, or a range read came back short.
    #[error(
        "object '{0}' read {1} bytes where {2} were expected (changed or truncated while read)"
    )]
    Short(String, u64, u64),
}

/// Where a store keeps its objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory (created if missing).
    Local(PathBuf),
    /// An S3-compatible bucket and a key prefix (may be empty), with settings that override
    /// the AWS_* variables: `endpoint`, `region` and `allow_http`, given as a URL query
    /// (`s3://bucket/prefix?endpoint=http://127.0.0.1:9000&allow_http=true`). Credentials come
    /// from the variables only, never from the URL.
    S3 {
        /// The bucket.
        bucket: String,
        /// Prefix of every key.
        prefix: String,
        /// Settings from the query, in order.
        options: Vec<(String, String)>,
    },
}

impl std::str::FromStr for Location {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut options = Vec::new();
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                if !["endpoint", "region", "allow_http"].contains(&k) || v.is_empty() {
                    return Err(StoreError::Location(
                        s.into(),
                        format!(
                            "unknown or empty setting '{k}' (endpoint, region and allow_http may be given; credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                        ),
                    ));
                }
                options.push((k.to_string(), v.to_string()));
            }
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = !bucket.is_empty()
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !ok {
                return Err(StoreError::Location(
                    s.into(),
                    "the bucket must be lower-case letters, digits, '-' and '.' (s3://bucket/prefix)"
                        .into(),
                ));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if !prefix.is_empty() {
                check_key(&prefix)?;
            }
            return Ok(Location::S3 {
                bucket: bucket.into(),
                prefix,
                options,
            });
        }
        if s.contains("://") && !s.starts_with("file://") {
            return Err(StoreError::Location(
                s.into(),
                "only a directory (or file://DIR) and s3://bucket/prefix are supported".into(),
            ));
        }
        let p = s.strip_prefix("file://").unwrap_or(s);
        if p.is_empty() {
            return Err(StoreError::Location(s.into(), "an empty path".into()));
        }
        Ok(Location::Local(PathBuf::from(p)))
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 {
                bucket,
                prefix,
                options,
            } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                for (i, (k, v)) in options.iter().enumerate() {
                    write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
                }
                Ok(())
            }
        }
    }
}

/// Keys are `/`-separated segments of ASCII letters, digits, `-`, `_` and `.`, none empty, `.`
/// or `..`.
fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why| Err(StoreError::Key(key.into(), why));
    if key.is_empty() || key.len() > 512 {
        return bad("a key is 1 to 512 characters");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, '.' and '..' segments are not allowed");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad("only letters, digits, '-', '_', '.' and '/' are allowed");
        }
    }
    Ok(())
}

/// An open store (cheap to clone: clones share the connection and the I/O runtime).
#[derive(Clone)]
pub struct Objects {
    inner: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    local_root: Option<PathBuf>,
    rt: Arc<tokio::runtime::Runtime>,
    name: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects({})", self.name)
    }
}

impl Objects {
    /// Open the store at `loc` (a local directory is created if missing; an S3 bucket must
    /// exist).
    pub fn open(loc: &Location) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-objstore")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                what: "starting the store's I/O runtime for",
                path: loc.to_string(),
                source: e,
            })?;
        let rt = Arc::new(rt);
        let name = loc.to_string();
        match loc {
            Location::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                    what: "creating the store directory",
                    path: dir.display().to_string(),
                    source: e,
                })?;
                let root = dir.canonicalize().map_err(|e| StoreError::Io {
                    what: "resolving the store directory",
                    path: dir.display().to_string(),
                    source: e,
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| backend("opening", "", &name, e))?;
                Ok(Self {
                    inner: Arc::new(fs),
                    prefix: None,
                    local_root: Some(root),
                    rt,
                    name,
                })
            }
            Location::S3 {
                bucket,
                prefix,
                options,
            } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (k, v) in options {
                    b = match k.as_str() {
                        "endpoint" => b.with_endpoint(v),
                        "region" => b.with_region(v),
                        _ => b.with_allow_http(v == "true"),
                    };
                }
                let s3 = b.build().map_err(|e| backend("opening", "", &name, e))?;
                Ok(Self {
                    inner: Arc::new(s3),
                    prefix: (!prefix.is_empty()).then(|| prefix.clone()),
                    local_root: None,
                    rt,
                    name,
                })
            }
        }
    }

    /// The store, as a user would name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self, key: &str) -> Result<ObjPath, StoreError> {
        check_key(key)?;
        Ok(match &self.prefix {
            Some(p) => ObjPath::from(format!("{p}/{key}")),
            None => ObjPath::from(key),
        })
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => {
                StoreError::NotFound(key.into(), self.name.clone())
            }
            e => backend(op, key, &self.name, e),
        }
    }

    /// Write a small object in one request (synced on the local filesystem).
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let payload = Bytes::copy_from_slice(bytes);
        self.rt
            .block_on(self.inner.put(&path, payload.into()))
            .map_err(|e| self.err("writing", key, e))?;
        self.sync_local(key)
    }

    /// A streaming writer for a large object.
    pub fn writer(&self, key: &str) -> Result<ObjectWriter, StoreError> {
        let path = self.path(key)?;
        let up = self
            .rt
            .block_on(self.inner.put_multipart(&path))
            .map_err(|e| self.err("starting the upload of", key, e))?;
        Ok(ObjectWriter {
            store: self.clone(),
            key: key.into(),
            up: Some(WriteMultipart::new_with_chunk_size(up, PART_BYTES)),
            written: 0,
        })
    }

    /// The whole of a small object.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let r = self
            .rt
            .block_on(async { self.inner.get(&path).await?.bytes().await })
            .map_err(|e| self.err("reading", key, e))?;
        // Without a copy when the buffer is not shared (a whole object arrives in one).
        Ok(Vec::from(r))
    }

    /// Bytes `range` of an object.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let want = range.end.saturating_sub(range.start);
        let r = self
            .rt
            .block_on(self.inner.get_range(&path, range))
            .map_err(|e| self.err("reading", key, e))?;
        if r.len() as u64 != want {
            return Err(StoreError::Short(key.into(), r.len() as u64, want));
        }
        Ok(Vec::from(r))
    }

    /// An object's size in bytes.
    pub fn size(&self, key: &str) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        self.rt
            .block_on(self.inner.head(&path))
            .map(|m| m.size)
            .map_err(|e| self.err("looking up", key, e))
    }

    /// A streaming reader for an object, from its start.
    ///
    /// On the local filesystem the reader reads the object's file directly (at most its size
    /// as looked up here): one copy from the page cache into the caller's buffer, where the
    /// ranged reads would copy twice and keep two more threads busy.
    pub fn reader(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let size = self.size(key)?;
        let local = match &self.local_root {
            Some(root) => {
                // The key was checked by `size` (no `.`, `..` or empty segments).
                let file = root.join(key);
                let f = std::fs::File::open(&file).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        StoreError::NotFound(key.into(), self.name.clone())
                    }
                    _ => StoreError::Io {
                        what: "opening",
                        path: file.display().to_string(),
                        source: e,
                    },
                })?;
                Some(std::io::Read::take(f, size))
            }
            None => None,
        };
        let mut r = ObjectReader {
            store: self.clone(),
            key: key.into(),
            path: self.path(key)?,
            size,
            fetched: 0,
            buf: Bytes::new(),
            next: std::collections::VecDeque::new(),
            local,
        };
        if r.local.is_none() {
            r.prefetch();
        }
        Ok(r)
    }

    /// Delete an object (single-use material once used). Deleting a missing object is an error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.size(key)?;
        let path = self.path(key)?;
        self.rt
            .block_on(self.inner.delete(&path))
            .map_err(|e| self.err("deleting", key, e))
    }

    /// Keys and sizes of the objects under `under` (a key prefix of whole segments; "" for all).
    pub fn list(&self, under: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let base = match (&self.prefix, under.trim_matches('/')) {
            (Some(p), "") => Some(ObjPath::from(p.as_str())),
            (Some(p), u) => {
                check_key(u)?;
                Some(ObjPath::from(format!("{p}/{u}")))
            }
            (None, "") => None,
            (None, u) => {
                check_key(u)?;
                Some(ObjPath::from(u))
            }
        };
        let skip = self.prefix.as_ref().map_or(0, |p| p.len() + 1);
        let items = self
            .rt
            .block_on(async {
                use futures::TryStreamExt;
                self.inner.list(base.as_ref()).try_collect::<Vec<_>>().await
            })
            .map_err(|e| self.err("listing", under, e))?;
        let mut v: Vec<(String, u64)> = items
            .into_iter()
            .filter_map(|m| {
                let k = m.location.to_string();
                k.get(skip..).map(|k| (k.to_string(), m.size))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// On the local filesystem, sync a completed object and its directory.
    fn sync_local(&self, key: &str) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key);
        let io = |what, p: &std::path::Path, source| StoreError::Io {
            what,
            path: p.display().to_string(),
            source,
        };
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", &file, e))?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("syncing the directory", dir, e))?;
        }
        Ok(())
    }
}

fn backend(op: &'static str, key: &str, store: &str, e: object_store::Error) -> StoreError {
    StoreError::Backend {
        op,
        key: key.into(),
        store: store.into(),
        source: Box::new(e),
    }
}

/// Streams a large object into the store in parts; [`ObjectWriter::finish`] makes it visible.
pub struct ObjectWriter {
    store: Objects,
    key: String,
    up: Option<WriteMultipart>,
    written: u64,
}

impl ObjectWriter {
    /// Complete the upload (and sync it on the local filesystem); returns the bytes written.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        let up = self
            .up
            .take()
            .ok_or_else(|| StoreError::Short(self.key.clone(), 0, 0))?;
        self.store
            .rt
            .block_on(up.finish())
            .map_err(|e| self.store.err("completing the upload of", &self.key, e))?;
        self.store.sync_local(&self.key)?;
        Ok(self.written)
    }
}

impl std::io::Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let up = self
            .up
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the upload is finished"))?;
        self.store
            .rt
            .block_on(up.wait_for_capacity(2))
            .map_err(std::io::Error::other)?;
        // A full part is handed to a task of the store's runtime.
        let _in_runtime = self.store.rt.enter();
        up.write(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    /// An unfinished upload is aborted: nothing becomes visible.
    fn drop(&mut self) {
        if let Some(up) = self.up.take() {
            let _ = self.store.rt.block_on(up.abort());
        }
    }
}

/// Reads an object in ranges of [`RANGE_BYTES`], the next [`READ_AHEAD`] ranges fetched while
/// the current one is read.
pub struct ObjectReader {
    store: Objects,
    key: String,
    path: ObjPath,
    size: u64,
    fetched: u64,
    buf: Bytes,
    next: std::collections::VecDeque<(u64, JoinHandle<object_store::Result<Bytes>>)>,
    /// A local store's file, read directly (see [`Objects::reader`]).
    local: Option<std::io::Take<std::fs::File>>,
}

impl ObjectReader {
    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn prefetch(&mut self) {
        while self.fetched < self.size && self.next.len() <= READ_AHEAD {
            let end = (self.fetched + RANGE_BYTES).min(self.size);
            let (store, path, start) = (self.store.inner.clone(), self.path.clone(), self.fetched);
            let h = self
                .store
                .rt
                .spawn(async move { store.get_range(&path, start..end).await });
            self.next.push_back((end - start, h));
            self.fetched = end;
        }
    }
}

impl std::io::Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = &mut self.local {
            return std::io::Read::read(f, out);
        }
        if self.buf.is_empty() {
            let Some((want, h)) = self.next.pop_front() else {
                return Ok(0);
            };
            let got = self
                .store
                .rt
                .block_on(h)
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(self.store.err("reading", &self.key, e)))?;
            if got.len() as u64 != want {
                return Err(std::io::Error::other(StoreError::Short(
                    self.key.clone(),
                    got.len() as u64,
                    want,
                )));
            }
            self.buf = got;
            self.prefetch();
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}
