//! `2pc` between two processes: the server accepts TCP connections, each one session on its
//! own thread, over the runtime's channel (framing, size limit, sequence numbers, deadlines)
//! continued in TLS 1.3. There is no TEE to attest, so the client authenticates the server by
//! pinning its certificate, given out of band (`tessera server --scheme 2pc` writes it to a
//! file); the server serves any client (the model owner decides who may connect at the network
//! level). Every message after the hello is inside TLS: authenticated and encrypted.
//!
//! A session that fails (a malformed, truncated, out-of-order or oversized message, a wrong
//! label) is ended with an error frame naming what was wrong; other sessions go on.

use crate::protocol::{ServerModel, TwoPcError};
use crate::session::{self, Client, ServeConfig, Variant};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use tessera_runtime::channel::IDLE_DEADLINE;
use tessera_runtime::enclave::serve_tcp;
use tessera_runtime::tls::Identity;
use tessera_runtime::{Channel, ChannelOptions, Role, RuntimeError, ServerHandle};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Sessions served at once.
    pub max_sessions: usize,
    /// Channel limits.
    pub channel: ChannelOptions,
    /// Preprocessing limits, the store and the variants served.
    pub session: ServeConfig,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            channel: ChannelOptions::default(),
            session: ServeConfig {
                max_pending: 4,
                ..ServeConfig::default()
            },
        }
    }
}

fn runtime(e: TwoPcError) -> RuntimeError {
    RuntimeError::Protocol(e.to_string())
}

/// Serve `model` on `listener` until the handle is dropped or waited on.
pub fn serve(
    listener: TcpListener,
    model: Arc<ServerModel>,
    identity: Arc<Identity>,
    opts: ServeOptions,
) -> Result<ServerHandle, RuntimeError> {
    let max_sessions = opts.max_sessions;
    serve_tcp(listener, max_sessions, move |stream| {
        let mut ch = Channel::new(stream, opts.channel)?;
        ch.handshake(Role::Worker, &[Role::Client])?;
        let mut ch = tessera_runtime::tls::accept(ch, &identity, opts.channel)?;
        // HE answers and garbling take a while between messages on a large model.
        ch.set_deadline(Some(IDLE_DEADLINE))?;
        let mut rng = ChaCha20Rng::from_os_rng();
        match session::serve(&model, &mut ch, &mut rng, &opts.session) {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = e.to_string();
                ch.send_error(&text);
                Err(runtime(e))
            }
        }
    })
}

/// Open a session with the server at `addr`, accepting only the certificate `cert` (DER).
pub fn connect(
    addr: &str,
    cert: &[u8],
    variant: Variant,
    opts: ChannelOptions,
) -> Result<Client<Channel>, TwoPcError> {
    let stream = TcpStream::connect(addr).map_err(|e| {
        TwoPcError::Party(format!("cannot connect to the 2pc server at {addr}: {e}"))
    })?;
    let _ = stream.set_nodelay(true);
    connect_stream(stream, cert, variant, opts)
}

/// [`connect`] on a stream already open.
pub fn connect_stream<T: tessera_runtime::Transport + 'static>(
    stream: T,
    cert: &[u8],
    variant: Variant,
    opts: ChannelOptions,
) -> Result<Client<Channel>, TwoPcError> {
    let net = |e: RuntimeError| TwoPcError::Party(e.to_string());
    let mut ch = Channel::new(stream, opts).map_err(net)?;
    ch.handshake(Role::Client, &[Role::Worker]).map_err(net)?;
    let mut ch = tessera_runtime::tls::connect(ch, cert, opts).map_err(net)?;
    ch.set_deadline(Some(IDLE_DEADLINE)).map_err(net)?;
    Client::open(ch, variant)
}
