//! A model lowered to the integer semantics v2, cut for `2pc` into linear layers (computed on
//! shares, preprocessed with HE) and segments (one boolean circuit and one online round each)
//! that run everything else.
//!
//! The cut walks the graph in order. A linear layer reads a **masked value**: the model's input
//! (masked by the client online) or a value a segment wrote as `x − r` for the server, with the
//! client's mask `r`. Non-linear nodes join the open segment (a new one opens after a linear
//! layer that read a value of the previous one). A segment takes the shares of the linear
//! layers whose outputs it uses (requantizing them there) and reads the masked values it uses
//! from earlier segments (a residual connection's other branch), and writes every value a later
//! linear layer or segment needs. So chains (mnist-8), residual networks (identity or
//! projection shortcuts) and pooling all cut the same way.
//!
//! Segments run the ops v2 defines for them exactly (`tessera_engine::qint`): ReLU as
//! `max(x, 0)`, Clip as a clamp, MaxPool as the maximum over each window's in-range positions,
//! AvgPool and GlobalAveragePool as the window sum requantized, a residual Add as
//! `clamp(rq(a·ma + b·mb; 1, n))`, reshapes as nothing. Other ops (concatenations, transposes,
//! tables) are refused by name for now. Ops before the first linear layer run on the client, in
//! the clear, on its own input (it learns their constants, such as an input normalisation).

use crate::gadget::bits_for;
use crate::public::{PublicLinear, PublicSegment, SegOp};
use std::collections::HashMap;
use tessera_engine::qint::{IntModel, IntOp};
use tessera_engine::window::pool_geometry;
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_model::ir::Op;
use tessera_mpc::MpcError;

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

/// A linear layer with its weights (the server's).
#[derive(Clone, Debug)]
pub struct Layer {
    /// The graph node.
    pub node: usize,
    /// What the client sees of it.
    pub public: PublicLinear,
    /// Integer weights (`[C_out, C_in/g, kh, kw]` or `[m, k]`).
    pub w: Vec<i64>,
    /// Biases.
    pub b: Vec<i64>,
    /// Proven bound of the accumulators.
    pub acc_bound: u128,
}

/// The model cut for 2pc.
#[derive(Clone, Debug)]
pub struct Cut {
    /// The lowered model.
    pub int: IntModel,
    /// Linear layers in graph order.
    pub layers: Vec<Layer>,
    /// Length of every masked value (0: the first linear layer's input).
    pub values: Vec<usize>,
    /// Segments in online order.
    pub segments: Vec<PublicSegment>,
    /// The ops before the first linear layer that are more than a reshape: the client runs
    /// them on its own input, in the clear, so it must have them (the embedded scheme does;
    /// a remote client has only the public description, which cannot carry them).
    pub prefix: Vec<String>,
}

fn unsupported(node: &str, what: &str) -> MpcError {
    MpcError::Circuit(format!(
        "2pc cannot run node '{node}' ({what}) yet; plain and tee run every op of the integer \
         semantics v2 (run this model with --scheme plain or tee)"
    ))
}

/// Where a graph value lives.
#[derive(Clone, Copy, Debug)]
enum Loc {
    /// A masked value.
    Masked(usize),
    /// A linear layer's output not yet requantized.
    Pending(usize),
    /// A step of a segment.
    Slot { seg: usize, op: usize },
}

/// The cut being built.
struct Builder<'a> {
    int: &'a IntModel,
    values: Vec<usize>,
    segments: Vec<PublicSegment>,
    loc: HashMap<usize, Loc>,
    /// The masked value a slot was written as.
    written: HashMap<(usize, usize), usize>,
    /// The step of a segment that reads a masked value.
    read_at: HashMap<(usize, usize), usize>,
    /// Pending linear layers' requantization constants.
    rq: HashMap<usize, SegOp>,
    open: Option<usize>,
}

impl Builder<'_> {
    fn bits(&self, v: usize) -> u32 {
        self.int.value(v).map_or(62, |q| {
            (bits_for(q.max_abs() as i128) + 1).clamp(2, 62) as u32
        })
    }

    fn new_segment(&mut self) -> usize {
        self.segments.push(PublicSegment {
            linears: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            ops: Vec::new(),
        });
        self.segments.len() - 1
    }

    fn push(&mut self, seg: usize, op: SegOp) -> usize {
        let ops = &mut self.segments[seg].ops;
        ops.push(op);
        ops.len() - 1
    }

    /// Graph value `v` as a step of segment `seg`.
    fn slot_in(&mut self, seg: usize, v: usize, name: &str) -> Result<usize, MpcError> {
        match self.loc.get(&v).copied() {
            Some(Loc::Slot { seg: s, op }) if s == seg => Ok(op),
            Some(Loc::Pending(l)) => {
                let op = self
                    .rq
                    .remove(&l)
                    .ok_or_else(|| unsupported(name, "a linear output used twice"))?;
                self.segments[seg].linears.push(l);
                let k = self.push(seg, op);
                self.loc.insert(v, Loc::Slot { seg, op: k });
                Ok(k)
            }
            Some(_) => {
                let m = self.masked(v, name)?;
                if let Some(&k) = self.read_at.get(&(seg, m)) {
                    return Ok(k);
                }
                self.segments[seg].reads.push(m);
                let k = self.push(
                    seg,
                    SegOp::Read {
                        value: m,
                        bits: self.bits(v),
                    },
                );
                self.read_at.insert((seg, m), k);
                Ok(k)
            }
            None => Err(unsupported(
                name,
                "it reads a value computed on the client before the first linear layer",
            )),
        }
    }

    /// Graph value `v` as a masked value (written by its segment if it is not yet).
    fn masked(&mut self, v: usize, name: &str) -> Result<usize, MpcError> {
        match self.loc.get(&v).copied() {
            Some(Loc::Masked(m)) => Ok(m),
            Some(Loc::Slot { seg, op }) => {
                if let Some(&m) = self.written.get(&(seg, op)) {
                    return Ok(m);
                }
                let len = self.int.graph().shape(v).iter().product();
                self.values.push(len);
                let m = self.values.len() - 1;
                self.segments[seg].writes.push(m);
                self.push(seg, SegOp::Write { src: op, value: m });
                self.written.insert((seg, op), m);
                Ok(m)
            }
            Some(Loc::Pending(_)) => {
                // A linear layer's output read by another linear layer: requantize it in a
                // segment of its own.
                let seg = self.new_segment();
                self.slot_in(seg, v, name)?;
                self.open = None;
                self.masked(v, name)
            }
            None => Err(unsupported(
                name,
                "it reads a value computed on the client before the first linear layer",
            )),
        }
    }
}

impl Cut {
    /// Cut `int`.
    pub fn new(int: IntModel) -> Result<Self, MpcError> {
        let g = int.graph().clone();
        let mut layers: Vec<Layer> = Vec::new();
        let mut prefix = Vec::new();
        let mut b = Builder {
            int: &int,
            values: Vec::new(),
            segments: Vec::new(),
            loc: HashMap::new(),
            written: HashMap::new(),
            read_at: HashMap::new(),
            rq: HashMap::new(),
            open: None,
        };
        for (k, node) in g.nodes.iter().enumerate() {
            let name = node.name.as_str();
            let op = int.op(k).ok_or_else(|| unsupported(name, "not lowered"))?;
            let input = node.inputs.first().copied();
            let in_shape = input.map(|v| g.shape(v).to_vec()).unwrap_or_default();
            let out_shape = g.shape(node.output).to_vec();
            if let IntOp::Linear(l) = op {
                let shape = match &node.op {
                    Op::Conv(c) => {
                        let &[1, c_in, h, w] = in_shape.as_slice() else {
                            return Err(unsupported(name, "a conv not on [1, C, H, W]"));
                        };
                        let ws = c.weight.shape();
                        Shape::Conv(ConvShape {
                            c_in,
                            h,
                            w,
                            c_out: ws[0],
                            k: [ws[2], ws[3]],
                            stride: c.strides,
                            pads: c.pads,
                            dil: c.dilations,
                            groups: c.groups,
                        })
                    }
                    Op::Dense(d) => {
                        let &[1, k_in] = in_shape.as_slice() else {
                            return Err(unsupported(name, "a dense layer not on [1, K]"));
                        };
                        Shape::Dense {
                            k: k_in,
                            m: d.weight.shape()[0],
                        }
                    }
                    _ => return Err(unsupported(name, "a linear op that is not conv or dense")),
                };
                let x = input.ok_or_else(|| unsupported(name, "no input"))?;
                if layers.is_empty() && !b.loc.contains_key(&x) {
                    b.values.push(shape.inputs());
                    b.loc.insert(x, Loc::Masked(0));
                }
                let m = b.masked(x, name)?;
                // A layer reading a value of the open segment closes it.
                if b.open.is_some_and(|s| b.segments[s].writes.contains(&m)) {
                    b.open = None;
                }
                let xq = int
                    .value(x)
                    .ok_or_else(|| unsupported(name, "no proven input interval"))?
                    .max_abs();
                let acc_bound = l
                    .row_abs
                    .iter()
                    .zip(&l.b)
                    .map(|(&r, &bias)| r.unsigned_abs() * xq + u128::from(bias.unsigned_abs()))
                    .max()
                    .unwrap_or(0)
                    .max(1);
                let idx = layers.len();
                b.rq.insert(
                    idx,
                    SegOp::Linear {
                        layer: idx,
                        mult: l.mult.clone(),
                        shift: l.shift,
                        lo: l.lo,
                        hi: l.hi,
                    },
                );
                b.loc.insert(node.output, Loc::Pending(idx));
                layers.push(Layer {
                    node: k,
                    public: PublicLinear {
                        name: name.to_string(),
                        shape,
                        input: m,
                    },
                    w: l.w.clone(),
                    b: l.b.clone(),
                    acc_bound,
                });
                continue;
            }
            if layers.is_empty() {
                // Before the first linear layer the client computes on its own input in the
                // clear (input normalisation and the like; it learns their constants).
                if !matches!(op, IntOp::Pass) {
                    prefix.push(name.to_string());
                }
                continue;
            }
            let seg = match b.open {
                Some(s) => s,
                None => {
                    let s = b.new_segment();
                    b.open = Some(s);
                    s
                }
            };
            let x = input.ok_or_else(|| unsupported(name, "no input"))?;
            let src = b.slot_in(seg, x, name)?;
            let windows = |op: &Op| -> Result<Vec<Vec<usize>>, MpcError> {
                let (Op::MaxPool(p) | Op::AvgPool(p)) = op else {
                    return Err(unsupported(name, "a pool without its window"));
                };
                pool_windows(name, p, &in_shape, &out_shape)
            };
            let step = match op {
                IntOp::Relu => SegOp::Clamp {
                    src,
                    lo: 0,
                    hi: i64::MAX,
                },
                IntOp::Clip { lo, hi } => SegOp::Clamp {
                    src,
                    lo: *lo,
                    hi: *hi,
                },
                IntOp::MaxPool => SegOp::MaxPool {
                    src,
                    windows: windows(&node.op)?,
                },
                IntOp::AvgPool { mult, shift } => SegOp::AvgPool {
                    src,
                    windows: windows(&node.op)?,
                    mult: mult.clone(),
                    shift: *shift,
                    bits: b.bits(node.output),
                },
                IntOp::GlobalAvgPool { mult, shift } => {
                    let &[1, c, h, w] = in_shape.as_slice() else {
                        return Err(unsupported(name, "a global pool not on [1, C, H, W]"));
                    };
                    SegOp::AvgPool {
                        src,
                        windows: (0..c)
                            .map(|ch| (ch * h * w..(ch + 1) * h * w).collect())
                            .collect(),
                        mult: vec![*mult],
                        shift: *shift,
                        bits: b.bits(node.output),
                    }
                }
                IntOp::AddAct {
                    ma,
                    mb,
                    shift,
                    lo,
                    hi,
                } => {
                    let y = node
                        .inputs
                        .get(1)
                        .copied()
                        .ok_or_else(|| unsupported(name, "an add without its second input"))?;
                    if g.shape(y) != in_shape.as_slice() {
                        return Err(unsupported(name, "an add that broadcasts"));
                    }
                    let src_b = b.slot_in(seg, y, name)?;
                    SegOp::Add {
                        a: src,
                        b: src_b,
                        ma: *ma,
                        mb: *mb,
                        shift: *shift,
                        lo: *lo,
                        hi: *hi,
                    }
                }
                IntOp::Pass => SegOp::Pass { src },
                other => return Err(unsupported(name, other.kind())),
            };
            let k = b.push(seg, step);
            b.loc.insert(node.output, Loc::Slot { seg, op: k });
        }
        if layers.is_empty() {
            return Err(MpcError::Circuit("the model has no linear layer".into()));
        }
        let out = g
            .outputs
            .first()
            .copied()
            .ok_or_else(|| MpcError::Circuit("the model has no output".into()))?;
        let last = match b.loc.get(&out) {
            Some(Loc::Slot { seg, .. }) if *seg + 1 == b.segments.len() => *seg,
            _ => b.new_segment(),
        };
        let src = b.slot_in(last, out, "output")?;
        b.push(last, SegOp::Output { src });
        let Builder {
            values, segments, ..
        } = b;
        Ok(Self {
            int,
            layers,
            values,
            segments,
            prefix,
        })
    }

    /// The public description's linear layers.
    pub fn public_layers(&self) -> Vec<PublicLinear> {
        self.layers.iter().map(|l| l.public.clone()).collect()
    }
}

/// Per output of a pool, the input indices of its window's in-range positions.
fn pool_windows(
    name: &str,
    p: &tessera_model::ir::Pool,
    in_shape: &[usize],
    out_shape: &[usize],
) -> Result<Vec<Vec<usize>>, MpcError> {
    if in_shape.len() != 4 || out_shape.len() != 4 {
        return Err(unsupported(name, "a pool not on [1, C, H, W]"));
    }
    let geo = pool_geometry(p, in_shape, out_shape);
    let c = in_shape[1];
    let mut windows = Vec::with_capacity(c * geo.oh * geo.ow);
    for ch in 0..c {
        for oy in 0..geo.oh {
            for ox in 0..geo.ow {
                let mut win = Vec::new();
                for ky in 0..geo.k[0] {
                    let iy = (oy * geo.s[0] + ky * geo.d[0]) as isize - geo.p[0] as isize;
                    if iy < 0 || iy >= geo.h as isize {
                        continue;
                    }
                    for kx in 0..geo.k[1] {
                        let ix = (ox * geo.s[1] + kx * geo.d[1]) as isize - geo.p[1] as isize;
                        if ix < 0 || ix >= geo.w as isize {
                            continue;
                        }
                        win.push((ch * geo.h + iy as usize) * geo.w + ix as usize);
                    }
                }
                if win.is_empty() {
                    return Err(unsupported(name, "a pooling window with no input"));
                }
                windows.push(win);
            }
        }
    }
    Ok(windows)
}
