//! A `2pc` session: the messages that open it and order its phases, for either variant, over any
//! [`Channel`] — the runtime's TLS channel between two processes, or an in-memory one.
//!
//! 1. client → server `Hello { version, variant }`; server → client the [`PublicModel`];
//! 2. any number of times: client → `Offline`, the variant's offline phase, server →
//!    `Prepared { server_stored }`; then client → `Online`, the variant's online phase, which
//!    consumes the oldest unused preprocessing on both sides;
//! 3. client → `Bye`.
//!
//! Each preprocessing (masks, shares, garbled circuits, OT correlations) is taken out of the
//! queue by the online phase that uses it, so none serves twice: an `Online` with no unused
//! preprocessing ends the session with [`TwoPcError::NoPreprocessing`]. Any message that is not
//! the one expected ends the session with an error naming it; the server serves each session on
//! its own and other sessions go on.

use crate::protocol::{RunCost, ServerModel, TwoPcError, recv_big, send_big};
use crate::public::{Public, PublicModel};
use crate::store::{Id, Kind, Store, model_digest};
use crate::{cg, sg};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tessera_mpc::ot::Channel;

/// Version of the session messages.
pub const SESSION_VERSION: u16 = 1;

/// Largest public model description accepted.
const MAX_MODEL_BYTES: u64 = 256 << 20;

/// Which party garbles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    /// Delphi: the server garbles offline, the client evaluates online.
    ServerGarbler,
    /// CryptoNite's variant: the client garbles offline and uploads; the server evaluates,
    /// its input labels from precomputed random correlated OT derandomized online.
    ClientGarbler,
}

impl Variant {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::ServerGarbler => "server-garbler",
            Variant::ClientGarbler => "client-garbler",
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server-garbler" | "sg" => Ok(Variant::ServerGarbler),
            "client-garbler" | "cg" => Ok(Variant::ClientGarbler),
            _ => Err(format!(
                "unknown 2pc variant '{s}': use server-garbler (Delphi) or client-garbler (CryptoNite)"
            )),
        }
    }
}

/// Session control messages.
#[derive(Debug, Serialize, Deserialize)]
pub enum Control {
    /// Client: open a session.
    Hello {
        /// [`SESSION_VERSION`].
        version: u16,
        /// The variant the client wants.
        variant: Variant,
    },
    /// Client: run an offline phase.
    Offline,
    /// Server: the offline phase is done; what it keeps for it.
    Prepared {
        /// Bytes the server stores until the online phase.
        server_stored: u64,
    },
    /// Client: run an online phase.
    Online,
    /// Client: run an offline phase whose preprocessing the server stores on disk as `id`.
    OfflineStored {
        /// The preprocessing's name (16 random bytes).
        id: [u8; 16],
    },
    /// Client: run an online phase on the server's stored preprocessing `id` (taken: removed).
    OnlineStored {
        /// The preprocessing's name.
        id: [u8; 16],
    },
    /// Client: end the session.
    Bye,
}

/// Send a control message.
pub fn send_ctl<C: Channel>(ch: &mut C, m: &Control) -> Result<(), TwoPcError> {
    let b = postcard::to_allocvec(m)
        .map_err(|e| TwoPcError::Protocol(format!("encoding a control message: {e}")))?;
    ch.send(b)?;
    Ok(())
}

/// Receive a control message.
pub fn recv_ctl<C: Channel>(ch: &mut C) -> Result<Control, TwoPcError> {
    let b = ch.recv()?;
    postcard::from_bytes(&b).map_err(|e| {
        TwoPcError::Protocol(format!(
            "expected a session control message, got {} bytes that do not decode as one ({e})",
            b.len()
        ))
    })
}

enum ServerPre {
    Sg(sg::ServerPre),
    Cg(cg::ServerPre),
}

impl ServerPre {
    fn stored(&self) -> u64 {
        match self {
            ServerPre::Sg(p) => p.stored_bytes(),
            ServerPre::Cg(p) => p.stored_bytes(),
        }
    }

    fn make<C: Channel, R: RngCore + CryptoRng>(
        variant: Variant,
        m: &ServerModel,
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self, TwoPcError> {
        Ok(match variant {
            Variant::ServerGarbler => ServerPre::Sg(sg::server_offline(m, ch, rng)?),
            Variant::ClientGarbler => ServerPre::Cg(cg::server_offline(m, ch, rng)?),
        })
    }

    fn run<C: Channel>(self, m: &ServerModel, ch: &mut C) -> Result<(), TwoPcError> {
        match self {
            ServerPre::Sg(p) => sg::server_online(m, ch, p),
            ServerPre::Cg(p) => cg::server_online(m, ch, p),
        }
    }
}

fn server_kind(v: Variant) -> Kind {
    match v {
        Variant::ServerGarbler => Kind::ServerSg,
        Variant::ClientGarbler => Kind::ServerCg,
    }
}

fn client_kind(v: Variant) -> Kind {
    match v {
        Variant::ServerGarbler => Kind::ClientSg,
        Variant::ClientGarbler => Kind::ClientCg,
    }
}

/// How a server serves sessions.
#[derive(Clone, Debug, Default)]
pub struct ServeConfig {
    /// Unused preprocessings a session may hold in memory (at least 1).
    pub max_pending: usize,
    /// Where preprocessing is kept on disk between sessions (none: refused).
    pub store: Option<Store>,
    /// The only variant served (none: the one each client asks for).
    pub only: Option<Variant>,
}

/// Serve one session on `ch`; returns the number of inferences served.
pub fn serve<C: Channel, R: RngCore + CryptoRng>(
    m: &ServerModel,
    ch: &mut C,
    rng: &mut R,
    cfg: &ServeConfig,
) -> Result<u64, TwoPcError> {
    let max_pending = cfg.max_pending;
    let store = cfg.store.as_ref();
    let variant = match recv_ctl(ch)? {
        Control::Hello { version, variant } if version == SESSION_VERSION => variant,
        Control::Hello { version, .. } => {
            return Err(TwoPcError::Protocol(format!(
                "the client speaks session version {version}, this server {SESSION_VERSION}"
            )));
        }
        other => {
            return Err(TwoPcError::Protocol(format!(
                "expected the client's hello, got {other:?}"
            )));
        }
    };
    if let Some(only) = cfg.only.filter(|&o| o != variant) {
        return Err(TwoPcError::Protocol(format!(
            "this server runs the {} variant only; the client asked for {}",
            only.name(),
            variant.name()
        )));
    }
    let model = postcard::to_allocvec(&m.public.model)
        .map_err(|e| TwoPcError::Protocol(format!("encoding the model description: {e}")))?;
    send_big(ch, model)?;
    let digest = model_digest(&m.public.model)?;
    let no_store = || {
        TwoPcError::Store(
            "this server keeps no preprocessing on disk (start it with --store DIR)".into(),
        )
    };
    let mut pending: VecDeque<ServerPre> = VecDeque::new();
    let mut served = 0;
    loop {
        match recv_ctl(ch)? {
            Control::Offline => {
                if pending.len() >= max_pending.max(1) {
                    return Err(TwoPcError::Protocol(format!(
                        "the client asked for more than {} unused preprocessings",
                        max_pending.max(1)
                    )));
                }
                let pre = ServerPre::make(variant, m, ch, rng)?;
                send_ctl(
                    ch,
                    &Control::Prepared {
                        server_stored: pre.stored(),
                    },
                )?;
                pending.push_back(pre);
            }
            Control::OfflineStored { id } => {
                let store = store.ok_or_else(no_store)?;
                let pre = ServerPre::make(variant, m, ch, rng)?;
                let bytes = match &pre {
                    ServerPre::Sg(p) => p.to_bytes()?,
                    ServerPre::Cg(p) => p.to_bytes()?,
                };
                let stored = store.put(&id, server_kind(variant), &digest, &bytes)?;
                send_ctl(
                    ch,
                    &Control::Prepared {
                        server_stored: stored,
                    },
                )?;
            }
            Control::Online => {
                pending
                    .pop_front()
                    .ok_or(TwoPcError::NoPreprocessing)?
                    .run(m, ch)?;
                served += 1;
            }
            Control::OnlineStored { id } => {
                let store = store.ok_or_else(no_store)?;
                let bytes = store.take(&id, server_kind(variant), &digest)?;
                let pre = match variant {
                    Variant::ServerGarbler => ServerPre::Sg(sg::ServerPre::from_bytes(&bytes)?),
                    Variant::ClientGarbler => ServerPre::Cg(cg::ServerPre::from_bytes(&bytes)?),
                };
                pre.run(m, ch)?;
                served += 1;
            }
            Control::Bye => return Ok(served),
            other => {
                return Err(TwoPcError::Protocol(format!(
                    "expected Offline, Online or Bye from the client, got {other:?}"
                )));
            }
        }
    }
}

enum ClientPre {
    Sg(sg::ClientPre),
    Cg(Box<cg::ClientPre>),
}

/// The client's end of a session.
pub struct Client<C: Channel> {
    ch: C,
    variant: Variant,
    public: Arc<Public>,
    pending: VecDeque<ClientPre>,
}

impl<C: Channel> Client<C> {
    /// Open a session: hello, then the server's model description, validated and built.
    pub fn open(ch: C, variant: Variant) -> Result<Self, TwoPcError> {
        Self::open_inner(ch, variant, None)
    }

    /// Open a session with a public model built before (the embedded scheme): the server's
    /// description must be the same.
    pub fn open_known(ch: C, variant: Variant, known: Arc<Public>) -> Result<Self, TwoPcError> {
        Self::open_inner(ch, variant, Some(known))
    }

    fn open_inner(
        mut ch: C,
        variant: Variant,
        known: Option<Arc<Public>>,
    ) -> Result<Self, TwoPcError> {
        send_ctl(
            &mut ch,
            &Control::Hello {
                version: SESSION_VERSION,
                variant,
            },
        )?;
        let bytes = recv_big(&mut ch, MAX_MODEL_BYTES, "the model description")?;
        let model: PublicModel = postcard::from_bytes(&bytes).map_err(|e| {
            TwoPcError::Protocol(format!("the model description does not decode: {e}"))
        })?;
        let public = match known {
            Some(p) if p.model == model => p,
            Some(_) => {
                return Err(TwoPcError::Protocol(
                    "the server describes another model than the one expected".into(),
                ));
            }
            None => Arc::new(Public::new(model, None)?),
        };
        Ok(Self {
            ch,
            variant,
            public,
            pending: VecDeque::new(),
        })
    }

    /// The model as the server described it.
    pub fn public(&self) -> &Public {
        &self.public
    }

    /// The session's variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Run one offline phase; its cost (offline fields and stored bytes).
    pub fn offline<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> Result<RunCost, TwoPcError> {
        let (pre, cost) = self.run_offline(&Control::Offline, rng)?;
        self.pending.push_back(pre);
        Ok(cost)
    }

    /// Run one offline phase whose preprocessing both sides keep on disk (the server in its
    /// store, the client in `store`); its name and cost.
    pub fn offline_stored<R: RngCore + CryptoRng>(
        &mut self,
        store: &Store,
        rng: &mut R,
    ) -> Result<(Id, RunCost), TwoPcError> {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let (pre, mut cost) = self.run_offline(&Control::OfflineStored { id }, rng)?;
        let bytes = match &pre {
            ClientPre::Sg(p) => p.to_bytes()?,
            ClientPre::Cg(p) => p.to_bytes()?,
        };
        let digest = model_digest(&self.public.model)?;
        cost.client_stored = store.put(&id, client_kind(self.variant), &digest, &bytes)?;
        Ok((id, cost))
    }

    fn run_offline<R: RngCore + CryptoRng>(
        &mut self,
        request: &Control,
        rng: &mut R,
    ) -> Result<(ClientPre, RunCost), TwoPcError> {
        let t0 = Instant::now();
        send_ctl(&mut self.ch, request)?;
        let mut meter = crate::protocol::Meter::new(&mut self.ch);
        let (pre, mut cost) = match self.variant {
            Variant::ServerGarbler => {
                let (p, c) = sg::client_offline(&self.public, &mut meter, rng)?;
                (ClientPre::Sg(p), c)
            }
            Variant::ClientGarbler => {
                let (p, c) = cg::client_offline(&self.public, &mut meter, rng)?;
                (ClientPre::Cg(Box::new(p)), c)
            }
        };
        let server_stored = match recv_ctl(&mut meter)? {
            Control::Prepared { server_stored } => server_stored,
            other => {
                return Err(TwoPcError::Protocol(format!(
                    "expected the server's Prepared, got {other:?}"
                )));
            }
        };
        cost.offline_up = meter.sent;
        cost.offline_down = meter.received;
        cost.server_stored = server_stored;
        cost.and_gates = self.public.and_gates();
        cost.offline_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok((pre, cost))
    }

    /// Run one online phase on the first linear layer's quantized input, consuming the oldest
    /// unused preprocessing; the output integers and the online cost.
    pub fn online(&mut self, x: &[i64]) -> Result<(Vec<i64>, RunCost), TwoPcError> {
        let pre = self
            .pending
            .pop_front()
            .ok_or(TwoPcError::NoPreprocessing)?;
        self.run_online(&Control::Online, pre, x)
    }

    /// Run one online phase on the oldest preprocessing in `store` (taken from the disk on both
    /// sides before the phase starts); the output, the cost and the preprocessing's name.
    pub fn online_stored(
        &mut self,
        store: &Store,
        x: &[i64],
    ) -> Result<(Vec<i64>, RunCost, Id), TwoPcError> {
        let digest = model_digest(&self.public.model)?;
        let id = *store
            .ids(client_kind(self.variant), &digest)?
            .first()
            .ok_or(TwoPcError::NoPreprocessing)?;
        let bytes = store.take(&id, client_kind(self.variant), &digest)?;
        let pre = match self.variant {
            Variant::ServerGarbler => ClientPre::Sg(sg::ClientPre::from_bytes(&bytes)?),
            Variant::ClientGarbler => ClientPre::Cg(Box::new(cg::ClientPre::from_bytes(&bytes)?)),
        };
        let (y, cost) = self.run_online(&Control::OnlineStored { id }, pre, x)?;
        Ok((y, cost, id))
    }

    fn run_online(
        &mut self,
        request: &Control,
        pre: ClientPre,
        x: &[i64],
    ) -> Result<(Vec<i64>, RunCost), TwoPcError> {
        let first = self.public.value_len(0);
        if x.len() != first {
            return Err(TwoPcError::Input(format!(
                "{} input values for a first layer of {first}",
                x.len()
            )));
        }
        let t0 = Instant::now();
        send_ctl(&mut self.ch, request)?;
        let mut meter = crate::protocol::Meter::new(&mut self.ch);
        let y = match pre {
            ClientPre::Sg(p) => sg::client_online(&self.public, &mut meter, p, x)?,
            ClientPre::Cg(p) => cg::client_online(&self.public, &mut meter, *p, x)?,
        };
        let cost = RunCost {
            online_up: meter.sent,
            online_down: meter.received,
            online_messages: meter.messages,
            online_ms: t0.elapsed().as_secs_f64() * 1e3,
            online_wait_ms: meter.waited_ns as f64 / 1e6,
            ..RunCost::default()
        };
        Ok((y, cost))
    }

    /// Preprocessings in `store` this session can use (its model and variant).
    pub fn stored(&self, store: &Store) -> Result<usize, TwoPcError> {
        let digest = model_digest(&self.public.model)?;
        Ok(store.ids(client_kind(self.variant), &digest)?.len())
    }

    /// End the session.
    pub fn close(mut self) -> Result<(), TwoPcError> {
        send_ctl(&mut self.ch, &Control::Bye)
    }

    /// The channel (to send a raw message in a test of the server's checks).
    pub fn channel(&mut self) -> &mut C {
        &mut self.ch
    }
}

impl RunCost {
    /// Add an online phase's figures to this offline cost.
    pub fn add_online(&mut self, o: &RunCost) {
        self.online_up += o.online_up;
        self.online_down += o.online_down;
        self.online_ms += o.online_ms;
        self.online_wait_ms += o.online_wait_ms;
        self.online_messages += o.online_messages;
    }
}
