//! Length-prefixed frames: the unit every tessera channel reads and writes.
//!
//! Wire layout of one frame (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | `len`: length of everything after this field (kind + seq + payload), at least 5 |
//! | 1 | `kind`: 0 = hello, 1 = message, 2 = error |
//! | 4 | `seq`: the sender's frame counter, starting at 0 and increasing by one per frame |
//! | `len − 5` | payload |
//!
//! A reader refuses a `len` above its maximum before allocating anything, an unknown kind, and
//! a sequence number other than the one it expects (see [`crate::Channel`]).

use crate::RuntimeError;
use std::io::{self, Read, Write};

/// Bytes of the frame header (length, kind, sequence number).
pub const HEADER_BYTES: usize = 9;

/// Default largest frame payload a channel accepts: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// The version handshake.
    Hello,
    /// A protocol message (postcard-encoded).
    Message,
    /// The peer reports an error (UTF-8 text) and will close the connection.
    Error,
}

impl FrameKind {
    fn byte(self) -> u8 {
        match self {
            FrameKind::Hello => 0,
            FrameKind::Message => 1,
            FrameKind::Error => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(FrameKind::Hello),
            1 => Some(FrameKind::Message),
            2 => Some(FrameKind::Error),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// Sender's sequence number.
    pub seq: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Map an I/O error of a read to the runtime's error: a timeout is a deadline miss, an early
/// end of stream is a closed connection.
pub(crate) fn read_error(e: io::Error, what: &str) -> RuntimeError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RuntimeError::Timeout(what.into()),
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => RuntimeError::Closed(format!("{what}: {e}")),
        _ => RuntimeError::Io(format!("{what}: {e}")),
    }
}

/// Read one frame, refusing a payload longer than `max` before allocating it.
pub fn read_frame(r: &mut dyn Read, max: usize) -> Result<Frame, RuntimeError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| read_error(e, "reading a frame header"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len < HEADER_BYTES - 4 {
        return Err(RuntimeError::Malformed(format!(
            "frame length {len} is shorter than its 5-byte kind and sequence fields"
        )));
    }
    let payload_len = len - (HEADER_BYTES - 4);
    if payload_len > max {
        return Err(RuntimeError::FrameTooLarge {
            len: payload_len,
            max,
        });
    }
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .map_err(|e| read_error(e, "reading a frame header"))?;
    let kind = FrameKind::from_byte(head[0]).ok_or_else(|| {
        RuntimeError::Malformed(format!(
            "unknown frame kind {} (expected 0, 1 or 2)",
            head[0]
        ))
    })?;
    let seq = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let mut payload = vec![0u8; payload_len];
    r.read_exact(&mut payload)
        .map_err(|e| read_error(e, "reading a frame payload"))?;
    Ok(Frame { kind, seq, payload })
}

/// Encode one frame into `out` (header and payload in one buffer, so it goes out in one write).
pub fn encode_frame(kind: FrameKind, seq: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() + HEADER_BYTES - 4) as u32;
    out.clear();
    out.reserve(payload.len() + HEADER_BYTES);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind.byte());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Write one frame and flush.
pub fn write_frame(
    w: &mut dyn Write,
    kind: FrameKind,
    seq: u32,
    payload: &[u8],
    max: usize,
) -> Result<usize, RuntimeError> {
    if payload.len() > max || payload.len() > u32::MAX as usize - HEADER_BYTES {
        return Err(RuntimeError::FrameTooLarge {
            len: payload.len(),
            max,
        });
    }
    let mut buf = Vec::new();
    encode_frame(kind, seq, payload, &mut buf);
    w.write_all(&buf)
        .and_then(|()| w.flush())
        .map_err(|e| read_error(e, "writing a frame"))?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Message, 7, b"hello", 100).unwrap();
        let f = read_frame(&mut Cursor::new(buf), 100).unwrap();
        assert_eq!(f.kind, FrameKind::Message);
        assert_eq!(f.seq, 7);
        assert_eq!(f.payload, b"hello");
    }

    #[test]
    fn oversized_refused_before_allocation() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&[1, 0, 0, 0, 0]);
        let e = read_frame(&mut Cursor::new(buf), 1 << 20).unwrap_err();
        assert!(matches!(e, RuntimeError::FrameTooLarge { .. }), "{e}");
    }

    #[test]
    fn short_length_and_bad_kind() {
        let e = read_frame(&mut Cursor::new(vec![3, 0, 0, 0, 1, 0, 0]), 100).unwrap_err();
        assert!(matches!(e, RuntimeError::Malformed(_)), "{e}");
        let e = read_frame(&mut Cursor::new(vec![5, 0, 0, 0, 9, 0, 0, 0, 0]), 100).unwrap_err();
        assert!(e.to_string().contains("unknown frame kind"), "{e}");
    }

    #[test]
    fn truncated_is_closed() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Message, 0, b"abcdef", 100).unwrap();
        for cut in 0..buf.len() {
            let e = read_frame(&mut Cursor::new(buf[..cut].to_vec()), 100).unwrap_err();
            assert!(matches!(e, RuntimeError::Closed(_)), "cut {cut}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Bounded fuzz: arbitrary bytes never panic and never allocate past the maximum.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut c = Cursor::new(bytes);
            while read_frame(&mut c, 32).is_ok() {}
        }

        /// Mutations of a valid stream decode or fail with a typed error, never panic.
        #[test]
        fn mutated_stream(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5),
                          flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
            let mut buf = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                let mut one = Vec::new();
                encode_frame(FrameKind::Message, i as u32, p, &mut one);
                buf.extend_from_slice(&one);
            }
            for (at, x) in flips {
                let n = buf.len();
                buf[at % n] ^= x | 1;
            }
            let mut c = Cursor::new(buf);
            let mut n = 0;
            while let Ok(f) = read_frame(&mut c, 64) {
                prop_assert!(f.payload.len() <= 64);
                n += 1;
                prop_assert!(n <= payloads.len() * 2 + 2);
            }
        }
    }
}
