//! `2pc` (Delphi's server-garbler variant, or CryptoNite's client-garbler): a client holding the
//! input and a server holding the model, no TEE — the linear layers on additive shares
//! preprocessed with HE, the non-linear layers as garbled circuits. Both parties run in this
//! process on their own threads over an in-memory channel, one session per inference (the
//! same session code the separate processes run, `tessera_twopc::session`).

use crate::{Cost, Inference, Link, Scheme, SchemeError};
use std::time::Duration;
use tessera_engine::{ExactModel, Semantics, argmax};
use tessera_model::stats::stats;
use tessera_model::{Graph, Tensor};
use tessera_twopc::protocol::TwoPc as Protocol;
use tessera_twopc::session::Variant;

/// The `2pc` scheme with both parties in this process.
pub struct TwoPc {
    protocol: Protocol,
    scale: f64,
    macs: u64,
    rounds: u64,
    next_seed: u64,
    variant: Variant,
}

fn unsupported(e: impl std::fmt::Display) -> SchemeError {
    SchemeError::Unsupported(e.to_string())
}

/// The model lowered to v2, or why 2pc cannot take it.
pub(crate) fn lowered(
    graph: &Graph,
    semantics: &Semantics,
) -> Result<tessera_engine::qint::IntModel, SchemeError> {
    match ExactModel::new(graph, semantics)? {
        ExactModel::V2(m) => Ok(m),
        ExactModel::Pow2(_) => Err(unsupported(
            "2pc reproduces the integer semantics v2 (its shares need every accumulator's proven bound); run with --semantics v2 or --calibrate DATA",
        )),
    }
}

impl TwoPc {
    /// Cut the model, choose the HE parameters, build the segment circuits (server-garbler).
    pub fn new(graph: &Graph, semantics: &Semantics) -> Result<Self, SchemeError> {
        Self::with_variant(graph, semantics, Variant::ServerGarbler)
    }

    /// The same in `variant`.
    pub fn with_variant(
        graph: &Graph,
        semantics: &Semantics,
        variant: Variant,
    ) -> Result<Self, SchemeError> {
        let int = lowered(graph, semantics)?;
        let scale = int.output_quant()?.scale;
        let protocol = Protocol::new(int).map_err(unsupported)?;
        let rounds = protocol.segments() as u64;
        Ok(Self {
            protocol,
            scale,
            macs: stats(graph).macs,
            rounds,
            next_seed: rand::random(),
            variant,
        })
    }

    /// The parameters and circuit sizes, in words.
    pub fn describe(&self) -> String {
        self.protocol.describe()
    }
}

impl Scheme for TwoPc {
    fn name(&self) -> &'static str {
        "2pc"
    }
    fn protects(&self) -> &'static str {
        "data from the server, the model from the client (HE + garbled circuits); no TEE"
    }
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError> {
        self.next_seed = self.next_seed.wrapping_add(1);
        let (exact, c) = self
            .protocol
            .infer(input, self.next_seed, self.variant)
            .map_err(|e| SchemeError::Unsupported(e.to_string()))?;
        let output = exact.map(|&v| (v as f64 * self.scale) as f32);
        let class = argmax(output.data());
        let offline = Duration::from_secs_f64(c.offline_ms.max(0.0) / 1e3);
        let cost = Cost {
            latency: Duration::from_secs_f64(c.online_ms.max(0.0) / 1e3),
            offline,
            // Embedded, each inference runs its offline phase right before its online one.
            waited: offline,
            stored_client: c.client_stored,
            stored_server: c.server_stored,
            total_macs: self.macs,
            ..Cost::default()
        }
        .with_links(vec![Link {
            name: "client-server".into(),
            up: c.online_up,
            down: c.online_down,
            rounds: self.rounds,
            offline_up: c.offline_up,
            offline_down: c.offline_down,
        }]);
        Ok(Inference {
            output,
            exact,
            scale: self.scale,
            class,
            cost,
        })
    }
}
