//! Oblivious transfer: base OT over Ristretto and IKNP correlated OT extension whose sender
//! offset is the garbler's Δ (so the transferred blocks are garbling labels), chosen-message and
//! random OT on top, and precomputed random COT with online derandomization.
//!
//! # Threat model
//!
//! Semi-honest sender and receiver. The base OT ([`base`]) is Chou–Orlandi's with the known
//! fixes (identity points refused, the session id and the whole transcript hashed into every
//! key), secure against a malicious receiver's choice of points. The extension ([`iknp`]) is
//! IKNP: a semi-honest receiver learns only its chosen blocks, the sender learns nothing of the
//! choices (each message it sees is masked by PRG outputs it cannot predict). A malicious
//! receiver could send inconsistent columns and learn bits of Δ; with the KOS consistency check
//! switched on at both ends ([`iknp::CotSender::with_consistency_check`]) the sender refuses an
//! extension whose columns are inconsistent (except with probability about 2^−128), at the cost
//! of 256 extra OTs and 64 bytes per extension call.

pub mod base;
pub mod gf128;
pub mod iknp;
pub mod transpose;

use crate::MpcError;
use std::sync::mpsc;

/// How the OT protocols talk: whole messages, in order. The runtime's framed channel and the
/// in-memory [`duplex`] implement it.
pub trait Channel {
    /// Send one message.
    fn send(&mut self, msg: Vec<u8>) -> Result<(), MpcError>;
    /// Receive the next message.
    fn recv(&mut self) -> Result<Vec<u8>, MpcError>;
}

/// One end of an in-memory duplex, counting the bytes it sends.
pub struct MemChannel {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    /// Bytes sent so far.
    pub sent: u64,
}

/// A connected pair of in-memory channels.
pub fn duplex() -> (MemChannel, MemChannel) {
    let (a_tx, b_rx) = mpsc::channel();
    let (b_tx, a_rx) = mpsc::channel();
    (
        MemChannel {
            tx: a_tx,
            rx: a_rx,
            sent: 0,
        },
        MemChannel {
            tx: b_tx,
            rx: b_rx,
            sent: 0,
        },
    )
}

impl Channel for MemChannel {
    fn send(&mut self, msg: Vec<u8>) -> Result<(), MpcError> {
        self.sent += msg.len() as u64;
        self.tx
            .send(msg)
            .map_err(|_| MpcError::Protocol("the peer hung up".into()))
    }

    fn recv(&mut self) -> Result<Vec<u8>, MpcError> {
        self.rx
            .recv()
            .map_err(|_| MpcError::Protocol("the peer hung up".into()))
    }
}
