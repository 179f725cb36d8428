//! Byte streams under a channel: TCP, an in-process duplex for tests, TLS over either, and a
//! counting wrapper that measures the bytes that really cross the wire.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A bidirectional byte stream with a read deadline.
pub trait Transport: Read + Write + Send {
    /// Every later read fails with a timeout after `d` without data (`None`: wait forever).
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(d)?;
        self.set_write_timeout(d)
    }
}

impl Transport for Box<dyn Transport> {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        (**self).set_deadline(d)
    }
}

impl<T: Transport> Transport for rustls::StreamOwned<rustls::ClientConnection, T> {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        self.sock.set_deadline(d)
    }
}

impl<T: Transport> Transport for rustls::StreamOwned<rustls::ServerConnection, T> {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        self.sock.set_deadline(d)
    }
}

/// Byte counters of one connection, shared between the stream and whoever reports costs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes written to the wire.
    pub sent: AtomicU64,
    /// Bytes read from the wire.
    pub received: AtomicU64,
    /// Round trips (a send that follows a receive, or the first send), counted by the channel.
    pub rounds: AtomicU64,
}

impl Counters {
    /// A snapshot `(sent, received, rounds)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.rounds.load(Ordering::Relaxed),
        )
    }
}

/// A stream that adds every byte it moves to shared [`Counters`].
pub struct Counted<T> {
    inner: T,
    counters: Arc<Counters>,
}

impl<T> Counted<T> {
    /// Wrap `inner`.
    pub fn new(inner: T, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Transport> Transport for Counted<T> {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        self.inner.set_deadline(d)
    }
}

/// Absolute read deadlines of one connection, shared between a [`crate::Channel`] (which sets
/// them) and the [`Timed`] layer at the bottom of its stream (which enforces them on every
/// read of the raw bytes, under TLS if there is TLS). A per-read timeout alone lets a peer
/// that sends one byte just before each timeout hold a connection forever; these bound the
/// total time.
#[derive(Debug, Default)]
pub struct Clock {
    state: Mutex<ClockState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ClockState {
    /// Every read fails after this instant (the enclave's pre-authentication budget).
    read_by: Option<Instant>,
    frame: FrameTimer,
}

#[derive(Debug, Default, Clone, Copy)]
enum FrameTimer {
    /// No frame is being read.
    #[default]
    Off,
    /// A frame is awaited: its time starts with the first byte that arrives.
    Armed(Duration),
    /// A frame has started arriving: it must be complete by this instant.
    Running(Instant),
}

impl Clock {
    fn with<R>(&self, f: impl FnOnce(&mut ClockState) -> R) -> R {
        let mut g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    /// Every read fails once `at` has passed (`None`: no such bound).
    pub fn set_read_by(&self, at: Option<Instant>) {
        self.with(|s| s.read_by = at);
    }

    /// A frame is awaited: once its first byte arrives it must arrive whole within `limit`
    /// (`None`: no bound).
    pub fn arm_frame(&self, limit: Option<Duration>) {
        self.with(|s| s.frame = limit.map_or(FrameTimer::Off, FrameTimer::Armed));
    }

    /// The frame is complete (or failed).
    pub fn disarm_frame(&self) {
        self.with(|s| s.frame = FrameTimer::Off);
    }

    /// The earliest absolute deadline now in force.
    fn bound(&self) -> Option<Instant> {
        self.with(|s| {
            let frame = match s.frame {
                FrameTimer::Running(at) => Some(at),
                _ => None,
            };
            match (s.read_by, frame) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
    }

    /// Bytes arrived: an armed frame timer starts.
    fn bytes_arrived(&self) {
        self.with(|s| {
            if let FrameTimer::Armed(d) = s.frame {
                s.frame = FrameTimer::Running(Instant::now() + d);
            }
        });
    }
}

/// The bottom layer of a channel's stream: applies the per-read timeout and the [`Clock`]'s
/// absolute deadlines to every read of the raw transport.
pub struct Timed<T> {
    inner: T,
    clock: Arc<Clock>,
    per_read: Option<Duration>,
    applied: Option<Option<Duration>>,
}

impl<T: Transport> Timed<T> {
    /// Wrap `inner`, enforcing `clock`.
    pub fn new(inner: T, clock: Arc<Clock>) -> Self {
        Self {
            inner,
            clock,
            per_read: None,
            applied: None,
        }
    }
}

impl<T: Transport> Read for Timed<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut limit = self.per_read;
        if let Some(at) = self.clock.bound() {
            let left = at.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the total deadline for this frame or phase passed",
                ));
            }
            limit = Some(limit.map_or(left, |p| p.min(left)));
        }
        if self.applied != Some(limit) {
            self.inner.set_deadline(limit)?;
            self.applied = Some(limit);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.clock.bytes_arrived();
        }
        Ok(n)
    }
}

impl<T: Write> Write for Timed<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Transport> Transport for Timed<T> {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        self.per_read = d;
        self.inner.set_deadline(d)?;
        self.applied = Some(d);
        Ok(())
    }
}

/// One end of an in-process duplex pipe (see [`duplex`]).
pub struct DuplexEnd {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    deadline: Option<Duration>,
}

/// A connected pair of in-process byte streams: what one end writes, the other reads. Dropping
/// an end closes it: the other end then reads end-of-stream.
pub fn duplex() -> (DuplexEnd, DuplexEnd) {
    let (atx, brx) = mpsc::channel();
    let (btx, arx) = mpsc::channel();
    let end = |tx, rx| DuplexEnd {
        tx: Some(tx),
        rx,
        buf: Vec::new(),
        pos: 0,
        deadline: None,
    };
    (end(atx, arx), end(btx, brx))
}

impl DuplexEnd {
    /// Close the writing half: the peer reads end-of-stream once it has read what was sent.
    pub fn shutdown_write(&mut self) {
        self.tx = None;
    }
}

impl Read for DuplexEnd {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.buf.len() {
            let next = match self.deadline {
                Some(d) => self.rx.recv_timeout(d).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        io::Error::new(io::ErrorKind::TimedOut, "duplex read deadline passed")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")
                    }
                }),
                None => self
                    .rx
                    .recv()
                    .map_err(|_| io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
            };
            match next {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for DuplexEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "write half closed"))?;
        tx.send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "peer closed"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for DuplexEnd {
    fn set_deadline(&mut self, d: Option<Duration>) -> io::Result<()> {
        self.deadline = d;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplex_moves_bytes_and_times_out() {
        let (mut a, mut b) = duplex();
        a.write_all(b"abc").unwrap();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        b.set_deadline(Some(Duration::from_millis(20))).unwrap();
        let e = b.read(&mut got).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(a);
        assert_eq!(b.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn counted_counts() {
        let c = Arc::new(Counters::default());
        let (a, mut b) = duplex();
        let mut a = Counted::new(a, c.clone());
        a.write_all(&[0; 10]).unwrap();
        let mut got = [0u8; 4];
        b.write_all(&[1; 4]).unwrap();
        a.read_exact(&mut got).unwrap();
        assert_eq!(c.snapshot(), (10, 4, 0));
    }
}
