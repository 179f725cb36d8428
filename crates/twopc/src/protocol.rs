//! One inference of the server-garbler variant (Delphi) with both parties in this process, each
//! on its own thread, talking only through in-memory channels: the protocol as the separate
//! processes will run it, without the network and the storage of precomputation (next steps of
//! the `2pc` issue).
//!
//! Offline: the client draws a mask `r_i` for every linear layer's input and sends `Enc(r_i)`;
//! the server answers `Enc(W_i·r_i − s_i)` (flooded, switched down) and the client decrypts its
//! shares `c_i`. Then one correlated-OT session whose offset is the server's Δ gives the client
//! the labels of its segment inputs (its shares `c_i` and next masks `r_(i+1)`), and the server
//! garbles every segment with those OT blocks as the 0-labels and sends the material.
//! Online: the client sends `x − r_0`; per layer the server computes its share
//! `a_i = W_i·y_i + b_i + s_i` and sends the labels of `a_i`; the client evaluates the segment
//! and returns the output labels, which the server checks and decodes into the next masked
//! input `y_(i+1) = x_(i+1) − r_(i+1)`; for the last segment the server sends the permute bits
//! of the output wires instead, and only the client decodes the output.

use crate::model::{Cut, Shape};
use crate::{offline, share};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_engine::qint::IntModel;
use tessera_he::linear::PlainWeights;
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::wire::{read_cts, read_public, write_cts, write_public};
use tessera_he::{HeParams, KeyPair, LinearPlan};
use tessera_model::Tensor;
use tessera_mpc::block::Block;
use tessera_mpc::circuit::{Checked, from_bits, to_bits};
use tessera_mpc::garble::{evaluate_checked, garble_with};
use tessera_mpc::ot::iknp::{CotReceiver, CotSender};
use tessera_mpc::ot::{Channel, MemChannel, duplex};
use tessera_mpc::stream::{StreamReader, StreamWriter};

/// Errors of a 2pc run.
#[derive(Debug, thiserror::Error)]
pub enum TwoPcError {
    /// Garbling, OT, circuits.
    #[error(transparent)]
    Mpc(#[from] tessera_mpc::MpcError),
    /// The HE layer.
    #[error(transparent)]
    He(#[from] tessera_he::HeError),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    /// A party's thread failed.
    #[error("2pc: {0}")]
    Party(String),
}

/// What one inference cost, per phase.
#[derive(Clone, Debug, Default)]
pub struct RunCost {
    /// Offline bytes client → server and server → client.
    pub offline_up: u64,
    /// Offline bytes server → client.
    pub offline_down: u64,
    /// Online bytes client → server.
    pub online_up: u64,
    /// Online bytes server → client.
    pub online_down: u64,
    /// Garbled material bytes (part of offline down).
    pub garbled_bytes: u64,
    /// AND gates garbled.
    pub and_gates: u64,
    /// Correlated OTs.
    pub ots: u64,
}

/// A model ready for 2pc: its cut, the HE parameters (with flooding room) and layouts, the
/// server's encoded weights and the segment circuits.
pub struct TwoPc {
    cut: Cut,
    params: HeParams,
    plans: Vec<LinearPlan>,
    weights: Vec<PlainWeights>,
    segments: Vec<Checked>,
    share_bits: usize,
    out_bits: usize,
}

impl TwoPc {
    /// Cut the model, choose parameters, encode the weights, build the circuits.
    pub fn new(int: IntModel) -> Result<Self, TwoPcError> {
        let cut = Cut::new(int)?;
        let needs: Vec<LayerNeed> = cut
            .layers
            .iter()
            .map(|l| {
                let probe = l.shape.plan(4096)?;
                Ok(LayerNeed {
                    name: l.name.clone(),
                    acc_bound: l.acc_bound,
                    x_bound: 1 << 20,
                    w_bound: l
                        .w
                        .iter()
                        .map(|w| u128::from(w.unsigned_abs()))
                        .max()
                        .unwrap_or(1),
                    terms: probe.terms(),
                    products: probe.max_products(),
                    product: Product::Plain,
                })
            })
            .collect::<Result<_, tessera_he::HeError>>()?;
        let params = HeParams::choose(
            &needs,
            ParamOptions {
                flood: true,
                ..ParamOptions::default()
            },
        )?;
        let plans = cut
            .layers
            .iter()
            .map(|l| l.shape.plan(params.degree()))
            .collect::<Result<Vec<_>, _>>()?;
        let weights = cut
            .layers
            .iter()
            .zip(&plans)
            .map(|(l, p)| PlainWeights::new(&params, p.clone(), &l.w, &vec![0; l.b.len()]))
            .collect::<Result<Vec<_>, _>>()?;
        let share_bits = params.plain_bits as usize;
        let oq = cut.int.output_quant()?;
        let out_bits = (129 - oq.max_abs().leading_zeros()) as usize + 1;
        let segments = (0..cut.layers.len())
            .map(|i| cut.segment(i, share_bits, out_bits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cut,
            params,
            plans,
            weights,
            segments,
            share_bits,
            out_bits,
        })
    }

    /// The first linear layer's input: the client runs the ops before it on its own input.
    fn first_input(&self, xq: &Tensor<i64>) -> Result<Tensor<i64>, TwoPcError> {
        let first = self.cut.layers.first().map(|l| l.node);
        let mut captured: Option<Tensor<i64>> = None;
        let res = self.cut.int.run_split(xq, &mut |k, input, _| {
            if Some(k) == first {
                captured = Some(input.clone());
                // Stop here: nothing after the first linear layer runs in the clear.
                return Err(tessera_engine::EngineError::Internal("stop".into()));
            }
            Ok(None)
        });
        match (captured, res) {
            (Some(t), _) => Ok(t),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(_)) => Err(TwoPcError::Party("the model has no linear layer".into())),
        }
    }

    /// Segments (one garbled circuit and one online round each).
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The HE parameters, in words.
    pub fn describe(&self) -> String {
        format!(
            "{}; {} segments, {} AND gates per inference",
            self.params.describe(),
            self.segments.len(),
            self.segments.iter().map(|s| s.and_count()).sum::<usize>()
        )
    }

    /// Run one inference on `x`; returns the output integers and the cost.
    pub fn infer(&self, x: &Tensor, seed: u64) -> Result<(Tensor<i64>, RunCost), TwoPcError> {
        let xq = self.first_input(&self.cut.int.quantize_input(x)?)?;
        let out_shape = {
            let g = self.cut.int.graph();
            g.outputs
                .first()
                .map(|&v| g.shape(v).to_vec())
                .unwrap_or_default()
        };
        let (mut sch, mut cch) = duplex();
        let (mut sot, mut cot) = duplex();
        let result = std::thread::scope(|s| {
            let server = s.spawn(move || self.server(&mut sch, &mut sot, seed));
            let client = self.client(&mut cch, &mut cot, xq.data(), seed ^ 0x5eed);
            let server = server
                .join()
                .map_err(|_| TwoPcError::Party("the server thread panicked".into()))?;
            Ok::<_, TwoPcError>((server?, client?))
        })?;
        let (cost_s, (y, cost_c)) = result;
        let cost = RunCost {
            offline_up: cost_c.offline_up,
            offline_down: cost_s.offline_down,
            online_up: cost_c.online_up,
            online_down: cost_s.online_down,
            garbled_bytes: cost_s.garbled_bytes,
            and_gates: cost_s.and_gates,
            ots: cost_c.ots,
        };
        Ok((
            Tensor::new(out_shape, y).map_err(tessera_engine::EngineError::from)?,
            cost,
        ))
    }

    fn server(
        &self,
        ch: &mut MemChannel,
        ot: &mut MemChannel,
        seed: u64,
    ) -> Result<RunCost, TwoPcError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let bits = self.share_bits;
        let mut cost = RunCost::default();
        // Offline, HE: the client's key and masks.
        let pk = read_public(&self.params, &ch.recv()?)?;
        let mut ss = Vec::with_capacity(self.plans.len());
        for (i, w) in self.weights.iter().enumerate() {
            let enc_r = read_cts(&self.params, &ch.recv()?, self.plans[i].n_inputs())?;
            let (s, answer) = offline::server_answer(
                &self.params,
                &pk,
                w,
                self.cut.layers[i].shape.outputs().0,
                &enc_r,
                &mut rng,
            )?;
            let bytes = write_cts(&self.params, &answer)?;
            cost.offline_down += bytes.len() as u64;
            ch.send(bytes)?;
            ss.push(s);
        }
        // Offline, OT and garbling.
        let delta = Block(rng.random::<u128>() | 1);
        let mut cots = CotSender::setup(ot, &mut rng, b"tessera-2pc", delta)?;
        let n_ot: usize = (0..self.segments.len())
            .map(|i| self.segments[i].input_bits() - self.server_bits(i))
            .sum();
        let qs = cots.extend(ot, n_ot)?;
        let mut q_at = 0;
        let mut garbled = Vec::with_capacity(self.segments.len());
        for (i, seg) in self.segments.iter().enumerate() {
            let own = self.server_bits(i);
            let n_client = seg.input_bits() - own;
            let mut zero: Vec<Block> = (0..own).map(|_| Block(rng.random())).collect();
            zero.extend_from_slice(&qs[q_at..q_at + n_client]);
            q_at += n_client;
            let mut w = StreamWriter::new(Vec::new());
            let g = garble_with(seg, delta, zero, &mut rng, &mut w)?;
            let material = w.into_inner();
            cost.garbled_bytes += material.len() as u64;
            cost.offline_down += material.len() as u64;
            cost.and_gates += seg.and_count() as u64;
            ch.send(material)?;
            garbled.push(g);
        }
        // Online.
        let mut y: Vec<u64> = unpack(&ch.recv()?, bits)?;
        let last = self.segments.len() - 1;
        for (i, layer) in self.cut.layers.iter().enumerate() {
            let lin = match &layer.shape {
                Shape::Conv(s) => share::conv(s, &y, &layer.w, &layer.b, bits),
                Shape::Dense { k, m } => share::dense(*k, *m, &y, &layer.w, &layer.b, bits),
            };
            let a: Vec<bool> = lin
                .iter()
                .zip(&ss[i])
                .flat_map(|(&v, &s)| {
                    to_bits(u128::from(share::reduce(v.wrapping_add(s), bits)), bits)
                })
                .collect();
            let labels = garbled[i].inputs.encode(0, &a)?;
            let msg = blocks_bytes(&labels);
            cost.online_down += msg.len() as u64;
            ch.send(msg)?;
            if i == last {
                let d: Vec<u8> = garbled[i]
                    .decoding
                    .bits
                    .iter()
                    .map(|&b| u8::from(b))
                    .collect();
                cost.online_down += d.len() as u64;
                ch.send(d)?;
            } else {
                let out = bytes_blocks(&ch.recv()?)?;
                let bits_out = garbled[i].check.check(&out)?;
                y = bits_out.chunks(bits).map(|c| from_bits(c) as u64).collect();
            }
        }
        Ok(cost)
    }

    /// The server's input bits of segment `i`: its shares of the layer's accumulators, which
    /// come first among the segment's inputs.
    fn server_bits(&self, i: usize) -> usize {
        self.cut
            .layers
            .get(i)
            .map_or(0, |l| l.shape.outputs().0 * self.share_bits)
    }

    fn client(
        &self,
        ch: &mut MemChannel,
        ot: &mut MemChannel,
        x: &[i64],
        seed: u64,
    ) -> Result<(Vec<i64>, RunCost), TwoPcError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let bits = self.share_bits;
        let mut cost = RunCost::default();
        let keys = KeyPair::generate(&self.params, &mut rng);
        let pk = write_public(&keys.public)?;
        cost.offline_up += pk.len() as u64;
        ch.send(pk)?;
        let mut rs = Vec::with_capacity(self.plans.len());
        let mut cs = Vec::with_capacity(self.plans.len());
        for (i, plan) in self.plans.iter().enumerate() {
            let (r, enc) = offline::client_mask(
                &keys.public,
                plan,
                self.cut.layers[i].shape.inputs(),
                &mut rng,
            )?;
            let bytes = write_cts(&self.params, &enc)?;
            cost.offline_up += bytes.len() as u64;
            ch.send(bytes)?;
            let answer = read_cts(&self.params, &ch.recv()?, plan.n_outputs())?;
            cs.push(offline::client_share(&keys.secret, plan, &answer)?);
            rs.push(r);
        }
        // The client's segment inputs: its shares and the next layer's mask.
        let mut choices = Vec::new();
        for (i, c_i) in cs.iter().enumerate() {
            for &c in c_i {
                choices.extend(to_bits(u128::from(c), bits));
            }
            if let Some(r) = rs.get(i + 1) {
                for &v in r {
                    choices.extend(to_bits(u128::from(v), bits));
                }
            }
        }
        let mut cotr = CotReceiver::setup(ot, &mut rng, b"tessera-2pc")?;
        let ts = cotr.extend(ot, &choices)?;
        cost.ots = ts.len() as u64;
        let materials: Vec<Vec<u8>> = (0..self.segments.len())
            .map(|_| ch.recv())
            .collect::<Result<_, _>>()?;
        // Online.
        let y0: Vec<u64> = x
            .iter()
            .zip(&rs[0])
            .map(|(&v, &r)| share::reduce(share::residue(v, bits).wrapping_sub(r), bits))
            .collect();
        let msg = pack(&y0, bits);
        cost.online_up += msg.len() as u64;
        ch.send(msg)?;
        let mut t_at = 0;
        let last = self.segments.len() - 1;
        let mut out = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            let server_labels = bytes_blocks(&ch.recv()?)?;
            let n_client = seg.input_bits() - server_labels.len();
            let mut labels = server_labels;
            labels.extend_from_slice(&ts[t_at..t_at + n_client]);
            t_at += n_client;
            let res = evaluate_checked(
                seg,
                &labels,
                &mut StreamReader::new(materials[i].as_slice()),
            )?;
            if i == last {
                let d = ch.recv()?;
                if d.len() != res.len() {
                    return Err(TwoPcError::Party(
                        "decoding bits of the wrong length".into(),
                    ));
                }
                let bits_out: Vec<bool> = res
                    .iter()
                    .zip(&d)
                    .map(|(l, &b)| l.lsb() ^ (b == 1))
                    .collect();
                out = bits_out
                    .chunks(self.out_bits)
                    .map(|c| share::signed(from_bits(c) as u64, self.out_bits))
                    .collect();
            } else {
                let msg = blocks_bytes(&res);
                cost.online_up += msg.len() as u64;
                ch.send(msg)?;
            }
        }
        Ok((out, cost))
    }
}

fn blocks_bytes(b: &[Block]) -> Vec<u8> {
    b.iter().flat_map(|x| x.to_bytes()).collect()
}

fn bytes_blocks(b: &[u8]) -> Result<Vec<Block>, TwoPcError> {
    if !b.len().is_multiple_of(16) {
        return Err(TwoPcError::Party("labels of the wrong length".into()));
    }
    Ok(b.chunks_exact(16)
        .map(|c| {
            let mut a = [0u8; 16];
            a.copy_from_slice(c);
            Block::from_bytes(a)
        })
        .collect())
}

fn pack(v: &[u64], _bits: usize) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unpack(b: &[u8], bits: usize) -> Result<Vec<u64>, TwoPcError> {
    if !b.len().is_multiple_of(8) {
        return Err(TwoPcError::Party("masked input of the wrong length".into()));
    }
    Ok(b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            share::reduce(u64::from_le_bytes(a), bits)
        })
        .collect())
}
