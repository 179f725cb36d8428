//! The data owner: opens a session with the attested enclave, encrypts its input under the
//! enclave's public key, sends it to the server, and opens the sealed result.

use crate::messages::{ClientToServer, ServerToClient};
use crate::{InputEncoding, LheError, LheResult, SessionInfo, open_result};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tessera_engine::qint::ValueQuant;
use tessera_he::linear::encrypt_input;
use tessera_he::wire::{read_params, read_public, write_cts};
use tessera_he::{HeParams, LinearPlan, PublicKey};
use tessera_model::Tensor;
use tessera_runtime::channel::{Channel, ChannelOptions, IDLE_DEADLINE, Role};
use tessera_runtime::{AttestedClient, Counters, Transport};

/// A session's keys and layout, checked against the enclave's evidence.
pub(crate) struct Opened {
    pub info: SessionInfo,
    pub params: HeParams,
    pub public: PublicKey,
}

/// Open a session on an attested channel and check that the public key it carries is the one
/// the evidence binds (and the one the public set-up names).
pub(crate) fn open_session(enclave: &mut AttestedClient) -> Result<Opened, LheError> {
    let bytes = zeroize::Zeroizing::new(enclave.session()?);
    let info: SessionInfo = postcard::from_bytes(&bytes)
        .map_err(|e| LheError::Protocol(format!("the enclave's session does not decode: {e}")))?;
    let hash: [u8; 32] = Sha256::digest(&info.public_key).into();
    if !bool::from(hash.ct_eq(enclave.key_binding())) {
        return Err(LheError::Protocol(
            "the HE public key offered is not the one the enclave's evidence binds; refusing to encrypt under it".into(),
        ));
    }
    if hash != info.setup.public_key_hash {
        return Err(LheError::Protocol(
            "the public set-up names another public key".into(),
        ));
    }
    let params = read_params(&info.setup.params)?;
    let public = read_public(&params, &info.public_key)?;
    Ok(Opened {
        info,
        params,
        public,
    })
}

/// A data owner connected to an enclave (for its session) and to the server.
pub struct DataOwner {
    opened: Opened,
    first: Option<LinearPlan>,
    server: Channel,
    next_request: u64,
}

/// What one inference cost the data owner.
#[derive(Clone, Debug, Default)]
pub struct ClientCost {
    /// Bytes sent to the server.
    pub bytes_up: u64,
    /// Bytes received from the server.
    pub bytes_down: u64,
    /// Time to quantize, encode and encrypt, ns.
    pub encrypt_ns: u64,
}

impl DataOwner {
    /// Open a session with the attested `enclave` and connect to the server over `server`.
    pub fn connect<T: Transport + 'static>(
        enclave: &mut AttestedClient,
        server: T,
        opts: ChannelOptions,
    ) -> Result<Self, LheError> {
        let opened = open_session(enclave)?;
        let first = match opened.info.setup.input {
            InputEncoding::FirstLayer => Some(
                opened
                    .info
                    .setup
                    .layers
                    .first()
                    .ok_or_else(|| LheError::Protocol("the set-up has no layers".into()))?
                    .shape
                    .plan(opened.params.degree())?,
            ),
            InputEncoding::Raw => None,
        };
        let mut ch = Channel::new(server, opts)?;
        ch.handshake(Role::Client, &[Role::Worker])?;
        ch.set_deadline(Some(IDLE_DEADLINE))?;
        Ok(Self {
            opened,
            first,
            server: ch,
            next_request: 1,
        })
    }

    /// The session number the enclave issued.
    pub fn session(&self) -> u64 {
        self.opened.info.session
    }

    /// The HE parameters of the session.
    pub fn params(&self) -> &HeParams {
        &self.opened.params
    }

    /// Byte counters of the connection to the server.
    pub fn counters(&self) -> Arc<Counters> {
        self.server.counters()
    }

    /// Run one inference on `x` (the model's input shape).
    pub fn infer(&mut self, x: &Tensor) -> Result<(LheResult, ClientCost), LheError> {
        let info = &self.opened.info;
        if x.shape() != info.input_shape.as_slice() {
            return Err(LheError::Protocol(format!(
                "input shape {:?} does not match the model's {:?}",
                x.shape(),
                info.input_shape
            )));
        }
        let t0 = std::time::Instant::now();
        let q = ValueQuant {
            scale: info.input_scale,
            lo: info.input_lo,
            hi: info.input_hi,
        };
        let xq = zeroize::Zeroizing::new(
            x.data()
                .iter()
                .map(|&v| q.quantize(v))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let mut rng = rand::rng();
        let cts = match &self.first {
            Some(plan) => encrypt_input(&self.opened.public, plan, &xq, &mut rng)?,
            None => xq
                .chunks(self.opened.params.degree())
                .map(|c| self.opened.public.encrypt(c, &mut rng))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let input = write_cts(&self.opened.params, &cts)?;
        let encrypt_ns = t0.elapsed().as_nanos() as u64;
        let request = self.next_request;
        self.next_request += 1;
        let counters = self.server.counters();
        let (up0, down0, _) = counters.snapshot();
        self.server.send(&ClientToServer::Infer {
            session: info.session,
            request,
            input,
        })?;
        let sealed = match self.server.recv::<ServerToClient>()? {
            ServerToClient::Result { request: r, sealed } if r == request => sealed,
            ServerToClient::Result { request: r, .. } => {
                return Err(LheError::Protocol(format!(
                    "the server answered request {r} for request {request}"
                )));
            }
        };
        let (up1, down1, _) = counters.snapshot();
        let result = open_result(&info.result_key, info.session, request, &sealed)?;
        Ok((
            result,
            ClientCost {
                bytes_up: up1 - up0,
                bytes_down: down1 - down0,
                encrypt_ns,
            },
        ))
    }
}
