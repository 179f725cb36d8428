//! What the client of `2pc` knows of the model: the architecture, not the weights.
//!
//! The server sends a [`PublicModel`] when a session opens: the input's shape and grid, each
//! linear layer's geometry, its requantization constants (per-channel multipliers, shift,
//! clamp) and the ops up to the next linear layer, the output's shape and scale, and the HE
//! parameters. Both parties build the segment circuits and the HE layouts from it with the same
//! code ([`Public::new`]), so they agree gate for gate. The weights and biases never leave the
//! server; the requantization constants are public (they shape the circuits the client
//! evaluates or garbles), which is what Delphi assumes of its fixed-point scales too.
//!
//! A public model comes from a peer, so [`PublicModel::validate`] bounds every size before a
//! circuit is built, and the client checks that the HE parameters are 128-bit secure
//! ([`HeParams::explicit`]): its masks are encrypted under them.

use crate::model::{Post, Shape};
use crate::protocol::TwoPcError;
use serde::{Deserialize, Serialize};
use tessera_engine::qint::ValueQuant;
use tessera_he::{HeParams, LinearPlan};
use tessera_mpc::MpcError;
use tessera_mpc::circuit::{Bit, Builder, Checked, Word};

/// Version of the public description.
pub const PUBLIC_VERSION: u16 = 1;

/// Most values one layer may have on either side (a bound on what a peer can make us build).
pub const MAX_VALUES: usize = 1 << 22;

/// Most linear layers.
pub const MAX_LAYERS: usize = 4096;

/// One linear layer without its weights, and the segment after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicLayer {
    /// The layer's name in the model.
    pub name: String,
    /// Its geometry.
    pub shape: Shape,
    /// Per output channel: the requantization multiplier.
    pub mult: Vec<i64>,
    /// The requantization shift.
    pub shift: u32,
    /// Saturation bounds after requantization.
    pub lo: i64,
    /// Saturation bounds after requantization.
    pub hi: i64,
    /// The ops up to the next linear layer.
    pub posts: Vec<Post>,
    /// Values the segment hands on.
    pub out_len: usize,
}

/// The model as the client sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicModel {
    /// [`PUBLIC_VERSION`].
    pub version: u16,
    /// The input tensor's shape.
    pub input_shape: Vec<usize>,
    /// The input's grid (the client quantizes its input on it).
    pub input: ValueQuant,
    /// The output tensor's shape.
    pub output_shape: Vec<usize>,
    /// The real value of one output step.
    pub output_scale: f64,
    /// Width of the output integers in the last circuit.
    pub out_bits: usize,
    /// The HE parameters in their wire form (`tessera_he::wire::write_params`): the client
    /// rebuilds them and checks their security before it encrypts anything under them.
    pub he: Vec<u8>,
    /// Linear layers in order.
    pub layers: Vec<PublicLayer>,
}

fn bad(what: impl Into<String>) -> TwoPcError {
    TwoPcError::Protocol(format!("the server's model description: {}", what.into()))
}

fn checked_len(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
}

impl PublicModel {
    /// Check every size and constant before anything is built from it.
    pub fn validate(&self) -> Result<(), TwoPcError> {
        if self.version != PUBLIC_VERSION {
            return Err(bad(format!(
                "version {} (this build reads {PUBLIC_VERSION})",
                self.version
            )));
        }
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return Err(bad(format!("{} linear layers", self.layers.len())));
        }
        let q = &self.input;
        if !(q.scale.is_finite() && q.scale > 0.0) || q.lo > q.hi {
            return Err(bad("the input grid is not a positive scale over lo ≤ hi"));
        }
        if !(self.output_scale.is_finite() && self.output_scale > 0.0) {
            return Err(bad("the output scale is not positive"));
        }
        if !(2..=62).contains(&self.out_bits) {
            return Err(bad(format!("{}-bit outputs", self.out_bits)));
        }
        let n_in = checked_len(&self.input_shape).ok_or_else(|| bad("input too large"))?;
        let n_out = checked_len(&self.output_shape).ok_or_else(|| bad("output too large"))?;
        let mut expect = n_in;
        for l in &self.layers {
            let name = &l.name;
            let sizes_ok = match &l.shape {
                Shape::Conv(s) => {
                    s.c_in > 0
                        && s.c_out > 0
                        && s.groups > 0
                        && s.k.iter().chain(&s.stride).chain(&s.dil).all(|&v| v > 0)
                        && s.c_in.checked_mul(s.h).and_then(|v| v.checked_mul(s.w))
                            <= Some(MAX_VALUES)
                        && s.c_out <= MAX_VALUES
                        && s.c_in.is_multiple_of(s.groups)
                        && s.c_out.is_multiple_of(s.groups)
                        && s.pads.iter().all(|&p| p < 1 << 16)
                        && s.k.iter().chain(&s.dil).all(|&v| v < 1 << 16)
                        && {
                            let (hp, wp) = s.padded();
                            let (kh, kw) = s.extent();
                            kh <= hp && kw <= wp && {
                                let (oh, ow) = s.out_hw();
                                s.c_out.checked_mul(oh).and_then(|v| v.checked_mul(ow))
                                    <= Some(MAX_VALUES)
                            }
                        }
                }
                Shape::Dense { k, m } => *k > 0 && *m > 0 && *k <= MAX_VALUES && *m <= MAX_VALUES,
            };
            if !sizes_ok {
                return Err(bad(format!("layer '{name}' has an impossible geometry")));
            }
            if l.shape.inputs() != expect {
                return Err(bad(format!(
                    "layer '{name}' takes {} values where {expect} arrive",
                    l.shape.inputs()
                )));
            }
            let (n, ch) = l.shape.outputs();
            if n == 0 || n > MAX_VALUES || l.mult.len() != ch {
                return Err(bad(format!(
                    "layer '{name}': {n} outputs, {} multipliers for {ch} channels",
                    l.mult.len()
                )));
            }
            if l.mult.iter().any(|m| m.unsigned_abs() >= 1 << 32) || l.shift > 62 || l.lo > l.hi {
                return Err(bad(format!(
                    "layer '{name}' has requantization constants out of range"
                )));
            }
            let mut len = n;
            for p in &l.posts {
                match p {
                    Post::Clamp { lo, hi } if lo > hi => {
                        return Err(bad(format!("layer '{name}': a clamp with lo > hi")));
                    }
                    Post::Clamp { .. } => {}
                    Post::MaxPool { windows } => {
                        let total: usize = windows.iter().map(Vec::len).sum();
                        if windows.is_empty()
                            || total > MAX_VALUES
                            || windows
                                .iter()
                                .any(|w| w.is_empty() || w.iter().any(|&i| i >= len))
                        {
                            return Err(bad(format!(
                                "layer '{name}': a max pool with an empty or out-of-range window"
                            )));
                        }
                        len = windows.len();
                    }
                }
            }
            if len != l.out_len {
                return Err(bad(format!(
                    "layer '{name}' hands on {len} values, not the {} it says",
                    l.out_len
                )));
            }
            expect = l.out_len;
        }
        if expect != n_out {
            return Err(bad(format!(
                "the last segment yields {expect} values for an output of {n_out}"
            )));
        }
        Ok(())
    }

    /// The input quantized on its grid, in the model's layout.
    pub fn quantize(&self, x: &[f32], shape: &[usize]) -> Result<Vec<i64>, TwoPcError> {
        if shape != self.input_shape.as_slice() {
            return Err(TwoPcError::Input(format!(
                "the input has shape {shape:?}; the model takes {:?}",
                self.input_shape
            )));
        }
        x.iter()
            .map(|&v| {
                if !v.is_finite() {
                    return Err(TwoPcError::Input(format!("input value {v} is not finite")));
                }
                let r = (f64::from(v) / self.input.scale).round();
                Ok(r.clamp(self.input.lo as f64, self.input.hi as f64) as i64)
            })
            .collect()
    }
}

/// The segment circuit after `layer`: inputs the server's shares, the client's shares (ℓ bits
/// each, one per accumulator) and — unless it is the last — the client's masks of the next
/// input (ℓ bits each); outputs the next input minus its mask (ℓ bits each), or for the last
/// segment the model's output values as signed `out_bits`-bit integers.
pub fn segment_circuit(
    layer: &PublicLayer,
    last: bool,
    share_bits: usize,
    out_bits: usize,
) -> Result<Checked, MpcError> {
    use crate::gadget::{Requant, requant_value};
    let (n, channels) = layer.shape.outputs();
    let per = n / channels.max(1);
    let mut b = Builder::new();
    let a: Vec<Word> = (0..n).map(|_| b.input(share_bits)).collect();
    let c: Vec<Word> = (0..n).map(|_| b.input(share_bits)).collect();
    let r: Vec<Word> = if last {
        Vec::new()
    } else {
        (0..layer.out_len).map(|_| b.input(share_bits)).collect()
    };
    let mut vals: Vec<Word> = Vec::with_capacity(n);
    for (j, (aj, cj)) in a.iter().zip(&c).enumerate() {
        let q = Requant {
            share_bits,
            mult: layer.mult.get(j / per.max(1)).copied().unwrap_or(1),
            shift: layer.shift,
            lo: layer.lo,
            hi: layer.hi,
            out_bits: share_bits,
        };
        vals.push(requant_value(&mut b, &q, aj, cj)?);
    }
    let window_err = || {
        MpcError::Circuit(format!(
            "a max pool after '{}' reads outside its input",
            layer.name
        ))
    };
    for p in &layer.posts {
        vals = match p {
            Post::Clamp { lo, hi } => vals
                .iter()
                .map(|v| {
                    let w = v.len();
                    let mut v = v.clone();
                    if i128::from(*lo) > -(1i128 << (w - 1)) {
                        let lo_w = b.constant(i128::from(*lo), w);
                        let below = b.lt_signed(&v, &lo_w);
                        v = b.mux_word(below, &lo_w, &v);
                    }
                    if *hi < i64::MAX && i128::from(*hi) < (1i128 << (w - 1)) {
                        let hi_w = b.constant(i128::from(*hi), w);
                        let above = b.lt_signed(&hi_w, &v);
                        v = b.mux_word(above, &hi_w, &v);
                    }
                    v
                })
                .collect(),
            Post::MaxPool { windows } => windows
                .iter()
                .map(|win| {
                    let (first, rest) = win.split_first().ok_or_else(window_err)?;
                    let mut m = vals.get(*first).ok_or_else(window_err)?.clone();
                    for idx in rest {
                        let x = vals.get(*idx).ok_or_else(window_err)?;
                        let lt = b.lt_signed(&m, x);
                        m = b.mux_word(lt, x, &m);
                    }
                    Ok(m)
                })
                .collect::<Result<_, MpcError>>()?,
        };
    }
    if vals.len() != layer.out_len {
        return Err(MpcError::Circuit(format!(
            "segment after '{}' yields {} values for {}",
            layer.name,
            vals.len(),
            layer.out_len
        )));
    }
    for (j, v) in vals.iter().enumerate() {
        let sign = v.last().copied().unwrap_or(Bit::Const(false));
        let width = if last { out_bits } else { share_bits };
        let x: Word = (0..width)
            .map(|k| v.get(k).copied().unwrap_or(sign))
            .collect();
        if last {
            b.output(&x);
        } else {
            let rj = r.get(j).ok_or_else(window_err)?;
            let masked = b.sub(&x, rj);
            b.output(&masked);
        }
    }
    Checked::new(b.finish()?)
}

/// What both parties derive from the public model: the HE parameters and layouts, and the
/// segment circuits.
pub struct Public {
    /// The description it was built from.
    pub model: PublicModel,
    /// The HE parameters (the server's carry its flooding bound).
    pub params: HeParams,
    /// Each linear layer's HE layout.
    pub plans: Vec<LinearPlan>,
    /// Each segment's circuit.
    pub segments: Vec<Checked>,
    /// ℓ.
    pub share_bits: usize,
}

impl Public {
    /// Build from `model` (validated here); `params` are the server's own, `None` on the client,
    /// which rebuilds them from the description and checks their security.
    pub fn new(model: PublicModel, params: Option<HeParams>) -> Result<Self, TwoPcError> {
        model.validate()?;
        let params = match params {
            Some(p) => p,
            None => tessera_he::wire::read_params(&model.he)?,
        };
        let share_bits = params.plain_bits as usize;
        let plans = model
            .layers
            .iter()
            .map(|l| l.shape.plan(params.degree()))
            .collect::<Result<Vec<_>, _>>()?;
        let last = model.layers.len() - 1;
        let segments = model
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| segment_circuit(l, i == last, share_bits, model.out_bits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            model,
            params,
            plans,
            segments,
            share_bits,
        })
    }

    /// The server's input bits of segment `i` (its shares, first among the inputs).
    pub fn server_bits(&self, i: usize) -> usize {
        self.model
            .layers
            .get(i)
            .map_or(0, |l| l.shape.outputs().0 * self.share_bits)
    }

    /// AND gates per inference.
    pub fn and_gates(&self) -> u64 {
        self.segments.iter().map(|s| s.and_count() as u64).sum()
    }

    /// Non-linear activations per inference (accumulators that go through a segment).
    pub fn activations(&self) -> u64 {
        self.model
            .layers
            .iter()
            .map(|l| l.shape.outputs().0 as u64)
            .sum()
    }
}
