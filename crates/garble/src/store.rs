//! Garbled material on disk: a versioned, checksummed stream written and read one chunk at a
//! time, so that a network whose garbled tables do not fit in memory can be garbled layer by
//! layer into a file and evaluated back from it with memory bounded by one chunk.
//!
//! [`StreamWriter`] splits every [`ProjectionBatch`] and [`LabelTensor`] it is given into chunks
//! of at most `max_chunk` payload bytes; [`StreamReader`] hands them back one [`Chunk`] at a time
//! (a batch comes back as consecutive sub-batches, each numbered with its own first gate, so the
//! evaluator can run each piece on the matching slice of its input labels and drop it).
//!
//! # What the checks are for
//!
//! Every byte of the stream is covered by a CRC-32 (the header by its own, each chunk by one over
//! its header and payload), chunks are numbered, and an end marker repeats the totals, so a file
//! that was cut short — even exactly at a chunk boundary — or damaged in transit is reported as
//! [`GarbleError::StreamTruncated`] or [`GarbleError::StreamCorrupt`], never read as shorter or
//! different material, and no field read from the file can make the reader panic or allocate
//! more than one chunk. The CRC protects against *accidental* damage only: anyone can recompute
//! it. Protection against a malicious worker that alters the material comes from the garbler's
//! output check ([`crate::OutputDecoder`]), which rejects every label that is not a valid output
//! label, whatever tables produced it.
//!
//! # Byte layout (version 2)
//!
//! All integers are little-endian. A label is stored in its compressed 16-byte form
//! ([`crate::Label::to_block`], u128 little-endian), which is never longer than its digits; a
//! table row is its element of Z_{q^n} (see [`crate::gate`]), the same 16 bytes. A block that is
//! no label of its modulus is rejected on reading. Version 1 held the same bytes but added rows
//! to pads digit-wise; its material is refused.
//!
//! ```text
//! header (44 bytes)
//!   0  magic        8   89 54 47 41 52 42 0D 0A  ("\x89TGARB\r\n")
//!   8  version      u16 2
//!  10  kind         u8  1 = evaluation material (tables and labels), 2 = labels only
//!  11  reserved     u8  0
//!  12  max_chunk    u32 the writer's payload limit; no chunk of the stream is longer
//!  16  garbling_id  16  opaque identifier of the garbling (e.g. its public hash key)
//!  32  first_gate   u64 gate number below which no table of this stream lies
//!  40  crc32        u32 CRC-32 of bytes 0..40
//!
//! chunk (repeated; then one end chunk)
//!   0  tag          u8  1 = projection tables, 2 = labels, 0xFF = end
//!   1  reserved     3   0
//!   4  length       u32 payload bytes, ≤ max_chunk
//!   8  sequence     u64 0, 1, 2, … (the end chunk's is the number of chunks before it)
//!  16  payload      length bytes
//!  16+length crc32  u32 CRC-32 of the chunk's header and payload
//!
//! payload of a tables chunk (tag 1): count gates numbered base_gate..base_gate + count
//!   0  base_gate    u64 ≥ the end of the previous tables chunk (gate numbers never repeat)
//!   8  p            u8  input modulus
//!   9  q            u8  output modulus
//!  10  reserved     2   0
//!  12  count        u32
//!  16  rows         count · (p − 1) rows mod q (blocks below q^n), gate-major, 16 bytes each
//!
//! payload of a labels chunk (tag 2): labels first..first + count of a tensor
//!   0  q            u8  modulus
//!   1  rank         u8  ≤ 16
//!   2  reserved     2   0
//!   4  count        u32
//!   8  first        u64 the tensor's parts come in order: 0, then where the last one ended
//!  16  shape        rank × u64, the whole tensor's shape
//!  16+8·rank labels count labels mod q, 16 bytes each
//!
//! payload of the end chunk (tag 0xFF, 24 bytes)
//!   0  chunks       u64 chunks before the end chunk
//!   8  gates        u64 gates in all tables chunks
//!  16  labels       u64 labels in all labels chunks
//! ```
//!
//! The counts sit in the end marker rather than the header because a streaming writer does not
//! know them when it starts. The reader accepts no chunk longer than the smaller of its own limit
//! and the header's `max_chunk`. Nothing may follow the end chunk. Wrap files in [`std::io::BufWriter`] /
//! [`std::io::BufReader`]: the writer and the reader issue one call per field group.

use crate::GarbleError;
use crate::batch::ProjectionBatch;
use crate::label::Label;
use crate::modulus::Modulus;
use crate::pack::block_of;
use crate::tensor::LabelTensor;
use rayon::prelude::*;
use std::io::{ErrorKind, Read, Write};
use zeroize::Zeroize;

/// The first 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"\x89TGARB\r\n";
/// The format version this build writes and reads.
pub const VERSION: u16 = 2;
/// Bytes of the stream header.
pub const HEADER_LEN: usize = 44;
/// Bytes of a chunk header (before the payload).
pub const CHUNK_HEADER_LEN: usize = 16;
/// The default payload limit of a chunk, for writing and reading: 16 MiB.
pub const DEFAULT_MAX_CHUNK: u32 = 16 << 20;
/// The smallest payload limit a writer accepts.
pub const MIN_MAX_CHUNK: u32 = 64;
/// Row arrays a reader keeps for reuse.
const SPARE_ARRAYS: usize = 4;
/// Rows read, checksummed and range-checked as one piece (4 MiB: the later passes find the
/// piece in cache; at least the evaluator's read buffer, which a read that large bypasses).
const PIECE_ROWS: usize = 1 << 18;
/// The largest tensor rank a labels chunk holds.
pub const MAX_RANK: usize = 16;

const TAG_TABLES: u8 = 1;
const TAG_LABELS: u8 = 2;
const TAG_END: u8 = 0xFF;
const BLOCK: usize = 16;
const TABLES_FIXED: usize = 16;
const LABELS_FIXED: usize = 16;
const END_LEN: usize = 24;

/// What a stream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaterialKind {
    /// Garbled tables and labels: what the evaluator consumes.
    Evaluation,
    /// Labels only (e.g. a tensor of input labels); a tables chunk in it is an error.
    Labels,
}

impl MaterialKind {
    fn byte(self) -> u8 {
        match self {
            Self::Evaluation => 1,
            Self::Labels => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Evaluation),
            2 => Some(Self::Labels),
            _ => None,
        }
    }
}

/// The header of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// What the stream holds.
    pub kind: MaterialKind,
    /// An opaque identifier of the garbling, checked by whoever reads the stream (the public hash
    /// key is a natural choice for evaluation material: the evaluator needs it anyway).
    pub garbling_id: [u8; 16],
    /// No table of the stream has a gate number below this one.
    pub first_gate: u64,
}

/// What a stream held, counted by the writer and checked by the reader against the end marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamTotals {
    /// Chunks before the end marker.
    pub chunks: u64,
    /// Gates in all tables chunks.
    pub gates: u64,
    /// Labels in all labels chunks.
    pub labels: u64,
}

/// One piece of a [`LabelTensor`]: labels `first..first + labels.len()` (flat, label-major) of a
/// tensor of shape `shape`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPart {
    /// The whole tensor's shape.
    pub shape: Vec<usize>,
    /// The index of this part's first label in the whole tensor.
    pub first: usize,
    /// The labels, as a one-dimensional tensor.
    pub labels: LabelTensor,
}

impl LabelPart {
    /// Whether this part ends its tensor.
    pub fn is_last(&self) -> bool {
        shape_len(&self.shape) == Some(self.first.saturating_add(self.labels.len()))
    }
}

/// One chunk of material, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Consecutive gates of a batch (a whole batch when it fit one chunk).
    Tables(ProjectionBatch),
    /// Consecutive labels of a tensor.
    Labels(LabelPart),
}

fn shape_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &s| acc.checked_mul(s))
}

fn io_error(e: std::io::Error) -> GarbleError {
    GarbleError::StreamIo(e.to_string())
}

fn corrupt(msg: String) -> GarbleError {
    GarbleError::StreamCorrupt(msg)
}

fn too_many(what: &str) -> GarbleError {
    GarbleError::StreamFormat(format!(
        "{what} does not fit the stream format (more than 2^64 or a count above 2^32 per chunk)"
    ))
}

/// Writes garbled material chunk by chunk (see the module docs for the layout). Call
/// [`StreamWriter::finish`] at the end: a stream without its end marker reads as truncated.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    inner: W,
    kind: MaterialKind,
    max_chunk: u32,
    next_gate: u64,
    totals: StreamTotals,
    buf: Vec<u8>,
}

impl<W: Write> StreamWriter<W> {
    /// A writer with chunks of at most [`DEFAULT_MAX_CHUNK`] bytes; writes the header.
    pub fn new(inner: W, header: &StreamHeader) -> Result<Self, GarbleError> {
        Self::with_max_chunk(inner, header, DEFAULT_MAX_CHUNK)
    }

    /// A writer with chunks of at most `max_chunk` payload bytes (≥ [`MIN_MAX_CHUNK`]); writes the
    /// header. Readers must accept chunks that large ([`StreamReader::with_max_chunk`]).
    pub fn with_max_chunk(
        mut inner: W,
        header: &StreamHeader,
        max_chunk: u32,
    ) -> Result<Self, GarbleError> {
        if max_chunk < MIN_MAX_CHUNK {
            return Err(GarbleError::StreamFormat(format!(
                "a chunk limit of {max_chunk} bytes is too small: use at least {MIN_MAX_CHUNK}"
            )));
        }
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.push(header.kind.byte());
        h.push(0);
        h.extend_from_slice(&max_chunk.to_le_bytes());
        h.extend_from_slice(&header.garbling_id);
        h.extend_from_slice(&header.first_gate.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        inner.write_all(&h).map_err(io_error)?;
        Ok(Self {
            inner,
            kind: header.kind,
            max_chunk,
            next_gate: header.first_gate,
            totals: StreamTotals::default(),
            buf: Vec::new(),
        })
    }

    /// What has been written so far.
    pub fn totals(&self) -> StreamTotals {
        self.totals
    }

    /// Writes the tables of `batch`, split into chunks. Its gate numbers must lie at or above
    /// the end of the previous batch (and the header's `first_gate`): a garbling never numbers
    /// two gates alike.
    pub fn write_batch(&mut self, batch: &ProjectionBatch) -> Result<(), GarbleError> {
        if self.kind != MaterialKind::Evaluation {
            return Err(GarbleError::StreamFormat(
                "a labels-only stream holds no garbled tables: create it with \
                 MaterialKind::Evaluation"
                    .into(),
            ));
        }
        let base = batch.base_gate();
        if base < self.next_gate {
            return Err(GarbleError::StreamFormat(format!(
                "the batch starts at gate {base}, below gate {} where the stream stands: \
                 batches must be written in gate order and must not overlap",
                self.next_gate
            )));
        }
        let (p, q) = (batch.input(), batch.output());
        let rows_per_gate = usize::from(p.q()) - 1;
        let per_gate = rows_per_gate * BLOCK;
        let room = self.max_chunk as usize - TABLES_FIXED;
        let per_chunk = (room / per_gate).min(u32::MAX as usize);
        if per_chunk == 0 {
            return Err(GarbleError::ChunkTooLarge {
                len: (TABLES_FIXED + per_gate) as u64,
                max: u64::from(self.max_chunk),
            });
        }
        let count = batch.len();
        let end = crate::batch::end_gate(base, count)?;
        let blocks = batch.as_blocks();
        let mut start = 0usize;
        loop {
            let k = per_chunk.min(count - start);
            let gate = crate::batch::end_gate(base, start)?;
            let rows = blocks
                .get(start * rows_per_gate..(start + k) * rows_per_gate)
                .ok_or(GarbleError::Internal("batch rows shorter than its count"))?;
            self.begin_chunk(TAG_TABLES);
            self.buf.extend_from_slice(&gate.to_le_bytes());
            self.buf.extend_from_slice(&[p.q(), q.q(), 0, 0]);
            self.buf.extend_from_slice(&(k as u32).to_le_bytes());
            self.buf.reserve(rows.len() * BLOCK);
            for row in rows {
                self.buf.extend_from_slice(&row.to_le_bytes());
            }
            self.end_chunk()?;
            self.totals.gates = self
                .totals
                .gates
                .checked_add(k as u64)
                .ok_or_else(|| too_many("the number of gates"))?;
            start += k;
            if start >= count {
                break;
            }
        }
        self.next_gate = end;
        Ok(())
    }

    /// Writes the labels of `labels` (with its shape), split into chunks.
    pub fn write_labels(&mut self, labels: &LabelTensor) -> Result<(), GarbleError> {
        let shape = labels.shape();
        if shape.len() > MAX_RANK {
            return Err(GarbleError::StreamFormat(format!(
                "a tensor of rank {} cannot be stored: the format holds ranks up to {MAX_RANK}",
                shape.len()
            )));
        }
        let q = labels.modulus();
        let n = q.digits();
        let fixed = LABELS_FIXED + 8 * shape.len();
        let room = (self.max_chunk as usize).saturating_sub(fixed);
        let per_chunk = (room / BLOCK).min(u32::MAX as usize);
        if per_chunk == 0 {
            return Err(GarbleError::ChunkTooLarge {
                len: (fixed + BLOCK) as u64,
                max: u64::from(self.max_chunk),
            });
        }
        let count = labels.len();
        let digits = labels.as_digits();
        let mut start = 0usize;
        loop {
            let k = per_chunk.min(count - start);
            let part = digits
                .get(start * n..(start + k) * n)
                .ok_or(GarbleError::Internal(
                    "tensor digits shorter than its shape",
                ))?;
            self.begin_chunk(TAG_LABELS);
            self.buf
                .extend_from_slice(&[q.q(), shape.len() as u8, 0, 0]);
            self.buf.extend_from_slice(&(k as u32).to_le_bytes());
            self.buf.extend_from_slice(&(start as u64).to_le_bytes());
            for &d in shape {
                self.buf.extend_from_slice(&(d as u64).to_le_bytes());
            }
            for label in part.chunks_exact(n) {
                self.buf
                    .extend_from_slice(&block_of(q, label).to_le_bytes());
            }
            let written = self.end_chunk();
            // Labels may be secret (zero-labels on the garbler's side): leave no copy behind.
            self.buf.zeroize();
            written?;
            self.totals.labels = self
                .totals
                .labels
                .checked_add(k as u64)
                .ok_or_else(|| too_many("the number of labels"))?;
            start += k;
            if start >= count {
                break;
            }
        }
        Ok(())
    }

    /// Writes the end marker, flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, GarbleError> {
        self.begin_chunk(TAG_END);
        let t = self.totals;
        for v in [t.chunks, t.gates, t.labels] {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.end_chunk()?;
        self.inner.flush().map_err(io_error)?;
        Ok(self.inner)
    }

    fn begin_chunk(&mut self, tag: u8) {
        self.buf.clear();
        self.buf.extend_from_slice(&[tag, 0, 0, 0, 0, 0, 0, 0]);
        self.buf
            .extend_from_slice(&self.totals.chunks.to_le_bytes());
    }

    /// Fills in the length, appends the checksum, writes the chunk and counts it (the end chunk
    /// is counted too, harmlessly: nothing is written after it).
    fn end_chunk(&mut self) -> Result<(), GarbleError> {
        let len = self.buf.len() - CHUNK_HEADER_LEN;
        let len32 = u32::try_from(len)
            .ok()
            .filter(|&l| l <= self.max_chunk)
            .ok_or(GarbleError::Internal("chunk exceeds the writer's limit"))?;
        if let Some(field) = self.buf.get_mut(4..8) {
            field.copy_from_slice(&len32.to_le_bytes());
        }
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.inner.write_all(&self.buf).map_err(io_error)?;
        self.totals.chunks = self
            .totals
            .chunks
            .checked_add(1)
            .ok_or_else(|| too_many("the number of chunks"))?;
        Ok(())
    }
}

/// A tensor whose parts are being read: its shape and modulus, and where the next part starts.
#[derive(Debug)]
struct OpenTensor {
    shape: Vec<usize>,
    modulus: Modulus,
    next: usize,
    total: usize,
}

/// Reads garbled material chunk by chunk, checking everything (see the module docs). Memory is
/// bounded by one chunk: a length field above the limit is refused before anything is
/// allocated. Also an [`Iterator`] over the chunks, which stops after the first error.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    inner: R,
    header: StreamHeader,
    max_chunk: u32,
    next_gate: u64,
    totals: StreamTotals,
    open: Option<OpenTensor>,
    /// Set once the end marker was read, or after an error.
    done: bool,
    failed: bool,
    /// Row arrays handed back by the evaluator ([`StreamReader::recycle`]; at most
    /// [`SPARE_ARRAYS`]), reused for the next tables chunks: no fresh pages to fault in and
    /// zero, chunk after chunk.
    spare: Vec<Vec<u128>>,
}

impl<R: Read> StreamReader<R> {
    /// A reader accepting chunks of up to [`DEFAULT_MAX_CHUNK`] bytes; reads and checks the
    /// header.
    pub fn new(inner: R) -> Result<Self, GarbleError> {
        Self::with_max_chunk(inner, DEFAULT_MAX_CHUNK)
    }

    /// A reader accepting chunks of up to `max_chunk` payload bytes; reads and checks the header.
    pub fn with_max_chunk(mut inner: R, max_chunk: u32) -> Result<Self, GarbleError> {
        let mut h = [0u8; HEADER_LEN];
        read_exact(&mut inner, &mut h, "the header")?;
        let (body, crc) = h.split_at(HEADER_LEN - 4);
        if body.get(..8) != Some(&MAGIC[..]) {
            return Err(GarbleError::StreamFormat(
                "not tessera garbled material (the magic bytes are wrong): check the file's path"
                    .into(),
            ));
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != VERSION {
            return Err(GarbleError::StreamFormat(format!(
                "garbled material of format version {version}, but this build reads version \
                 {VERSION}: garble it again with this build, or read it with a matching one"
            )));
        }
        if crc32fast::hash(body) != le_u32(crc) {
            return Err(corrupt("the header's checksum does not match".into()));
        }
        let kind = MaterialKind::from_byte(h[10])
            .ok_or_else(|| corrupt(format!("unknown material kind {} in the header", h[10])))?;
        if h[11] != 0 {
            return Err(corrupt("a reserved header byte is not zero".into()));
        }
        let declared = le_u32(&h[12..16]);
        let mut garbling_id = [0u8; 16];
        garbling_id.copy_from_slice(&h[16..32]);
        let first_gate = le_u64(&h[32..40]);
        Ok(Self {
            inner,
            header: StreamHeader {
                kind,
                garbling_id,
                first_gate,
            },
            max_chunk: max_chunk.min(declared),
            next_gate: first_gate,
            totals: StreamTotals::default(),
            open: None,
            done: false,
            failed: false,
            spare: Vec::new(),
        })
    }

    /// Hands back the rows of a batch this reader produced, once evaluated, for the next tables
    /// chunk to be read into (tables are public: nothing to clear).
    pub(crate) fn recycle(&mut self, rows: Vec<u128>) {
        if self.spare.len() < SPARE_ARRAYS {
            self.spare.push(rows);
        }
    }

    /// The stream's header.
    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// What has been read so far (after the end marker: the whole stream's totals, checked).
    pub fn totals(&self) -> StreamTotals {
        self.totals
    }

    /// The next chunk, or `None` after the end marker (checked, with nothing after it).
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, GarbleError> {
        if self.failed {
            return Err(corrupt("an earlier error ended this stream".into()));
        }
        if self.done {
            return Ok(None);
        }
        let r = self.read_chunk();
        match &r {
            Err(_) => self.failed = true,
            Ok(None) => self.done = true,
            Ok(Some(_)) => {}
        }
        r
    }

    /// The next whole tensor of labels, assembled from its parts (it must fit in memory; read
    /// [`Chunk::Labels`] parts with [`StreamReader::next_chunk`] otherwise). Errors when the next
    /// chunk is not the first part of a tensor.
    pub fn read_labels(&mut self) -> Result<LabelTensor, GarbleError> {
        let mut digits = Vec::new();
        let mut shape_and_modulus = None;
        loop {
            let part = match self.next_chunk()? {
                Some(Chunk::Labels(part)) => part,
                Some(Chunk::Tables(_)) => {
                    return Err(GarbleError::StreamFormat(
                        "expected labels, found garbled tables: read the stream's chunks in the \
                         order they were written"
                            .into(),
                    ));
                }
                None => {
                    return Err(GarbleError::StreamFormat(
                        "expected labels, but the stream has ended".into(),
                    ));
                }
            };
            if shape_and_modulus.is_none() && part.first != 0 {
                return Err(GarbleError::StreamFormat(format!(
                    "expected the start of a tensor, found its part from label {}",
                    part.first
                )));
            }
            digits.extend_from_slice(part.labels.as_digits());
            let last = part.is_last();
            shape_and_modulus = Some((part.shape, part.labels.modulus()));
            if last {
                break;
            }
        }
        let (shape, modulus) =
            shape_and_modulus.ok_or(GarbleError::Internal("no labels part was read"))?;
        LabelTensor::from_digits(modulus, &shape, digits)
    }

    fn read_chunk(&mut self) -> Result<Option<Chunk>, GarbleError> {
        let seq = self.totals.chunks;
        let mut head = [0u8; CHUNK_HEADER_LEN];
        read_exact(
            &mut self.inner,
            &mut head,
            &format!("the header of chunk {seq} (the end marker is missing)"),
        )?;
        let len = le_u32(&head[4..8]);
        if len > self.max_chunk {
            return Err(GarbleError::ChunkTooLarge {
                len: u64::from(len),
                max: u64::from(self.max_chunk),
            });
        }
        let inside = format!("chunk {seq}");
        // Garbled rows (nearly all of the material) are read straight into the row array the
        // evaluator uses: one copy out of the reader, no growing buffer, no second pass. After
        // the first chunk the array is the one the evaluator handed back; a length claimed but
        // never sent costs at most one array of `max_chunk` bytes, checked above.
        let direct = (head[0] == TAG_TABLES)
            .then(|| (len as usize).checked_sub(TABLES_FIXED))
            .flatten()
            .filter(|r| r % BLOCK == 0);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head);
        // For direct rows: whether every row is a label mod the chunk's output modulus, checked
        // piece by piece while the piece is still in cache (None: not checked here).
        let mut rows_in_range = None;
        let (mut payload, mut rows) = match direct {
            Some(row_bytes) => {
                let mut fixed = vec![0u8; TABLES_FIXED];
                read_exact(&mut self.inner, &mut fixed, &inside)?;
                hasher.update(&fixed);
                // The output modulus as the fixed part names it (parse_tables checks it again and
                // reports a bad one).
                let out = fixed.get(9).and_then(|&q| Modulus::new(u64::from(q)).ok());
                // Every row is overwritten by the read: a recycled array only needs the length.
                let mut rows = self.spare.pop().unwrap_or_default();
                rows.resize(row_bytes / BLOCK, 0);
                let mut ok = true;
                for piece in rows.chunks_mut(PIECE_ROWS) {
                    read_exact(&mut self.inner, bytemuck::cast_slice_mut(piece), &inside)?;
                    hasher.update(bytemuck::cast_slice(piece));
                    if let Some(m) = out {
                        ok &= piece
                            .iter()
                            .fold(true, |all, &r| all & m.holds_block(u128::from_le(r)));
                    }
                }
                rows_in_range = out.map(|_| ok);
                (fixed, Some(rows))
            }
            None => {
                // Read through `take` so that the buffer grows only as bytes actually arrive.
                let mut payload = Vec::with_capacity((len as usize).min(1 << 16));
                (&mut self.inner)
                    .take(u64::from(len))
                    .read_to_end(&mut payload)
                    .map_err(io_error)?;
                if payload.len() != len as usize {
                    return Err(GarbleError::StreamTruncated(format!(
                        "the stream ends inside {inside}"
                    )));
                }
                hasher.update(&payload);
                (payload, None)
            }
        };
        let mut crc = [0u8; 4];
        read_exact(
            &mut self.inner,
            &mut crc,
            &format!("the checksum of chunk {seq}"),
        )?;
        if hasher.finalize() != u32::from_le_bytes(crc) {
            payload.zeroize();
            rows.zeroize();
            return Err(corrupt(format!("chunk {seq}'s checksum does not match")));
        }
        if head[1..4] != [0, 0, 0] {
            return Err(corrupt(format!("chunk {seq} has non-zero reserved bytes")));
        }
        let got = le_u64(&head[8..16]);
        if got != seq {
            return Err(corrupt(format!(
                "chunk {got} found where chunk {seq} belongs (chunks were lost, duplicated or \
                 reordered)"
            )));
        }
        let chunk = match head[0] {
            TAG_TABLES => self
                .parse_tables(seq, &payload, rows, rows_in_range)
                .map(Chunk::Tables),
            TAG_LABELS => {
                let r = self.parse_labels(seq, &payload).map(Chunk::Labels);
                payload.zeroize();
                r
            }
            TAG_END => return self.parse_end(seq, &payload).map(|()| None),
            tag => Err(corrupt(format!("chunk {seq} has unknown kind {tag}"))),
        }?;
        self.totals.chunks = seq
            .checked_add(1)
            .ok_or_else(|| corrupt("more than 2^64 chunks".into()))?;
        Ok(Some(chunk))
    }

    /// The tables of a chunk from its payload, or from its fixed part and the rows already read
    /// as blocks (`direct`, stored little-endian). `in_range`: whether the rows were already
    /// checked to be labels mod the output modulus while they were read, and the answer.
    fn parse_tables(
        &mut self,
        seq: u64,
        payload: &[u8],
        direct: Option<Vec<u128>>,
        in_range: Option<bool>,
    ) -> Result<ProjectionBatch, GarbleError> {
        if self.header.kind != MaterialKind::Evaluation {
            return Err(corrupt(format!(
                "chunk {seq} holds garbled tables, but the header declares labels only"
            )));
        }
        let (fixed, rest) = split(payload, TABLES_FIXED)
            .ok_or_else(|| corrupt(format!("chunk {seq} is too short for garbled tables")))?;
        let row_bytes = direct.as_ref().map_or(rest.len(), |r| r.len() * BLOCK);
        let base = le_u64(&fixed[0..8]);
        let p = modulus(seq, fixed[8])?;
        let q = modulus(seq, fixed[9])?;
        if fixed[10..12] != [0, 0] {
            return Err(corrupt(format!("chunk {seq} has non-zero reserved bytes")));
        }
        let count = le_u32(&fixed[12..16]) as usize;
        let blocks = count
            .checked_mul(usize::from(p.q()) - 1)
            .filter(|&b| b.checked_mul(BLOCK) == Some(row_bytes))
            .ok_or_else(|| {
                corrupt(format!(
                    "chunk {seq} declares {count} gates mod {} but holds {row_bytes} bytes of rows",
                    p.q(),
                ))
            })?;
        if base < self.next_gate {
            return Err(corrupt(format!(
                "chunk {seq}'s tables start at gate {base}, below gate {} where the stream \
                 stands (gate numbers repeat)",
                self.next_gate
            )));
        }
        let end = crate::batch::end_gate(base, count)
            .map_err(|_| corrupt(format!("chunk {seq}'s gate numbers overflow")))?;
        // ProjectionBatch::new checks every row is a label mod q, in one branch-free pass.
        let rows: Vec<u128> = match direct {
            // A no-op on little-endian machines.
            Some(r) => r.into_iter().map(u128::from_le).collect(),
            None => rest
                .chunks_exact(BLOCK)
                .take(blocks)
                .map(|b| u128::from_le_bytes(<[u8; BLOCK]>::try_from(b).unwrap_or_default()))
                .collect(),
        };
        let batch = match in_range {
            Some(ok) => ProjectionBatch::with_rows_checked(base, p, q, count, rows, ok),
            None => ProjectionBatch::new(base, p, q, count, rows),
        };
        let batch = batch.map_err(|e| match e {
            GarbleError::BlockOutOfRange { q } => corrupt(format!(
                "chunk {seq} holds a 16-byte row that is no label mod {q}"
            )),
            e => corrupt(format!("chunk {seq}: {e}")),
        })?;
        self.next_gate = end;
        self.totals.gates = self
            .totals
            .gates
            .checked_add(count as u64)
            .ok_or_else(|| corrupt("more than 2^64 gates".into()))?;
        Ok(batch)
    }

    fn parse_labels(&mut self, seq: u64, payload: &[u8]) -> Result<LabelPart, GarbleError> {
        let (fixed, rest) = split(payload, LABELS_FIXED)
            .ok_or_else(|| corrupt(format!("chunk {seq} is too short for labels")))?;
        let q = modulus(seq, fixed[0])?;
        let rank = usize::from(fixed[1]);
        if fixed[2..4] != [0, 0] {
            return Err(corrupt(format!("chunk {seq} has non-zero reserved bytes")));
        }
        if rank > MAX_RANK {
            return Err(corrupt(format!(
                "chunk {seq} declares rank {rank}, above the format's {MAX_RANK}"
            )));
        }
        let count = le_u32(&fixed[4..8]) as usize;
        let first = usize::try_from(le_u64(&fixed[8..16]))
            .map_err(|_| corrupt(format!("chunk {seq}'s first label index overflows")))?;
        let (dims, blocks) = split(rest, 8 * rank)
            .ok_or_else(|| corrupt(format!("chunk {seq} is too short for its shape")))?;
        let shape: Vec<usize> = dims
            .chunks_exact(8)
            .map(|d| usize::try_from(le_u64(d)))
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt(format!("chunk {seq}'s shape overflows")))?;
        let total =
            shape_len(&shape).ok_or_else(|| corrupt(format!("chunk {seq}'s shape overflows")))?;
        if count.checked_mul(BLOCK) != Some(blocks.len()) {
            return Err(corrupt(format!(
                "chunk {seq} declares {count} labels but holds {} bytes of them",
                blocks.len()
            )));
        }
        let end = first
            .checked_add(count)
            .filter(|&e| e <= total)
            .ok_or_else(|| {
                corrupt(format!(
                    "chunk {seq} holds labels {first}..{first}+{count} of a tensor of {total}"
                ))
            })?;
        // Parts of one tensor come in order, and a new tensor starts only after the last one.
        match &self.open {
            Some(open) if open.shape != shape || open.modulus != q || open.next != first => {
                return Err(corrupt(format!(
                    "chunk {seq} does not continue the tensor being read (label {} of {} was \
                     expected next)",
                    open.next, open.total
                )));
            }
            Some(_) => {}
            None if first != 0 => {
                return Err(corrupt(format!(
                    "chunk {seq} continues a tensor from label {first}, but none was started"
                )));
            }
            None => {}
        }
        self.open = (end < total).then(|| OpenTensor {
            shape: shape.clone(),
            modulus: q,
            next: end,
            total,
        });
        let digits = blocks_to_digits(seq, q, blocks, count)?;
        let labels = LabelTensor::from_digits(q, &[count], digits)
            .map_err(|e| corrupt(format!("chunk {seq}: {e}")))?;
        self.totals.labels = self
            .totals
            .labels
            .checked_add(count as u64)
            .ok_or_else(|| corrupt("more than 2^64 labels".into()))?;
        Ok(LabelPart {
            shape,
            first,
            labels,
        })
    }

    fn parse_end(&mut self, seq: u64, payload: &[u8]) -> Result<(), GarbleError> {
        if payload.len() != END_LEN {
            return Err(corrupt(format!(
                "the end marker holds {} bytes instead of {END_LEN}",
                payload.len()
            )));
        }
        if let Some(open) = &self.open {
            return Err(corrupt(format!(
                "the stream ends inside a tensor (after label {} of {})",
                open.next, open.total
            )));
        }
        let declared = StreamTotals {
            chunks: le_u64(&payload[0..8]),
            gates: le_u64(&payload[8..16]),
            labels: le_u64(&payload[16..24]),
        };
        let read = StreamTotals {
            chunks: seq,
            ..self.totals
        };
        if declared != read {
            return Err(corrupt(format!(
                "the end marker counts {declared:?} but the stream held {read:?}"
            )));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.inner.read(&mut extra) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(corrupt("bytes follow the end marker".into())),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

impl<R: Read> Iterator for StreamReader<R> {
    type Item = Result<Chunk, GarbleError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.next_chunk().transpose()
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), GarbleError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            GarbleError::StreamTruncated(format!("the stream ends inside {what}"))
        } else {
            io_error(e)
        }
    })
}

fn split(b: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (b.len() >= at).then(|| b.split_at(at))
}

/// Little-endian u32 of the first 4 bytes (callers pass slices of fixed, checked length).
fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_le_bytes(a)
}

/// Little-endian u64 of the first 8 bytes (callers pass slices of fixed, checked length).
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(a)
}

fn modulus(seq: u64, q: u8) -> Result<Modulus, GarbleError> {
    Modulus::new(u64::from(q)).map_err(|e| corrupt(format!("chunk {seq} names a bad modulus: {e}")))
}

/// `count` 16-byte blocks, each checked to be a label mod q, as flat digits.
fn blocks_to_digits(
    seq: u64,
    q: Modulus,
    blocks: &[u8],
    count: usize,
) -> Result<Vec<u8>, GarbleError> {
    let n = q.digits();
    let blocks = blocks
        .get(..count.saturating_mul(BLOCK))
        .ok_or_else(|| corrupt(format!("chunk {seq} holds fewer blocks than its count")))?;
    let mut digits = vec![0u8; count.saturating_mul(n)];
    // Unpacking a block into digits is a base conversion: spread it over the cores.
    digits
        .par_chunks_mut(n)
        .zip(blocks.par_chunks_exact(BLOCK))
        .with_min_len(1024)
        .try_for_each(|(d, b)| {
            let mut a = [0u8; BLOCK];
            a.copy_from_slice(b);
            let mut label = Label::from_block(q, u128::from_le_bytes(a)).map_err(|_| {
                corrupt(format!(
                    "chunk {seq} holds a 16-byte block that is no label mod {}",
                    q.q()
                ))
            })?;
            d.copy_from_slice(label.digits());
            label.zeroize();
            a.zeroize();
            Ok(())
        })?;
    Ok(digits)
}
