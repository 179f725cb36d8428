//! A model lowered to the integer semantics v2, cut for `2pc` into linear layers (computed on
//! shares, preprocessed with HE) and the non-linear segments between them (one boolean circuit
//! each): the linear layer's requantization and clamp, then the ReLUs, clips, max pools and
//! reshapes up to the next linear layer, whose input the segment re-masks.
//!
//! Segments run the ops v2 defines for them exactly (`tessera_engine::qint`): ReLU as
//! `max(x, 0)`, Clip as a clamp, MaxPool as the maximum over each window's in-range positions.
//! Other ops between linear layers (average pools, residual adds, concatenations, tables) are
//! refused by name for now. Ops before the first linear layer run on the client, in the clear,
//! on its own input (it learns their constants, such as an input normalisation).

use crate::public::{PublicLayer, segment_circuit};
use tessera_engine::qint::{IntModel, IntOp};
use tessera_engine::window::pool_geometry;
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_model::ir::Op;
use tessera_mpc::MpcError;
use tessera_mpc::circuit::Checked;

/// A linear layer's geometry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shape {
    /// A convolution.
    Conv(ConvShape),
    /// A dense layer `[m, k]`.
    Dense {
        /// Inputs.
        k: usize,
        /// Outputs.
        m: usize,
    },
}

impl Shape {
    /// The HE layout at ring degree `n`.
    pub fn plan(&self, n: usize) -> Result<LinearPlan, tessera_he::HeError> {
        Ok(match self {
            Shape::Conv(s) => LinearPlan::Conv(ConvPlan::new(*s, n)?),
            Shape::Dense { k, m } => LinearPlan::Dense(DensePlan::new(*k, *m, n)?),
        })
    }

    /// Input values.
    pub fn inputs(&self) -> usize {
        match self {
            Shape::Conv(s) => s.c_in * s.h * s.w,
            Shape::Dense { k, .. } => *k,
        }
    }

    /// Output values and channels.
    pub fn outputs(&self) -> (usize, usize) {
        match self {
            Shape::Conv(s) => {
                let (oh, ow) = s.out_hw();
                (s.c_out * oh * ow, s.c_out)
            }
            Shape::Dense { m, .. } => (*m, *m),
        }
    }
}

/// One op after a linear layer, before the next.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Post {
    /// `clamp(x, lo, hi)` (ReLU is `lo = 0, hi = +∞`).
    Clamp {
        /// Lower bound.
        lo: i64,
        /// Upper bound.
        hi: i64,
    },
    /// The maximum over each output's in-range window positions (input index lists).
    MaxPool {
        /// Per output value, the input indices of its window.
        windows: Vec<Vec<usize>>,
    },
}

/// A linear layer and the segment that follows it.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The graph node.
    pub node: usize,
    /// Its name.
    pub name: String,
    /// Its geometry.
    pub shape: Shape,
    /// Integer weights (`[C_out, C_in/g, kh, kw]` or `[m, k]`) and biases.
    pub w: Vec<i64>,
    /// Biases.
    pub b: Vec<i64>,
    /// Per output channel: multiplier; and the layer's shift and clamp.
    pub mult: Vec<i64>,
    /// Shift.
    pub shift: u32,
    /// Clamp bounds of the requantization.
    pub lo: i64,
    /// Clamp bounds of the requantization.
    pub hi: i64,
    /// The ops up to the next linear layer.
    pub posts: Vec<Post>,
    /// Values the segment hands on (the next layer's input, or the model's output).
    pub out_len: usize,
    /// Proven bound of the accumulators.
    pub acc_bound: u128,
}

/// The model cut for 2pc.
#[derive(Clone, Debug)]
pub struct Cut {
    /// The lowered model.
    pub int: IntModel,
    /// Linear layers in order, each with the segment after it.
    pub layers: Vec<Layer>,
    /// The ops before the first linear layer that are more than a reshape: the client runs
    /// them on its own input, in the clear, so it must have them (the embedded scheme does;
    /// a remote client has only the public description, which cannot carry them).
    pub prefix: Vec<String>,
}

fn unsupported(node: &str, what: &str) -> MpcError {
    MpcError::Circuit(format!("2pc cannot run node '{node}' ({what}) yet"))
}

impl Cut {
    /// Cut `int` (a chain: input → linear → segment → linear → … → output).
    pub fn new(int: IntModel) -> Result<Self, MpcError> {
        let g = int.graph().clone();
        let mut layers: Vec<Layer> = Vec::new();
        let mut prefix = Vec::new();
        for (k, node) in g.nodes.iter().enumerate() {
            let op = int
                .op(k)
                .ok_or_else(|| unsupported(&node.name, "not lowered"))?;
            let in_shape = node
                .inputs
                .first()
                .map(|&v| g.shape(v).to_vec())
                .unwrap_or_default();
            let out_shape = g.shape(node.output).to_vec();
            match (op, &node.op) {
                (IntOp::Linear(l), Op::Conv(c)) => {
                    let &[1, c_in, h, w] = in_shape.as_slice() else {
                        return Err(unsupported(&node.name, "a conv not on [1, C, H, W]"));
                    };
                    let ws = c.weight.shape();
                    let shape = Shape::Conv(ConvShape {
                        c_in,
                        h,
                        w,
                        c_out: ws[0],
                        k: [ws[2], ws[3]],
                        stride: c.strides,
                        pads: c.pads,
                        dil: c.dilations,
                        groups: c.groups,
                    });
                    layers.push(Self::layer(&int, k, &node.name, shape, l)?);
                }
                (IntOp::Linear(l), Op::Dense(d)) => {
                    let &[1, k_in] = in_shape.as_slice() else {
                        return Err(unsupported(&node.name, "a dense layer not on [1, K]"));
                    };
                    let shape = Shape::Dense {
                        k: k_in,
                        m: d.weight.shape()[0],
                    };
                    layers.push(Self::layer(&int, k, &node.name, shape, l)?);
                }
                // Before the first linear layer the client computes on its own input in the
                // clear (input normalisation and the like; it learns their constants).
                (_, _) if layers.is_empty() && !matches!(op, IntOp::Linear(_)) => {
                    if !matches!(op, IntOp::Pass) {
                        prefix.push(node.name.clone());
                    }
                }
                (IntOp::Relu, _)
                | (IntOp::Clip { .. }, _)
                | (IntOp::MaxPool, _)
                | (IntOp::Pass, _) => {
                    let last = layers.last_mut().ok_or_else(|| {
                        unsupported(&node.name, "an op before the first linear layer")
                    })?;
                    match (op, &node.op) {
                        (IntOp::Relu, _) => last.posts.push(Post::Clamp {
                            lo: 0,
                            hi: i64::MAX,
                        }),
                        (IntOp::Clip { lo, hi }, _) => {
                            last.posts.push(Post::Clamp { lo: *lo, hi: *hi })
                        }
                        (IntOp::MaxPool, Op::MaxPool(p)) => {
                            let geo = pool_geometry(p, &in_shape, &out_shape);
                            let c = in_shape.get(1).copied().unwrap_or(1);
                            let mut windows = Vec::with_capacity(c * geo.oh * geo.ow);
                            for ch in 0..c {
                                for oy in 0..geo.oh {
                                    for ox in 0..geo.ow {
                                        let mut win = Vec::new();
                                        for ky in 0..geo.k[0] {
                                            let iy = (oy * geo.s[0] + ky * geo.d[0]) as isize
                                                - geo.p[0] as isize;
                                            if iy < 0 || iy >= geo.h as isize {
                                                continue;
                                            }
                                            for kx in 0..geo.k[1] {
                                                let ix = (ox * geo.s[1] + kx * geo.d[1]) as isize
                                                    - geo.p[1] as isize;
                                                if ix < 0 || ix >= geo.w as isize {
                                                    continue;
                                                }
                                                win.push(
                                                    (ch * geo.h + iy as usize) * geo.w
                                                        + ix as usize,
                                                );
                                            }
                                        }
                                        if win.is_empty() {
                                            return Err(unsupported(
                                                &node.name,
                                                "a pooling window with no input",
                                            ));
                                        }
                                        windows.push(win);
                                    }
                                }
                            }
                            last.posts.push(Post::MaxPool { windows });
                        }
                        (IntOp::MaxPool, _) => {
                            return Err(unsupported(&node.name, "a max pool without its window"));
                        }
                        _ => {}
                    }
                    last.out_len = out_shape.iter().product();
                }
                (other, _) => return Err(unsupported(&node.name, other.kind())),
            }
        }
        if layers.is_empty() {
            return Err(MpcError::Circuit("the model has no linear layer".into()));
        }
        Ok(Self {
            int,
            layers,
            prefix,
        })
    }

    fn layer(
        int: &IntModel,
        k: usize,
        name: &str,
        shape: Shape,
        l: &tessera_engine::qint::IntLinear,
    ) -> Result<Layer, MpcError> {
        let g = int.graph();
        let input = g
            .nodes
            .get(k)
            .and_then(|n| n.inputs.first().copied())
            .ok_or_else(|| unsupported(name, "no input"))?;
        let xq = int
            .value(input)
            .ok_or_else(|| unsupported(name, "no proven input interval"))?
            .max_abs();
        let acc_bound = l
            .row_abs
            .iter()
            .zip(&l.b)
            .map(|(&r, &b)| r.unsigned_abs() * xq + u128::from(b.unsigned_abs()))
            .max()
            .unwrap_or(0)
            .max(1);
        let (out_len, _) = shape.outputs();
        Ok(Layer {
            node: k,
            name: name.to_string(),
            shape,
            w: l.w.clone(),
            b: l.b.clone(),
            mult: l.mult.clone(),
            shift: l.shift,
            lo: l.lo,
            hi: l.hi,
            posts: Vec::new(),
            out_len,
            acc_bound,
        })
    }

    /// The segment circuit after layer `i` ([`segment_circuit`]).
    pub fn segment(
        &self,
        i: usize,
        share_bits: usize,
        out_bits: usize,
    ) -> Result<Checked, MpcError> {
        let layer = self
            .layers
            .get(i)
            .ok_or_else(|| MpcError::Circuit(format!("no layer {i}")))?;
        segment_circuit(
            &layer.public(),
            i + 1 == self.layers.len(),
            share_bits,
            out_bits,
        )
    }
}

impl Layer {
    /// The layer without its weights and biases.
    pub fn public(&self) -> PublicLayer {
        PublicLayer {
            name: self.name.clone(),
            shape: self.shape.clone(),
            mult: self.mult.clone(),
            shift: self.shift,
            lo: self.lo,
            hi: self.hi,
            posts: self.posts.clone(),
            out_len: self.out_len,
        }
    }
}
