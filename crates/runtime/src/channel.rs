//! A typed, ordered, size- and time-bounded message channel over any [`Transport`].
//!
//! Every channel starts with a version handshake ([`Channel::handshake`]): each side sends a
//! hello frame with the magic `TSRA`, the protocol version and its role, and refuses a peer
//! that speaks another version. After that, messages are postcard-encoded serde values in
//! message frames. Each side numbers its frames from 0; a frame with any other number than the
//! next expected one (a replayed, dropped or reordered frame) is an error. Any error closes the
//! channel: it cannot be used again.

use crate::RuntimeError;
use crate::frame::{self, DEFAULT_MAX_FRAME, FrameKind};
use crate::transport::{Clock, Counted, Counters, Timed, Transport};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Magic bytes at the start of every hello.
pub const MAGIC: [u8; 4] = *b"TSRA";

/// The protocol version this build speaks. Version 2: the enclave's evidence message carries
/// its application measurement, which the report data binds. Version 3: outputs carry their
/// real scale (the integer semantics v2 has no power-of-two scale).
pub const PROTOCOL_VERSION: u16 = 3;

/// Default deadline for every read: long enough for a garbled network to arrive, short enough
/// that a silent peer does not hold a thread forever.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// Default bound on the time one frame may take to arrive once its first byte has arrived:
/// a frame must arrive whole within it, however its bytes trickle in.
pub const DEFAULT_FRAME_DEADLINE: Duration = Duration::from_secs(120);

/// Default bound on everything an enclave connection does before its first authenticated
/// message (hello, attestation request, TLS handshake, first request inside TLS), from
/// accept; every read in that phase is bounded by it as well.
pub const DEFAULT_PREAUTH_DEADLINE: Duration = Duration::from_secs(10);

/// Deadline for reads on an established session waiting for the peer's next request or a long
/// computation (a garbling, a large model): an idle peer is dropped after this long.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(3600);

/// Who is speaking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The data owner.
    Client,
    /// The trusted side.
    Enclave,
    /// The untrusted accelerator host.
    Worker,
    /// A relay of opaque bytes.
    Relay,
    /// The model owner (`lhe`: uploads the encrypted model to the server).
    Owner,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    magic: [u8; 4],
    version: u16,
    role: Role,
}

/// Channel options.
#[derive(Clone, Copy, Debug)]
pub struct ChannelOptions {
    /// Largest payload accepted or sent.
    pub max_frame: usize,
    /// Deadline for every read.
    pub deadline: Option<Duration>,
    /// Bound on one frame's arrival, from its first byte to its last.
    pub frame_deadline: Option<Duration>,
    /// The enclave's bound on a connection's unauthenticated phase (see
    /// [`DEFAULT_PREAUTH_DEADLINE`]).
    pub preauth_deadline: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            deadline: Some(DEFAULT_DEADLINE),
            frame_deadline: Some(DEFAULT_FRAME_DEADLINE),
            preauth_deadline: DEFAULT_PREAUTH_DEADLINE,
        }
    }
}

/// What a channel's stream keeps across a TLS upgrade besides the stream itself: its byte
/// counters and its deadline clock. Only [`Channel::into_parts`] makes one, so a channel
/// rebuilt with [`Channel::from_parts`] always has a [`Timed`] layer under it.
#[derive(Clone)]
pub struct Link {
    counters: Arc<Counters>,
    clock: Arc<Clock>,
}

impl Link {
    /// The byte counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

/// A message channel. See the module documentation.
pub struct Channel {
    io: Option<Box<dyn Transport>>,
    counters: Arc<Counters>,
    clock: Arc<Clock>,
    opts: ChannelOptions,
    seq_out: u32,
    seq_in: u32,
    last_was_recv: bool,
    peer: Option<Role>,
}

impl Channel {
    /// A channel over a raw stream; its bytes are counted in fresh counters, and its reads
    /// are bounded by the options' deadlines.
    pub fn new<T: Transport + 'static>(raw: T, opts: ChannelOptions) -> Result<Self, RuntimeError> {
        let counters = Arc::new(Counters::default());
        let clock = Arc::new(Clock::default());
        let io: Box<dyn Transport> = Box::new(Timed::new(
            Counted::new(raw, counters.clone()),
            clock.clone(),
        ));
        Self::from_parts(io, Link { counters, clock }, opts)
    }

    /// A channel over a stream built on the stream of an earlier channel (for example TLS over
    /// it, so that the counters see the encrypted bytes and the deadlines apply to the raw
    /// reads under TLS).
    pub fn from_parts(
        mut io: Box<dyn Transport>,
        link: Link,
        opts: ChannelOptions,
    ) -> Result<Self, RuntimeError> {
        io.set_deadline(opts.deadline)
            .map_err(|e| RuntimeError::Io(format!("setting the read deadline: {e}")))?;
        Ok(Self {
            io: Some(io),
            counters: link.counters,
            clock: link.clock,
            opts,
            seq_out: 0,
            seq_in: 0,
            last_was_recv: true,
            peer: None,
        })
    }

    /// Take the stream back (to wrap it in TLS), with what it keeps across the upgrade.
    pub fn into_parts(mut self) -> Result<(Box<dyn Transport>, Link), RuntimeError> {
        let io = self.io.take().ok_or_else(closed)?;
        Ok((
            io,
            Link {
                counters: self.counters.clone(),
                clock: self.clock.clone(),
            },
        ))
    }

    /// Every later read fails once `at` has passed, however the bytes arrive (`None`: lift
    /// the bound). The enclave bounds a connection's unauthenticated phase with it.
    pub fn set_read_by(&mut self, at: Option<Instant>) {
        self.clock.set_read_by(at);
    }

    /// Continue the frame numbering of `prev` (used when a stream is upgraded to TLS).
    pub fn continue_from(&mut self, seq_out: u32, seq_in: u32, peer: Option<Role>) {
        self.seq_out = seq_out;
        self.seq_in = seq_in;
        self.peer = peer;
    }

    /// Frame numbers `(next out, next in)` and the peer's role.
    pub fn position(&self) -> (u32, u32, Option<Role>) {
        (self.seq_out, self.seq_in, self.peer)
    }

    /// The counters of this connection.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The peer's role, once the handshake is done.
    pub fn peer(&self) -> Option<Role> {
        self.peer
    }

    /// Change the read deadline.
    pub fn set_deadline(&mut self, d: Option<Duration>) -> Result<(), RuntimeError> {
        self.opts.deadline = d;
        let io = self.io.as_mut().ok_or_else(closed)?;
        io.set_deadline(d)
            .map_err(|e| RuntimeError::Io(format!("setting the read deadline: {e}")))
    }

    /// Exchange hellos; fails when the peer speaks another protocol or version, or is not one of
    /// the `expect`ed roles.
    pub fn handshake(&mut self, me: Role, expect: &[Role]) -> Result<Role, RuntimeError> {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: me,
        };
        let bytes = postcard::to_allocvec(&hello).map_err(encode_err)?;
        self.write(FrameKind::Hello, &bytes)?;
        let f = self.read()?;
        if f.kind != FrameKind::Hello {
            return self.fail(RuntimeError::Protocol(
                "the peer did not start with a hello frame".into(),
            ));
        }
        let theirs: Hello = match postcard::from_bytes(&f.payload) {
            Ok(h) => h,
            Err(e) => {
                return self.fail(RuntimeError::Malformed(format!(
                    "the peer's hello does not decode: {e}"
                )));
            }
        };
        if theirs.magic != MAGIC {
            return self.fail(RuntimeError::Protocol(
                "the peer is not a tessera endpoint (bad magic in its hello)".into(),
            ));
        }
        if theirs.version != PROTOCOL_VERSION {
            return self.fail(RuntimeError::Version {
                ours: PROTOCOL_VERSION,
                theirs: theirs.version,
            });
        }
        if !expect.contains(&theirs.role) {
            return self.fail(RuntimeError::Protocol(format!(
                "the peer is a {:?}, expected one of {expect:?}",
                theirs.role
            )));
        }
        self.peer = Some(theirs.role);
        Ok(theirs.role)
    }

    /// Send one message.
    pub fn send<M: Serialize>(&mut self, m: &M) -> Result<(), RuntimeError> {
        let bytes = postcard::to_allocvec(m).map_err(encode_err)?;
        self.write(FrameKind::Message, &bytes)
    }

    /// Receive one message of type `M`. An error frame from the peer becomes
    /// [`RuntimeError::Peer`].
    pub fn recv<M: DeserializeOwned>(&mut self) -> Result<M, RuntimeError> {
        let f = self.read()?;
        match f.kind {
            FrameKind::Message => match postcard::from_bytes(&f.payload) {
                Ok(m) => Ok(m),
                Err(e) => self.fail(RuntimeError::Malformed(format!(
                    "a {}-byte message does not decode as {}: {e}",
                    f.payload.len(),
                    std::any::type_name::<M>()
                ))),
            },
            FrameKind::Error => {
                let text = String::from_utf8_lossy(&f.payload).into_owned();
                self.io = None;
                Err(RuntimeError::Peer(text))
            }
            FrameKind::Hello => self.fail(RuntimeError::Protocol(
                "a second hello in the middle of a conversation".into(),
            )),
        }
    }

    /// Tell the peer why this side gives up, then close.
    pub fn send_error(&mut self, text: &str) {
        let _ = self.write(FrameKind::Error, text.as_bytes());
        self.io = None;
    }

    /// Whether the channel is still usable.
    pub fn is_open(&self) -> bool {
        self.io.is_some()
    }

    fn write(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), RuntimeError> {
        let max = self.opts.max_frame;
        let io = self.io.as_mut().ok_or_else(closed)?;
        if let Err(e) = frame::write_frame(io, kind, self.seq_out, payload, max) {
            self.io = None;
            return Err(e);
        }
        self.seq_out = self.seq_out.wrapping_add(1);
        if self.last_was_recv {
            self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        }
        self.last_was_recv = false;
        Ok(())
    }

    fn read(&mut self) -> Result<frame::Frame, RuntimeError> {
        let max = self.opts.max_frame;
        let io = self.io.as_mut().ok_or_else(closed)?;
        self.clock.arm_frame(self.opts.frame_deadline);
        let f = frame::read_frame(io, max);
        self.clock.disarm_frame();
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                self.io = None;
                return Err(e);
            }
        };
        if f.seq != self.seq_in {
            return self.fail(RuntimeError::OutOfOrder {
                expected: self.seq_in,
                got: f.seq,
            });
        }
        self.seq_in = self.seq_in.wrapping_add(1);
        self.last_was_recv = true;
        Ok(f)
    }

    fn fail<T>(&mut self, e: RuntimeError) -> Result<T, RuntimeError> {
        self.send_error(&e.to_string());
        Err(e)
    }
}

fn closed() -> RuntimeError {
    RuntimeError::Closed("the channel was closed after an earlier error".into())
}

fn encode_err(e: postcard::Error) -> RuntimeError {
    RuntimeError::Malformed(format!("encoding a message: {e}"))
}

/// The two-party building blocks (`tessera_mpc`: oblivious transfer) talk through this channel:
/// each OT message is one frame, so it gets the channel's size limit, sequence numbers,
/// deadlines and byte counters.
impl tessera_mpc::ot::Channel for Channel {
    fn send(&mut self, msg: Vec<u8>) -> Result<(), tessera_mpc::MpcError> {
        Channel::send(self, &msg).map_err(|e| tessera_mpc::MpcError::Protocol(e.to_string()))
    }

    fn recv(&mut self) -> Result<Vec<u8>, tessera_mpc::MpcError> {
        Channel::recv::<Vec<u8>>(self).map_err(|e| tessera_mpc::MpcError::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::duplex;
    use std::io::Write;

    fn opts() -> ChannelOptions {
        ChannelOptions {
            max_frame: 1 << 16,
            deadline: Some(Duration::from_secs(5)),
            ..ChannelOptions::default()
        }
    }

    #[test]
    fn handshake_and_messages() {
        let (a, b) = duplex();
        let t = std::thread::spawn(move || {
            let mut s = Channel::new(b, opts()).unwrap();
            s.handshake(Role::Enclave, &[Role::Client]).unwrap();
            let m: Vec<u32> = s.recv().unwrap();
            s.send(&m.iter().sum::<u32>()).unwrap();
        });
        let mut c = Channel::new(a, opts()).unwrap();
        assert_eq!(
            c.handshake(Role::Client, &[Role::Enclave]).unwrap(),
            Role::Enclave
        );
        c.send(&vec![1u32, 2, 3]).unwrap();
        let s: u32 = c.recv().unwrap();
        assert_eq!(s, 6);
        t.join().unwrap();
        let (sent, recv, rounds) = c.counters().snapshot();
        assert_eq!(rounds, 2, "hello exchange + one request");
        assert!(sent > 0 && recv > 0);
    }

    #[test]
    fn version_mismatch_is_refused() {
        let (a, mut b) = duplex();
        let hello = Hello {
            magic: MAGIC,
            version: 99,
            role: Role::Client,
        };
        let mut buf = Vec::new();
        frame::encode_frame(
            FrameKind::Hello,
            0,
            &postcard::to_allocvec(&hello).unwrap(),
            &mut buf,
        );
        b.write_all(&buf).unwrap();
        let mut s = Channel::new(a, opts()).unwrap();
        let e = s.handshake(Role::Enclave, &[Role::Client]).unwrap_err();
        assert!(matches!(e, RuntimeError::Version { theirs: 99, .. }), "{e}");
        assert!(!s.is_open());
    }

    #[test]
    fn out_of_order_frame_is_refused() {
        let (a, mut b) = duplex();
        let mut buf = Vec::new();
        frame::encode_frame(
            FrameKind::Message,
            1,
            &postcard::to_allocvec(&5u32).unwrap(),
            &mut buf,
        );
        b.write_all(&buf).unwrap();
        let mut s = Channel::new(a, opts()).unwrap();
        let e = s.recv::<u32>().unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::OutOfOrder {
                    expected: 0,
                    got: 1
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn silent_peer_hits_the_deadline() {
        let (a, _b) = duplex();
        let mut s = Channel::new(
            a,
            ChannelOptions {
                max_frame: 100,
                deadline: Some(Duration::from_millis(30)),
                ..ChannelOptions::default()
            },
        )
        .unwrap();
        let e = s.recv::<u32>().unwrap_err();
        assert!(matches!(e, RuntimeError::Timeout(_)), "{e}");
    }

    /// Each byte arrives well within the per-read deadline, but the frame as a whole does not
    /// arrive within the frame deadline.
    #[test]
    fn trickled_frame_hits_the_frame_deadline() {
        let (a, mut b) = duplex();
        let mut buf = Vec::new();
        frame::encode_frame(FrameKind::Message, 0, &[0u8; 40], &mut buf);
        let t = std::thread::spawn(move || {
            for x in buf {
                if b.write_all(&[x]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut s = Channel::new(
            a,
            ChannelOptions {
                deadline: Some(Duration::from_secs(1)),
                frame_deadline: Some(Duration::from_millis(200)),
                ..ChannelOptions::default()
            },
        )
        .unwrap();
        let t0 = Instant::now();
        let e = s.recv::<Vec<u8>>().unwrap_err();
        assert!(matches!(e, RuntimeError::Timeout(_)), "{e}");
        assert!(
            t0.elapsed() < Duration::from_millis(600),
            "{:?}",
            t0.elapsed()
        );
        drop(s);
        t.join().unwrap();
    }

    /// The frame timer starts with the frame's first byte, not with the wait for it.
    #[test]
    fn idle_wait_does_not_count_against_the_frame_deadline() {
        let (a, mut b) = duplex();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut buf = Vec::new();
            frame::encode_frame(
                FrameKind::Message,
                0,
                &postcard::to_allocvec(&5u32).unwrap(),
                &mut buf,
            );
            b.write_all(&buf).unwrap();
            b
        });
        let mut s = Channel::new(
            a,
            ChannelOptions {
                deadline: Some(Duration::from_secs(2)),
                frame_deadline: Some(Duration::from_millis(100)),
                ..ChannelOptions::default()
            },
        )
        .unwrap();
        assert_eq!(s.recv::<u32>().unwrap(), 5);
        drop(t.join().unwrap());
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let (a, mut b) = duplex();
        b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        drop(b);
        let mut s = Channel::new(a, opts()).unwrap();
        let e = s.handshake(Role::Enclave, &[Role::Client]).unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::FrameTooLarge { .. }
                    | RuntimeError::Malformed(_)
                    | RuntimeError::Closed(_)
            ),
            "{e}"
        );
    }
}
