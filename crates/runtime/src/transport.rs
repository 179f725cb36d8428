//! Byte streams under a channel: TCP, an in-process duplex for tests, TLS over either, and a
//! counting wrapper that measures the bytes that really cross the wire.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

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
