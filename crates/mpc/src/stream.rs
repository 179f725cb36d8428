//! Garbled material as a stream of checksummed chunks (a sibling of `tessera_garble::store`'s
//! format for boolean circuits): the garbler writes blocks in gate order — two per AND gate, one
//! per constant — and the evaluator reads them back in the same order, neither holding more
//! than one chunk.
//!
//! ```text
//! header (36 bytes)
//!   0  magic      8   89 54 42 4F 4F 4C 0D 0A ("\x89TBOOL\r\n")
//!   8  version    u16 1
//!  10  reserved   u16 0
//!  12  max_chunk  u32 payload limit of every chunk (a multiple of 16)
//!  16  hash_key   16  the public AES key of the garbling's hash
//!  32  crc32      u32 of bytes 0..32
//! chunk (repeated, then one end chunk)
//!   0  tag        u8  1 = blocks, 0xFF = end
//!   1  reserved   3
//!   4  length     u32 payload bytes (a multiple of 16, ≤ max_chunk; 8 for the end chunk)
//!   8  sequence   u64 0, 1, 2, …
//!  16  payload    blocks (16 bytes each, little-endian); the end chunk: total blocks, u64
//!  16+length crc32 of the chunk's header and payload
//! ```
//!
//! The CRCs catch accidental damage only (anyone can recompute them); tampering by an evaluator
//! is caught by the garbler's output check. Nothing read can make the reader allocate more than
//! `max_chunk` bytes or panic.

use crate::MpcError;
use crate::block::Block;
use std::io::{Read, Write};

const MAGIC: &[u8; 8] = b"\x89TBOOL\r\n";
const VERSION: u16 = 1;
const TAG_BLOCKS: u8 = 1;
const TAG_END: u8 = 0xFF;
/// The default payload limit of a chunk (1 MiB).
pub const DEFAULT_MAX_CHUNK: u32 = 1 << 20;

/// Where a garbler puts its material.
pub trait TableSink {
    /// Start a garbling with this public hash key.
    fn begin(&mut self, hash_key: [u8; 16]) -> Result<(), MpcError>;
    /// One AND gate's two rows.
    fn and_table(&mut self, tg: Block, te: Block) -> Result<(), MpcError>;
    /// One constant's active label.
    fn constant(&mut self, label: Block) -> Result<(), MpcError>;
    /// The garbling is complete.
    fn finish(&mut self) -> Result<(), MpcError>;
}

/// Where an evaluator reads material from.
pub trait TableSource {
    /// Start; returns the public hash key.
    fn begin(&mut self) -> Result<[u8; 16], MpcError>;
    /// The next AND gate's rows.
    fn and_table(&mut self) -> Result<(Block, Block), MpcError>;
    /// The next constant's label.
    fn constant(&mut self) -> Result<Block, MpcError>;
    /// Everything was read: the end marker must follow and agree.
    fn finish(&mut self) -> Result<(), MpcError>;
}

fn io(e: std::io::Error) -> MpcError {
    MpcError::Stream(format!("I/O: {e}"))
}

/// Check the 36-byte header; returns the chunk limit and the hash key.
fn parse_header(h: &[u8]) -> Result<(u32, [u8; 16]), MpcError> {
    let (Some(magic), Some(version), Some(max), Some(key), Some(crc)) = (
        h.get(..8),
        h.get(8..10),
        h.get(12..16),
        h.get(16..32),
        h.get(32..36),
    ) else {
        return Err(MpcError::Stream(
            "the material ends inside the header (truncated)".into(),
        ));
    };
    if magic != MAGIC {
        return Err(MpcError::Stream(
            "not boolean garbled material (bad magic)".into(),
        ));
    }
    if crc32fast::hash(&h[..32]).to_le_bytes() != crc {
        return Err(MpcError::Stream(
            "the header fails its checksum (damaged)".into(),
        ));
    }
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != VERSION {
        return Err(MpcError::Stream(format!(
            "format version {version}; this build reads {VERSION}"
        )));
    }
    let max_chunk = u32::from_le_bytes([max[0], max[1], max[2], max[3]]);
    if !max_chunk.is_multiple_of(16) || !(32..=64 << 20).contains(&max_chunk) {
        return Err(MpcError::Stream(format!(
            "chunk limit {max_chunk} is not a whole number of blocks up to 64 MiB"
        )));
    }
    let mut k = [0u8; 16];
    k.copy_from_slice(key);
    Ok((max_chunk, k))
}

/// Check a chunk header against the format and the expected sequence number; returns its tag
/// and payload length.
fn chunk_head(head: &[u8; 16], max_chunk: u32, want_seq: u64) -> Result<(u8, u32), MpcError> {
    let tag = head[0];
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&head[8..16]);
    let seq = u64::from_le_bytes(s);
    let (max, whole) = match tag {
        TAG_BLOCKS => (max_chunk, len.is_multiple_of(16) && len > 0),
        TAG_END => (8, len == 8),
        t => return Err(MpcError::Stream(format!("unknown chunk tag {t}"))),
    };
    if len > max || !whole {
        return Err(MpcError::Stream(format!(
            "a chunk of {len} bytes (tag {tag}) does not fit the format"
        )));
    }
    if seq != want_seq {
        return Err(MpcError::Stream(format!(
            "chunk {seq} where {want_seq} was expected (reordered or dropped)"
        )));
    }
    Ok((tag, len))
}

/// Check a chunk's CRC over its header and payload.
fn check_crc(head: &[u8], payload: &[u8], crc: &[u8], seq: u64) -> Result<(), MpcError> {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    if h.finalize().to_le_bytes() != crc {
        return Err(MpcError::Stream(format!(
            "chunk {seq} fails its checksum (damaged)"
        )));
    }
    Ok(())
}

/// The block count an end chunk's 8-byte payload carries.
fn end_total(payload: &[u8]) -> u64 {
    let mut t = [0u8; 8];
    if let Some(p) = payload.get(..8) {
        t.copy_from_slice(p);
    }
    u64::from_le_bytes(t)
}

/// Writes material in chunks to `W`.
pub struct StreamWriter<W: Write> {
    inner: W,
    max_chunk: u32,
    buf: Vec<u8>,
    seq: u64,
    blocks: u64,
}

impl<W: Write> StreamWriter<W> {
    /// A writer with the default chunk size.
    pub fn new(inner: W) -> Self {
        Self::with_max_chunk(inner, DEFAULT_MAX_CHUNK)
    }

    /// A writer whose chunks carry at most `max_chunk` bytes (rounded down to whole blocks, at
    /// least 32: one AND table).
    pub fn with_max_chunk(inner: W, max_chunk: u32) -> Self {
        let max_chunk = (max_chunk / 16 * 16).max(32);
        Self {
            inner,
            max_chunk,
            buf: Vec::with_capacity(max_chunk as usize),
            seq: 0,
            blocks: 0,
        }
    }

    fn flush_chunk(&mut self, tag: u8) -> Result<(), MpcError> {
        let mut head = [0u8; 16];
        head[0] = tag;
        head[4..8].copy_from_slice(&(self.buf.len() as u32).to_le_bytes());
        head[8..16].copy_from_slice(&self.seq.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&self.buf);
        self.inner.write_all(&head).map_err(io)?;
        self.inner.write_all(&self.buf).map_err(io)?;
        self.inner
            .write_all(&crc.finalize().to_le_bytes())
            .map_err(io)?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }

    fn push(&mut self, b: Block) -> Result<(), MpcError> {
        if self.buf.len() + 16 > self.max_chunk as usize {
            self.flush_chunk(TAG_BLOCKS)?;
        }
        self.buf.extend_from_slice(&b.to_bytes());
        self.blocks += 1;
        Ok(())
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> TableSink for StreamWriter<W> {
    fn begin(&mut self, hash_key: [u8; 16]) -> Result<(), MpcError> {
        let mut h = Vec::with_capacity(36);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.max_chunk.to_le_bytes());
        h.extend_from_slice(&hash_key);
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        self.inner.write_all(&h).map_err(io)
    }

    fn and_table(&mut self, tg: Block, te: Block) -> Result<(), MpcError> {
        if self.buf.len() + 32 > self.max_chunk as usize {
            self.flush_chunk(TAG_BLOCKS)?;
        }
        self.push(tg)?;
        self.push(te)
    }

    fn constant(&mut self, label: Block) -> Result<(), MpcError> {
        self.push(label)
    }

    fn finish(&mut self) -> Result<(), MpcError> {
        if !self.buf.is_empty() {
            self.flush_chunk(TAG_BLOCKS)?;
        }
        self.buf.extend_from_slice(&self.blocks.to_le_bytes());
        self.flush_chunk(TAG_END)?;
        self.inner.flush().map_err(io)
    }
}

/// Reads material written by [`StreamWriter`].
pub struct StreamReader<R: Read> {
    inner: R,
    max_chunk: u32,
    buf: Vec<u8>,
    pos: usize,
    seq: u64,
    blocks: u64,
    ended: Option<u64>,
}

impl<R: Read> StreamReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            max_chunk: 0,
            buf: Vec::new(),
            pos: 0,
            seq: 0,
            blocks: 0,
            ended: None,
        }
    }

    fn read_exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>, MpcError> {
        let mut v = vec![0u8; n];
        self.inner.read_exact(&mut v).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                MpcError::Stream(format!("the material ends inside {what} (truncated)"))
            }
            _ => io(e),
        })?;
        Ok(v)
    }

    fn next_chunk(&mut self) -> Result<(), MpcError> {
        if self.ended.is_some() {
            return Err(MpcError::Stream(
                "the material ended before the circuit did".into(),
            ));
        }
        let head = self.read_exact(16, "a chunk header")?;
        let mut h = [0u8; 16];
        h.copy_from_slice(&head);
        let (tag, len) = chunk_head(&h, self.max_chunk, self.seq)?;
        let payload = self.read_exact(len as usize, "a chunk")?;
        let crc = self.read_exact(4, "a chunk's checksum")?;
        check_crc(&h, &payload, &crc, self.seq)?;
        self.seq += 1;
        if tag == TAG_END {
            self.ended = Some(end_total(&payload));
            self.buf.clear();
            self.pos = 0;
        } else {
            self.buf = payload;
            self.pos = 0;
        }
        Ok(())
    }

    fn block(&mut self) -> Result<Block, MpcError> {
        while self.pos >= self.buf.len() {
            self.next_chunk()?;
            if self.ended.is_some() {
                return Err(MpcError::Stream(
                    "the material ended before the circuit did".into(),
                ));
            }
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.buf[self.pos..self.pos + 16]);
        self.pos += 16;
        self.blocks += 1;
        Ok(Block::from_bytes(b))
    }
}

impl<R: Read> TableSource for StreamReader<R> {
    fn begin(&mut self) -> Result<[u8; 16], MpcError> {
        let h = self.read_exact(36, "the header")?;
        let (max_chunk, key) = parse_header(&h)?;
        self.max_chunk = max_chunk;
        Ok(key)
    }

    fn and_table(&mut self) -> Result<(Block, Block), MpcError> {
        Ok((self.block()?, self.block()?))
    }

    fn constant(&mut self) -> Result<Block, MpcError> {
        self.block()
    }

    fn finish(&mut self) -> Result<(), MpcError> {
        if self.pos < self.buf.len() {
            return Err(MpcError::Stream(
                "material left over after the circuit's last gate".into(),
            ));
        }
        if self.ended.is_none() {
            self.next_chunk()?;
        }
        match self.ended {
            Some(total) if total == self.blocks => Ok(()),
            Some(total) => Err(MpcError::Stream(format!(
                "the end marker counts {total} blocks, {} were read (material left over or missing)",
                self.blocks
            ))),
            None => Err(MpcError::Stream(
                "material left over after the circuit's last gate".into(),
            )),
        }
    }
}

/// Where one chunk of a [`SliceMaterial`] lies.
#[derive(Clone, Copy, Debug)]
struct ChunkAt {
    /// Offset of its 16-byte header in the material.
    head: usize,
    /// Payload bytes.
    len: usize,
    /// Number of its first block in the whole material.
    first: u64,
}

/// Material held in memory, indexed so that a reader can start at any block: the parallel
/// evaluator's parts each start reading at their own first table. Opening walks the chunk
/// headers (format, sequence, lengths, the end chunk's count, nothing after it); each chunk's
/// checksum is verified by the reader that enters it.
#[derive(Debug)]
pub struct SliceMaterial<'a> {
    bytes: &'a [u8],
    hash_key: [u8; 16],
    chunks: Vec<ChunkAt>,
    blocks: u64,
}

impl<'a> SliceMaterial<'a> {
    /// Index the material in `bytes`.
    pub fn open(bytes: &'a [u8]) -> Result<Self, MpcError> {
        let (max_chunk, hash_key) = parse_header(bytes)?;
        let mut at = 36;
        let mut chunks = Vec::new();
        let mut blocks = 0u64;
        loop {
            let seq = chunks.len() as u64;
            let head: &[u8; 16] = bytes
                .get(at..at + 16)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    MpcError::Stream("the material ends inside a chunk header (truncated)".into())
                })?;
            let (tag, len) = chunk_head(head, max_chunk, seq)?;
            let len = len as usize;
            let end = at + 16 + len + 4;
            if end > bytes.len() {
                return Err(MpcError::Stream(
                    "the material ends inside a chunk (truncated)".into(),
                ));
            }
            if tag == TAG_END {
                let payload = &bytes[at + 16..at + 16 + len];
                check_crc(head, payload, &bytes[at + 16 + len..end], seq)?;
                let total = end_total(payload);
                if total != blocks {
                    return Err(MpcError::Stream(format!(
                        "the end marker counts {total} blocks, the chunks hold {blocks}"
                    )));
                }
                if end != bytes.len() {
                    return Err(MpcError::Stream(format!(
                        "{} bytes after the end chunk",
                        bytes.len() - end
                    )));
                }
                break;
            }
            chunks.push(ChunkAt {
                head: at,
                len,
                first: blocks,
            });
            blocks += len as u64 / 16;
            at = end;
        }
        Ok(Self {
            bytes,
            hash_key,
            chunks,
            blocks,
        })
    }

    /// The garbling's public hash key.
    pub fn hash_key(&self) -> [u8; 16] {
        self.hash_key
    }

    /// Blocks in the material.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// A reader whose first block is block `first` of the material.
    pub fn reader_at(&self, first: u64) -> Result<SliceReader<'_, 'a>, MpcError> {
        if first > self.blocks {
            return Err(MpcError::Stream(format!(
                "block {first} is beyond the material's {}",
                self.blocks
            )));
        }
        let chunk = self.chunks.partition_point(|c| c.first <= first);
        let mut r = SliceReader {
            m: self,
            chunk: chunk.saturating_sub(1),
            pos: 0,
            payload: &[],
        };
        if let Some(c) = self.chunks.get(r.chunk) {
            r.enter()?;
            r.pos = ((first - c.first) * 16) as usize;
        }
        Ok(r)
    }
}

/// Reads blocks of a [`SliceMaterial`] from some block on, verifying each chunk it enters.
pub struct SliceReader<'m, 'a> {
    m: &'m SliceMaterial<'a>,
    chunk: usize,
    pos: usize,
    payload: &'a [u8],
}

impl SliceReader<'_, '_> {
    /// Verify the checksum of the current chunk and make its payload current.
    fn enter(&mut self) -> Result<(), MpcError> {
        let c =
            self.m.chunks.get(self.chunk).ok_or_else(|| {
                MpcError::Stream("the material ended before the circuit did".into())
            })?;
        let (head, payload, crc) = (
            &self.m.bytes[c.head..c.head + 16],
            &self.m.bytes[c.head + 16..c.head + 16 + c.len],
            &self.m.bytes[c.head + 16 + c.len..c.head + 20 + c.len],
        );
        check_crc(head, payload, crc, self.chunk as u64)?;
        self.payload = payload;
        self.pos = 0;
        Ok(())
    }

    #[inline]
    fn block(&mut self) -> Result<Block, MpcError> {
        if self.pos >= self.payload.len() {
            self.chunk += 1;
            self.enter()?;
        }
        let b: [u8; 16] = self
            .payload
            .get(self.pos..self.pos + 16)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| MpcError::Stream("a chunk ends inside a block".into()))?;
        self.pos += 16;
        Ok(Block::from_bytes(b))
    }
}

impl TableSource for SliceReader<'_, '_> {
    fn begin(&mut self) -> Result<[u8; 16], MpcError> {
        Ok(self.m.hash_key)
    }

    fn and_table(&mut self) -> Result<(Block, Block), MpcError> {
        Ok((self.block()?, self.block()?))
    }

    fn constant(&mut self) -> Result<Block, MpcError> {
        self.block()
    }

    /// The material's block count was checked against the circuit's when it was opened, so a
    /// reader that read its part's blocks has nothing more to check.
    fn finish(&mut self) -> Result<(), MpcError> {
        Ok(())
    }
}
