//! Datasets in memory, the data owner's encrypted dataset file, and the encrypted model file.
//!
//! # Encrypted dataset (`.tsds`)
//!
//! ```text
//! "TSDS" ‖ version (1 byte, 1) ‖ u32le header length ‖ header (JSON, DatasetMeta)
//! ‖ chunk 0 ‖ … ‖ chunk n−1,   chunk = u32le length ‖ AES-256-GCM ciphertext and tag
//! ```
//!
//! Chunk `i` holds up to `chunk_rows` rows, each `features` little-endian f32 then one label
//! byte. It is encrypted under the 32-byte dataset key with nonce `0u32 ‖ u64be(i)` (one key per
//! dataset, so nonces never repeat) and associated data
//! `"tessera-attested dataset v1\0" ‖ SHA-256(header) ‖ u64be(i) ‖ u64be(n) ‖ last-flag`. So
//! the header (shape, label count, row and chunk counts) is authenticated by every chunk; a
//! chunk moved to another position, another file, or a file cut short or extended fails, and
//! the error names the chunk. Decryption happens only in memory, into zeroizing buffers.
//!
//! # Encrypted model (`.tsmd`)
//!
//! `"TSMD" ‖ version 1 ‖ 12-byte random nonce ‖ AES-256-GCM(model key, aad =
//! "tessera-attested model v1\0" ‖ job id, ONNX bytes)`.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{AttestedError, random};

const DS_MAGIC: &[u8; 4] = b"TSDS";
const DS_VERSION: u8 = 1;
const DS_AAD: &[u8] = b"tessera-attested dataset v1\0";
const MD_MAGIC: &[u8; 4] = b"TSMD";
const MD_VERSION: u8 = 1;
const MD_AAD: &[u8] = b"tessera-attested model v1\0";
/// Largest header accepted.
const MAX_HEADER: usize = 64 << 10;
/// Largest number of feature values accepted (1 Gi floats, 4 GiB).
const MAX_VALUES: u64 = 1 << 30;

/// Features per row of `shape` (the product of all but the first dimension), or `None` on
/// overflow.
fn per_row(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .skip(1)
        .try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A 32-byte AES-256 key, zeroized on drop.
pub type Key = Zeroizing<[u8; 32]>;

/// A fresh random key.
pub fn new_key() -> Result<Key, AttestedError> {
    let mut k = Zeroizing::new([0u8; 32]);
    random(k.as_mut())?;
    Ok(k)
}

/// Turns unwrapped key bytes into a [`Key`].
pub fn key_from(bytes: &[u8]) -> Result<Key, AttestedError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| {
        AttestedError::KeyWrap(format!("a key has {} bytes, expected 32", bytes.len()))
    })?;
    Ok(Zeroizing::new(arr))
}

/// A labelled dataset in memory. Features and labels are zeroized when dropped.
pub struct PlainDataset {
    /// Name (for reports).
    pub name: String,
    /// The model's input shape, batch dimension 1 first (e.g. `[1, 1, 28, 28]`, `[1, 30]`).
    pub input_shape: Vec<usize>,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// Row-major features, `rows × features()`.
    pub features: Zeroizing<Vec<f32>>,
    /// One label per row.
    pub labels: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PlainDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainDataset")
            .field("name", &self.name)
            .field("input_shape", &self.input_shape)
            .field("classes", &self.classes)
            .field("rows", &self.rows())
            .finish()
    }
}

impl PlainDataset {
    /// A dataset, after checking the sizes and labels agree.
    pub fn new(
        name: &str,
        input_shape: Vec<usize>,
        classes: usize,
        features: Vec<f32>,
        labels: Vec<u8>,
    ) -> Result<PlainDataset, AttestedError> {
        let features = Zeroizing::new(features);
        let labels = Zeroizing::new(labels);
        let per = per_row(&input_shape).unwrap_or(0);
        if input_shape.first() != Some(&1) || per == 0 {
            return Err(AttestedError::Data(format!(
                "input shape {input_shape:?} must start with a batch dimension of 1 and hold at least one feature"
            )));
        }
        if classes == 0 || classes > 256 {
            return Err(AttestedError::Data(format!(
                "{classes} classes: 1 to 256 are supported"
            )));
        }
        if Some(features.len()) != labels.len().checked_mul(per) {
            return Err(AttestedError::Data(format!(
                "{} feature values for {} rows of {per} features",
                features.len(),
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| usize::from(l) >= classes) {
            return Err(AttestedError::Data(format!(
                "label {l} is not below the {classes} classes"
            )));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(AttestedError::Data("a feature value is not finite".into()));
        }
        Ok(PlainDataset {
            name: name.into(),
            input_shape,
            classes,
            features,
            labels,
        })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Features per row.
    pub fn features_per_row(&self) -> usize {
        per_row(&self.input_shape).unwrap_or(0)
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let d = self.features_per_row();
        self.features
            .get(i.checked_mul(d)?..i.checked_add(1)?.checked_mul(d)?)
    }

    /// Rows `range` as a new dataset.
    pub fn slice(&self, name: &str, from: usize, to: usize) -> Result<PlainDataset, AttestedError> {
        let d = self.features_per_row();
        let to = to.min(self.rows());
        let from = from.min(to);
        PlainDataset::new(
            name,
            self.input_shape.clone(),
            self.classes,
            self.features
                .get(from * d..to * d)
                .unwrap_or_default()
                .to_vec(),
            self.labels.get(from..to).unwrap_or_default().to_vec(),
        )
    }
}

/// The authenticated header of an encrypted dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    /// Dataset name.
    pub name: String,
    /// Input shape (batch 1 first).
    pub input_shape: Vec<usize>,
    /// Label count (classes).
    pub classes: usize,
    /// Rows in all.
    pub rows: usize,
    /// Rows per chunk (the last may hold fewer).
    pub chunk_rows: usize,
    /// Number of chunks.
    pub chunks: usize,
}

fn chunk_aad(header_hash: &[u8], index: u64, total: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DS_AAD.len() + 32 + 17);
    aad.extend_from_slice(DS_AAD);
    aad.extend_from_slice(header_hash);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.extend_from_slice(&total.to_be_bytes());
    aad.push(u8::from(index + 1 == total));
    aad
}

fn chunk_nonce(index: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::from(n)
}

/// Encrypts `data` under `key` in chunks of `chunk_rows` rows.
pub fn encrypt_dataset(
    data: &PlainDataset,
    key: &[u8; 32],
    chunk_rows: usize,
) -> Result<Vec<u8>, AttestedError> {
    let chunk_rows = chunk_rows.max(1);
    let rows = data.rows();
    let meta = DatasetMeta {
        name: data.name.clone(),
        input_shape: data.input_shape.clone(),
        classes: data.classes,
        rows,
        chunk_rows,
        chunks: rows.div_ceil(chunk_rows).max(1),
    };
    let header = serde_json::to_vec(&meta)
        .map_err(|e| AttestedError::Data(format!("dataset header: {e}")))?;
    let hh = Sha256::digest(&header);
    let cipher = Aes256Gcm::new(key.into());
    let d = data.features_per_row();
    let mut out = Vec::with_capacity(9 + header.len() + rows * (4 * d + 1) + meta.chunks * 20);
    out.extend_from_slice(DS_MAGIC);
    out.push(DS_VERSION);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let total = meta.chunks as u64;
    for c in 0..meta.chunks {
        let (from, to) = (c * chunk_rows, ((c + 1) * chunk_rows).min(rows));
        let mut plain = Zeroizing::new(Vec::with_capacity((to - from) * (4 * d + 1)));
        for r in from..to {
            for v in data.row(r).unwrap_or_default() {
                plain.extend_from_slice(&v.to_le_bytes());
            }
            plain.push(data.labels.get(r).copied().unwrap_or_default());
        }
        let aad = chunk_aad(&hh, c as u64, total);
        let ct = cipher
            .encrypt(
                &chunk_nonce(c as u64),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| AttestedError::Data("AES-GCM encryption failed".into()))?;
        out.extend_from_slice(&(ct.len() as u32).to_le_bytes());
        out.extend_from_slice(&ct);
    }
    Ok(out)
}

fn ct_err(what: impl Into<String>, reason: impl Into<String>) -> AttestedError {
    AttestedError::Ciphertext {
        what: what.into(),
        reason: reason.into(),
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], AttestedError> {
    if b.len() < n {
        return Err(ct_err(
            "dataset",
            format!("file truncated in {what}: the file was cut short"),
        ));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn u32le(b: &[u8]) -> usize {
    let mut a = [0u8; 4];
    a.copy_from_slice(b.get(..4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(a) as usize
}

/// Reads an encrypted dataset's header without the key (shape, sizes).
pub fn read_meta(bytes: &[u8]) -> Result<(DatasetMeta, usize), AttestedError> {
    let mut b = bytes;
    if take(&mut b, 4, "magic")? != DS_MAGIC {
        return Err(ct_err(
            "dataset",
            "not an encrypted tessera dataset (bad magic)",
        ));
    }
    let v = take(&mut b, 1, "version")?.first().copied().unwrap_or(0);
    if v != DS_VERSION {
        return Err(ct_err(
            "dataset",
            format!("format version {v}; this build reads version {DS_VERSION}"),
        ));
    }
    let hl = u32le(take(&mut b, 4, "header length")?);
    if hl > MAX_HEADER {
        return Err(ct_err(
            "dataset",
            format!("header of {hl} bytes exceeds {MAX_HEADER}"),
        ));
    }
    let header = take(&mut b, hl, "header")?;
    let meta: DatasetMeta = serde_json::from_slice(header)
        .map_err(|e| ct_err("dataset header", format!("malformed: {e}")))?;
    let per = per_row(&meta.input_shape).unwrap_or(0);
    let values = (meta.rows as u64).checked_mul(per as u64);
    if meta.input_shape.first() != Some(&1)
        || per == 0
        || meta.classes == 0
        || meta.classes > 256
        || meta.chunk_rows == 0
        || meta.chunks != meta.rows.div_ceil(meta.chunk_rows).max(1)
        || values.is_none_or(|v| v > MAX_VALUES)
    {
        return Err(ct_err(
            "dataset header",
            "inconsistent shape, class, row or chunk counts",
        ));
    }
    Ok((meta, 9 + hl))
}

/// Decrypts an encrypted dataset in memory. Every chunk must authenticate at its position,
/// and exactly the announced number of chunks must be present.
pub fn decrypt_dataset(bytes: &[u8], key: &[u8; 32]) -> Result<PlainDataset, AttestedError> {
    let (meta, body_at) = read_meta(bytes)?;
    let header = bytes.get(9..body_at).unwrap_or_default();
    let hh = Sha256::digest(header);
    let mut b = bytes.get(body_at..).unwrap_or_default();
    // `read_meta` bounded rows × per by MAX_VALUES, so none of this overflows.
    let per = per_row(&meta.input_shape).unwrap_or(0);
    let row_bytes = 4 * per + 1;
    let cipher = Aes256Gcm::new(key.into());
    let total = meta.chunks as u64;
    // Capacity from the bytes actually present, not from the (not yet authenticated) header.
    let mut features = Zeroizing::new(Vec::with_capacity((meta.rows * per).min(b.len() / 4)));
    let mut labels = Zeroizing::new(Vec::with_capacity(meta.rows.min(b.len())));
    for c in 0..meta.chunks {
        let what = format!("dataset chunk {c} of {}", meta.chunks);
        let rows = (meta.rows - (c * meta.chunk_rows).min(meta.rows)).min(meta.chunk_rows);
        let want = rows * row_bytes + 16;
        if b.len() < 4 {
            return Err(ct_err(
                what,
                "missing: the file ends early (truncated, or chunks were removed)",
            ));
        }
        let len = u32le(take(&mut b, 4, "chunk length")?);
        if len != want {
            return Err(ct_err(
                what,
                format!(
                    "holds {len} bytes, expected {want}: chunks were modified, reordered or truncated"
                ),
            ));
        }
        let ct = take(&mut b, len, &what)?;
        let aad = chunk_aad(&hh, c as u64, total);
        let plain = Zeroizing::new(
            cipher
                .decrypt(&chunk_nonce(c as u64), Payload { msg: ct, aad: &aad })
                .map_err(|_| {
                    ct_err(
                        what.clone(),
                        "fails authentication: it was modified, moved from another position or \
                         file, or the header was altered, or the key is wrong",
                    )
                })?,
        );
        for row in plain.chunks_exact(row_bytes) {
            let (f, l) = row.split_at(4 * per);
            for v in f.chunks_exact(4) {
                let mut a = [0u8; 4];
                a.copy_from_slice(v);
                features.push(f32::from_le_bytes(a));
            }
            labels.push(l.first().copied().unwrap_or_default());
        }
    }
    if !b.is_empty() {
        return Err(ct_err(
            "dataset",
            format!(
                "{} bytes follow the last chunk: the file was extended",
                b.len()
            ),
        ));
    }
    PlainDataset::new(
        &meta.name,
        meta.input_shape.clone(),
        meta.classes,
        std::mem::take(&mut *features),
        std::mem::take(&mut *labels),
    )
}

/// Offsets `(start, len)` of each chunk's ciphertext in an encrypted dataset (for tests and
/// tools).
pub fn chunk_offsets(bytes: &[u8]) -> Result<Vec<(usize, usize)>, AttestedError> {
    let (meta, mut at) = read_meta(bytes)?;
    let mut out = Vec::with_capacity(meta.chunks);
    for _ in 0..meta.chunks {
        let len = u32le(bytes.get(at..at + 4).unwrap_or_default());
        if bytes.len() < at + 4 + len || bytes.len() < at + 4 {
            return Err(ct_err("dataset", "truncated"));
        }
        out.push((at, 4 + len));
        at += 4 + len;
    }
    Ok(out)
}

fn model_aad(job: &str) -> Vec<u8> {
    let mut aad = MD_AAD.to_vec();
    aad.extend_from_slice(job.as_bytes());
    aad
}

/// Encrypts the trained model's ONNX bytes for `job` under the model key.
pub fn encrypt_model(key: &[u8; 32], job: &str, onnx: &[u8]) -> Result<Vec<u8>, AttestedError> {
    let mut nonce = [0u8; 12];
    random(&mut nonce)?;
    let ct = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: onnx,
                aad: &model_aad(job),
            },
        )
        .map_err(|_| AttestedError::Data("AES-GCM encryption failed".into()))?;
    let mut out = Vec::with_capacity(17 + ct.len());
    out.extend_from_slice(MD_MAGIC);
    out.push(MD_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts what [`encrypt_model`] made for `job`.
pub fn decrypt_model(
    key: &[u8; 32],
    job: &str,
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AttestedError> {
    let what = format!("model of job {job}");
    let body = bytes
        .strip_prefix(MD_MAGIC.as_slice())
        .ok_or_else(|| ct_err(what.clone(), "not an encrypted tessera model (bad magic)"))?;
    let (&v, rest) = body
        .split_first()
        .ok_or_else(|| ct_err(what.clone(), "truncated"))?;
    if v != MD_VERSION {
        return Err(ct_err(
            what,
            format!("format version {v}; this build reads {MD_VERSION}"),
        ));
    }
    let (nonce, ct) = rest
        .split_first_chunk::<12>()
        .ok_or_else(|| ct_err(what.clone(), "truncated"))?;
    Aes256Gcm::new(key.into())
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ct,
                aad: &model_aad(job),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            ct_err(
                what,
                "fails authentication: wrong model key, another job's model, or modified",
            )
        })
}

/// Loads MNIST images and labels from an idx directory as `[1, 1, 28, 28]` rows (pixels 0–255).
pub fn load_mnist(dir: &Path) -> Result<PlainDataset, AttestedError> {
    let ds = tessera_data::idx::load_mnist_dir(dir)
        .map_err(|e| AttestedError::Data(format!("MNIST at {}: {e}", dir.display())))?;
    if ds.labels.len() != ds.count {
        return Err(AttestedError::Data(format!(
            "MNIST at {}: {} labels for {} images",
            dir.display(),
            ds.labels.len(),
            ds.count
        )));
    }
    PlainDataset::new(
        "mnist-t10k",
        vec![1, ds.channels, ds.rows, ds.cols],
        10,
        ds.pixels,
        ds.labels,
    )
}

/// Loads scikit-learn's `breast_cancer.csv` (header `rows,features,names…`, then rows of
/// features and a 0/1 label) as `[1, features]` rows.
pub fn load_breast_cancer(path: &Path) -> Result<PlainDataset, AttestedError> {
    let text = std::fs::read_to_string(path).map_err(|e| AttestedError::io("reading", path, e))?;
    parse_sklearn_csv("breast-cancer", &text, 2)
        .map_err(|e| AttestedError::Data(format!("{}: {e}", path.display())))
}

/// Parses a scikit-learn bundled CSV: first line `rows,features,…`, then `features` numbers
/// and an integer label per line.
pub fn parse_sklearn_csv(name: &str, text: &str, classes: usize) -> Result<PlainDataset, String> {
    let mut lines = text.lines();
    let head = lines.next().ok_or("empty file")?;
    let mut h = head.split(',');
    let rows: usize = h
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("header does not start with the row count")?;
    let d: usize = h
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("header does not give the feature count")?;
    if d == 0 || d > 1 << 16 || rows > 1 << 24 {
        return Err(format!("header announces {rows} rows of {d} features"));
    }
    let mut features = Vec::with_capacity(rows * d);
    let mut labels = Vec::with_capacity(rows);
    for (i, line) in lines.filter(|l| !l.trim().is_empty()).enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != d + 1 {
            return Err(format!(
                "row {} has {} cells, expected {}",
                i + 1,
                cells.len(),
                d + 1
            ));
        }
        for c in cells.iter().take(d) {
            features.push(
                c.trim()
                    .parse::<f32>()
                    .map_err(|_| format!("row {}: {c:?} is not a number", i + 1))?,
            );
        }
        let label: u8 = cells
            .get(d)
            .and_then(|c| c.trim().parse().ok())
            .ok_or_else(|| format!("row {}: the label is not a small integer", i + 1))?;
        labels.push(label);
    }
    if labels.len() != rows {
        return Err(format!(
            "header announces {rows} rows, the file has {}",
            labels.len()
        ));
    }
    PlainDataset::new(name, vec![1, d], classes, features, labels).map_err(|e| e.to_string())
}

/// Standardizes every feature of `train` and `test` with `train`'s mean and standard
/// deviation (the data owner's preprocessing; the model then expects standardized inputs).
pub fn standardize(train: &mut PlainDataset, test: &mut PlainDataset) {
    let d = train.features_per_row();
    if d == 0 || train.rows() == 0 || test.features_per_row() != d {
        return;
    }
    let n = train.rows() as f64;
    let mut mean = vec![0f64; d];
    for row in train.features.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += f64::from(*v) / n;
        }
    }
    let mut var = vec![0f64; d];
    for row in train.features.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(*v) - m).powi(2) / n;
        }
    }
    let sd: Vec<f64> = var.iter().map(|v| v.sqrt().max(1e-12)).collect();
    for ds in [train, test] {
        for row in ds.features.chunks_exact_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&mean).zip(&sd) {
                *v = ((f64::from(*v) - m) / s) as f32;
            }
        }
    }
}

/// Reorders rows deterministically (seeded Fisher–Yates with a small LCG), so that a split
/// into train and test is not ordered by class.
pub fn shuffle(ds: &mut PlainDataset, seed: u64) {
    let d = ds.features_per_row();
    let n = ds.rows();
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((s >> 33) % (i as u64 + 1)) as usize;
        if i != j {
            ds.labels.swap(i, j);
            for k in 0..d {
                ds.features.swap(i * d + k, j * d + k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(rows: usize) -> PlainDataset {
        let f: Vec<f32> = (0..rows * 3).map(|i| i as f32 * 0.5).collect();
        let l: Vec<u8> = (0..rows).map(|i| (i % 2) as u8).collect();
        PlainDataset::new("toy", vec![1, 3], 2, f, l).unwrap()
    }

    #[test]
    fn round_trip() {
        let ds = toy(10);
        let key = new_key().unwrap();
        for chunk in [1, 3, 10, 64] {
            let enc = encrypt_dataset(&ds, &key, chunk).unwrap();
            let back = decrypt_dataset(&enc, &key).unwrap();
            assert_eq!(*back.features, *ds.features);
            assert_eq!(*back.labels, *ds.labels);
            assert_eq!(back.input_shape, ds.input_shape);
        }
        let empty = toy(0);
        let enc = encrypt_dataset(&empty, &key, 4).unwrap();
        assert_eq!(decrypt_dataset(&enc, &key).unwrap().rows(), 0);
    }

    #[test]
    fn tampering_reordering_truncation_detected() {
        let ds = toy(10);
        let key = new_key().unwrap();
        let enc = encrypt_dataset(&ds, &key, 3).unwrap();
        let chunks = chunk_offsets(&enc).unwrap();
        assert_eq!(chunks.len(), 4);
        // A flipped byte in chunk 2.
        let mut t = enc.clone();
        t[chunks[2].0 + 10] ^= 0x40;
        let e = decrypt_dataset(&t, &key).unwrap_err().to_string();
        assert!(
            e.contains("dataset chunk 2 of 4") && e.contains("fails authentication"),
            "{e}"
        );
        // Chunks 0 and 1 swapped (same length).
        let (a, b) = (chunks[0], chunks[1]);
        let mut t = enc[..a.0].to_vec();
        t.extend_from_slice(&enc[b.0..b.0 + b.1]);
        t.extend_from_slice(&enc[a.0..a.0 + a.1]);
        t.extend_from_slice(&enc[b.0 + b.1..]);
        let e = decrypt_dataset(&t, &key).unwrap_err().to_string();
        assert!(e.contains("dataset chunk 0 of 4"), "{e}");
        // The last chunk dropped.
        let e = decrypt_dataset(&enc[..chunks[3].0], &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk 3 of 4") && e.contains("missing"), "{e}");
        // The header rewritten to announce fewer rows and chunks.
        let (meta, at) = read_meta(&enc).unwrap();
        let mut m2 = meta.clone();
        m2.rows = 9;
        let h = serde_json::to_vec(&m2).unwrap();
        let mut t = b"TSDS\x01".to_vec();
        t.extend_from_slice(&(h.len() as u32).to_le_bytes());
        t.extend_from_slice(&h);
        t.extend_from_slice(&enc[at..]);
        assert!(decrypt_dataset(&t, &key).is_err());
        // Bytes appended.
        let mut t = enc.clone();
        t.push(0);
        assert!(
            decrypt_dataset(&t, &key)
                .unwrap_err()
                .to_string()
                .contains("extended")
        );
        // Wrong key; every prefix.
        assert!(decrypt_dataset(&enc, &new_key().unwrap()).is_err());
        for n in 0..enc.len() {
            assert!(decrypt_dataset(&enc[..n], &key).is_err());
        }
    }

    #[test]
    fn model_round_trip() {
        let key = new_key().unwrap();
        let enc = encrypt_model(&key, "job-a", b"onnx bytes").unwrap();
        assert_eq!(
            decrypt_model(&key, "job-a", &enc).unwrap().as_slice(),
            b"onnx bytes"
        );
        assert!(decrypt_model(&key, "job-b", &enc).is_err());
        assert!(decrypt_model(&new_key().unwrap(), "job-a", &enc).is_err());
        assert!(decrypt_model(&key, "job-a", &enc[..10]).is_err());
    }

    #[test]
    fn csv_parse() {
        let ds = parse_sklearn_csv("t", "2,2,a,b\n1,2,0\n3.5,4,1\n", 2).unwrap();
        assert_eq!(ds.rows(), 2);
        assert_eq!(ds.row(1).unwrap(), &[3.5, 4.0]);
        assert!(parse_sklearn_csv("t", "2,2\n1,2,0\n", 2).is_err());
        assert!(parse_sklearn_csv("t", "1,2\n1,x,0\n", 2).is_err());
        assert!(parse_sklearn_csv("t", "1,2\n1,2,5\n", 2).is_err());
    }
}
