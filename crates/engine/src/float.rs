//! The float reference engine: runs any [`Graph`] in f32.

use crate::EngineError;
use crate::gemm::{View, sgemm};
use crate::gemm_f32::{FKernel, PackedA, Unfold, gemm_bias, gemm_columns, gemm_packed, packs};
use crate::window::{Geometry, conv_geometry, depthwise_plane, im2col, pool_geometry, pool_planes};
use rayon::prelude::*;
use tessera_model::ir::{BinOp, Conv, Graph, Op, Pool, ValueId};
use tessera_model::tensor::{
    Tensor, broadcast_apply, broadcast_index_map, broadcast_shapes, concat, slice_axis, strides,
    transpose,
};

/// Check that `inputs` match the graph's declared inputs.
pub fn check_inputs<T>(g: &Graph, inputs: &[Tensor<T>]) -> Result<(), EngineError> {
    if inputs.len() != g.inputs.len() {
        return Err(EngineError::Input(format!(
            "the model takes {} inputs, {} were given",
            g.inputs.len(),
            inputs.len()
        )));
    }
    for (t, &id) in inputs.iter().zip(&g.inputs) {
        let want = g.shape(id);
        if t.shape() != want {
            let name = g.values.get(id).map(|v| v.name.as_str()).unwrap_or("?");
            if t.len() == want.iter().product::<usize>() {
                continue; // same element count: accepted and reshaped by the caller
            }
            return Err(EngineError::Input(format!(
                "input '{name}' must have shape {want:?}, got {:?}",
                t.shape()
            )));
        }
    }
    Ok(())
}

/// Run the graph in f32 and return its outputs.
pub fn run_f32(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
    crate::on_pool(|| run_f32_observe(g, inputs, &mut |_, _| {}))
}

/// [`run_f32`], showing every value (inputs first, then each node's output) to `observe` as it
/// is computed — how calibration sees the activations.
pub fn run_f32_observe(
    g: &Graph,
    inputs: &[Tensor],
    observe: &mut dyn FnMut(ValueId, &Tensor),
) -> Result<Vec<Tensor>, EngineError> {
    g.validate()?;
    run_with(g, &[], inputs, observe)
}

/// A graph prepared for repeated float runs: the weights of every convolution and dense layer
/// whose product is narrow ([`packs`]: at most 64 output positions or samples, on AVX-512) are
/// packed once ([`PackedA`]), as an inference library packs them at session creation, so that each run
/// streams them sequentially instead of reading 8 rows at a time in place. Results equal
/// [`run_f32`]'s bit for bit (the same chain of fused multiply-adds per output); on a machine
/// without AVX-512 nothing is packed. Costs one more copy of those layers' weights.
pub struct FloatModel<'g> {
    graph: &'g Graph,
    /// Per node: its packed weights, where it has some.
    packed: Vec<Option<PackedA>>,
}

impl<'g> FloatModel<'g> {
    /// Validates `graph` and packs the weights of its narrow convolutions and dense layers.
    pub fn new(graph: &'g Graph) -> Result<Self, EngineError> {
        graph.validate()?;
        let kernel = FKernel::best();
        let packed = graph
            .nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv(c) if c.groups == 1 => {
                    let co = c.weight.shape().first().copied().unwrap_or(0);
                    let npos: usize = graph.shape(n.output).iter().skip(2).product();
                    (co > 0 && packs(kernel, npos))
                        .then(|| PackedA::new(c.weight.data(), co, c.weight.len() / co))
                }
                Op::Dense(d) => {
                    let m = d.weight.shape().first().copied().unwrap_or(0);
                    let batch = graph.shape(n.output).first().copied().unwrap_or(0);
                    (m > 0 && packs(kernel, batch))
                        .then(|| PackedA::new(d.weight.data(), m, d.weight.len() / m))
                }
                _ => None,
            })
            .collect();
        Ok(Self { graph, packed })
    }

    /// The graph.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// [`run_f32`] on the prepared graph.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        crate::on_pool(|| run_with(self.graph, &self.packed, inputs, &mut |_, _| {}))
    }

    /// [`run_f32_observe`] on the prepared graph.
    pub fn run_observe(
        &self,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(ValueId, &Tensor),
    ) -> Result<Vec<Tensor>, EngineError> {
        run_with(self.graph, &self.packed, inputs, observe)
    }
}

/// The float engine over a validated graph, with packed weights per node where `packed` has
/// them (empty: none).
fn run_with(
    g: &Graph,
    packed: &[Option<PackedA>],
    inputs: &[Tensor],
    observe: &mut dyn FnMut(ValueId, &Tensor),
) -> Result<Vec<Tensor>, EngineError> {
    check_inputs(g, inputs)?;
    let last = g.last_uses();
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    for (t, &id) in inputs.iter().zip(&g.inputs) {
        let t = t.clone().reshape(g.shape(id).to_vec())?;
        observe(id, &t);
        vals[id] = Some(t);
    }
    for (k, n) in g.nodes.iter().enumerate() {
        // An element-wise op whose first input nobody reads later works in that input's
        // buffer (no fresh pages, one pass instead of two).
        if let Some(&i) = n.inputs.first()
            && last.get(i) == Some(&k)
            && !n.inputs[1..].contains(&i)
            && in_place(&n.op)
            && let Some(mut t) = vals.get_mut(i).and_then(Option::take)
        {
            let rest: Vec<&Tensor> = n.inputs[1..]
                .iter()
                .map(|&j| {
                    vals[j].as_ref().ok_or_else(|| {
                        EngineError::Internal(format!("value {j} missing at node '{}'", n.name))
                    })
                })
                .collect::<Result<_, _>>()?;
            let out_shape = g.shape(n.output).to_vec();
            let y = match apply_in_place(&n.op, &mut t, &rest) {
                true => t.reshape(out_shape)?,
                false => {
                    let mut ins = vec![&t];
                    ins.extend(rest);
                    eval_op(&n.op, &ins, &out_shape).map_err(|e| e.at(&n.name))?
                }
            };
            observe(n.output, &y);
            vals[n.output] = Some(y);
            for &j in &n.inputs[1..] {
                if last[j] == k {
                    vals[j] = None;
                }
            }
            continue;
        }
        let ins: Vec<&Tensor> = n
            .inputs
            .iter()
            .map(|&i| {
                vals[i].as_ref().ok_or_else(|| {
                    EngineError::Internal(format!("value {i} missing at node '{}'", n.name))
                })
            })
            .collect::<Result<_, _>>()?;
        let out_shape = g.shape(n.output).to_vec();
        let pa = packed.get(k).and_then(Option::as_ref);
        let y = eval_node(&n.op, pa, &ins, &out_shape).map_err(|e| e.at(&n.name))?;
        observe(n.output, &y);
        vals[n.output] = Some(y);
        for &i in &n.inputs {
            if last[i] == k {
                vals[i] = None;
            }
        }
    }
    g.outputs
        .iter()
        .map(|&o| {
            vals[o]
                .clone()
                .ok_or_else(|| EngineError::Internal("output not computed".into()))
        })
        .collect()
}

/// Whether an op can overwrite its first input (element-wise, output shaped like it).
fn in_place(op: &Op) -> bool {
    matches!(
        op,
        Op::Relu
            | Op::Reshape
            | Op::Binary {
                op: BinOp::Add,
                constant: None,
                ..
            }
    )
}

/// Applies an [`in_place`] op to `t` (with the other inputs `rest`); `false` when the shapes
/// need the general evaluator (a broadcast that grows `t`).
fn apply_in_place(op: &Op, t: &mut Tensor, rest: &[&Tensor]) -> bool {
    const CHUNK: usize = 1 << 14;
    match (op, rest) {
        (Op::Reshape, []) => {}
        (Op::Relu, []) => t
            .data_mut()
            .par_chunks_mut(CHUNK)
            .for_each(|o| o.iter_mut().for_each(|v| *v = v.max(0.0))),
        (Op::Binary { .. }, [b]) if b.shape() == t.shape() => t
            .data_mut()
            .par_chunks_mut(CHUNK)
            .zip(b.data().par_chunks(CHUNK))
            .for_each(|(o, b)| o.iter_mut().zip(b).for_each(|(v, &w)| *v += w)),
        _ => return false,
    }
    true
}

/// One node of the float engine: `op` on its inputs, yielding `out_shape`. The one float
/// evaluator of every op, shared by every float path (the float engine, asym's enclave).
pub fn eval_op(op: &Op, ins: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EngineError> {
    eval_node(op, None, ins, out_shape)
}

/// [`eval_op`] with the node's packed weights, if it has some ([`FloatModel`]).
fn eval_node(
    op: &Op,
    packed: Option<&PackedA>,
    ins: &[&Tensor],
    out_shape: &[usize],
) -> Result<Tensor, EngineError> {
    Ok(match op {
        Op::Constant(t) => t.clone(),
        Op::Conv(c) => conv_f32(ins[0], c, packed, out_shape)?,
        Op::Dense(d) => {
            let x = ins[0];
            let (n, k) = (x.shape()[0], x.shape()[1]);
            let m = d.weight.shape()[0];
            if let Some(y) = dense_narrow(x, d, packed, out_shape)? {
                return Ok(y);
            }
            let mut out = vec![0f32; n * m];
            if let Some(b) = &d.bias {
                for row in out.chunks_mut(m.max(1)) {
                    row.copy_from_slice(b.data());
                }
            }
            let beta = if d.bias.is_some() { 1.0 } else { 0.0 };
            sgemm(
                n,
                k,
                m,
                1.0,
                View::rows(x.data(), k),
                View::transposed(d.weight.data(), k),
                beta,
                &mut out,
            );
            Tensor::new(out_shape.to_vec(), out)?
        }
        Op::MatMul => matmul_f32(ins[0], ins[1], out_shape)?,
        Op::Gemm(gm) => {
            let (a, b) = (ins[0], ins[1]);
            let (m, n) = (out_shape[0], out_shape[1]);
            let k = if gm.trans_a {
                a.shape()[0]
            } else {
                a.shape()[1]
            };
            let av = if gm.trans_a {
                View::transposed(a.data(), m)
            } else {
                View::rows(a.data(), k)
            };
            let bv = if gm.trans_b {
                View::transposed(b.data(), k)
            } else {
                View::rows(b.data(), n)
            };
            let mut out = match ins.get(2) {
                Some(c) => {
                    let map = broadcast_index_map(c.shape(), out_shape);
                    map.iter().map(|&i| gm.beta * c.data()[i]).collect()
                }
                None => vec![0f32; m * n],
            };
            sgemm(m, k, n, gm.alpha, av, bv, 1.0, &mut out);
            Tensor::new(out_shape.to_vec(), out)?
        }
        Op::Binary {
            op,
            constant,
            constant_first,
        } => match constant {
            Some(c) if *constant_first => broadcast_apply(c, ins[0], |a, b| op.apply(a, b))?,
            Some(c) => broadcast_apply(ins[0], c, |a, b| op.apply(a, b))?,
            None => broadcast_apply(ins[0], ins[1], |a, b| op.apply(a, b))?,
        },
        Op::Relu => ins[0].map(|&v| v.max(0.0)),
        Op::MaxPool(p) => pool_f32(ins[0], p, true, out_shape)?,
        Op::AvgPool(p) => pool_f32(ins[0], p, false, out_shape)?,
        Op::GlobalAvgPool => {
            let x = ins[0];
            let hw = x.shape()[2] * x.shape()[3];
            let out = x
                .data()
                .chunks(hw.max(1))
                .map(|c| c.iter().sum::<f32>() / hw.max(1) as f32)
                .collect();
            Tensor::new(out_shape.to_vec(), out)?
        }
        Op::Reshape => ins[0].clone().reshape(out_shape.to_vec())?,
        Op::Softmax { axis, coerce_2d } => softmax(ins[0], *axis, *coerce_2d)?,
        Op::Concat { axis } => concat(ins, *axis)?,
        Op::Transpose { perm } => transpose(ins[0], perm)?,
        Op::Pad { pads, value } => pad(ins[0], pads, *value, out_shape)?,
        // max then min, not f32::clamp, which panics on min > max or NaN bounds.
        Op::Clip { min, max } => ins[0].map(|&v| v.max(*min).min(*max)),
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => lrn(ins[0], *size, *alpha, *beta, *bias)?,
        Op::Sigmoid => ins[0].map(|&v| 1.0 / (1.0 + (-v).exp())),
        Op::Tanh => ins[0].map(|&v| v.tanh()),
        Op::Quantize(q) => ins[0].map(|&v| q.fake_quant(v)),
        Op::Slice { axis, start, end } => slice_axis(ins[0], *axis, *start, *end)?,
    })
}

/// Max (`max`) or average pooling of an NCHW tensor in f32: the maximum over a window's in-range
/// positions, or their sum divided by their count (by the positions inside the padded input with
/// `count_include_pad`). Shared by every float evaluator (the float engine, asym's enclave).
pub fn pool_f32(
    x: &Tensor,
    p: &Pool,
    max: bool,
    out_shape: &[usize],
) -> Result<Tensor, EngineError> {
    let g = pool_geometry(p, x.shape(), out_shape);
    let mut out = vec![0f32; out_shape.iter().product()];
    let include = p.count_include_pad;
    if max {
        pool_planes(
            x.data(),
            &g,
            f32::NEG_INFINITY,
            f32::max,
            |a, _, _| a,
            &mut out,
        );
    } else {
        pool_planes(
            x.data(),
            &g,
            0f32,
            |a, v| a + v,
            |a, v, pd| a / (if include { pd } else { v }).max(1) as f32,
            &mut out,
        );
    }
    Ok(Tensor::new(out_shape.to_vec(), out)?)
}

/// Constant padding; `pads` holds every axis's begin pad, then every end pad.
pub fn pad(
    x: &Tensor,
    pads: &[usize],
    value: f32,
    out_shape: &[usize],
) -> Result<Tensor, EngineError> {
    let s = x.shape();
    let r = s.len();
    if pads.len() != 2 * r || out_shape.len() != r {
        return Err(EngineError::Input(format!(
            "{} pads do not fit a rank-{r} input",
            pads.len()
        )));
    }
    let mut out = vec![value; out_shape.iter().product()];
    let ostr = strides(out_shape);
    // Copy each innermost row of the input to its place in the output.
    let row = s.last().copied().unwrap_or(1);
    if row == 0 || x.is_empty() {
        return Ok(Tensor::new(out_shape.to_vec(), out)?);
    }
    let istr = strides(s);
    for (k, chunk) in x.data().chunks(row).enumerate() {
        let mut at = 0;
        let mut rem = k * row;
        for ax in 0..r {
            let i = rem / istr[ax];
            rem %= istr[ax];
            at += (i + pads[ax]) * ostr[ax];
        }
        out[at..at + row].copy_from_slice(chunk);
    }
    Ok(Tensor::new(out_shape.to_vec(), out)?)
}

/// Local response normalisation across axis 1 (ONNX LRN).
pub fn lrn(
    x: &Tensor,
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
) -> Result<Tensor, EngineError> {
    let s = x.shape();
    if s.len() < 2 || size == 0 {
        return Err(EngineError::Input(format!(
            "LRN of size {size} over a tensor of shape {s:?}"
        )));
    }
    let (n, c) = (s[0], s[1]);
    let inner: usize = s[2..].iter().product();
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let d = x.data();
    let mut out = vec![0f32; d.len()];
    for b in 0..n {
        for ch in 0..c {
            let from = ch.saturating_sub(lo);
            let to = (ch + hi).min(c - 1);
            for i in 0..inner {
                let at = |cc: usize| (b * c + cc) * inner + i;
                let sq: f32 = (from..=to).map(|cc| d[at(cc)] * d[at(cc)]).sum();
                let v = d[at(ch)];
                out[at(ch)] = v / (bias + alpha / size as f32 * sq).powf(beta);
            }
        }
    }
    Ok(Tensor::new(s.to_vec(), out)?)
}

fn conv_f32(
    x: &Tensor,
    c: &Conv,
    packed: Option<&PackedA>,
    out_shape: &[usize],
) -> Result<Tensor, EngineError> {
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let co = out_shape[1];
    let g = conv_geometry(c, x.shape(), out_shape);
    let npos = g.oh * g.ow;
    let mut out = vec![0f32; n * co * npos];
    if c.groups == ci && co == ci {
        // Depthwise: a direct loop per plane (a one-row GEMM per channel costs more).
        let (kh, kw) = (g.k[0], g.k[1]);
        out.par_chunks_mut(npos.max(1))
            .zip(x.data().par_chunks((g.h * g.w).max(1)))
            .with_min_len(((1 << 14) / (g.h * g.w * kh * kw).max(1)).max(1))
            .enumerate()
            .for_each(|(plane, (o, xc))| {
                let ch = plane % co;
                let w = &c.weight.data()[ch * kh * kw..(ch + 1) * kh * kw];
                let bias = c.bias.as_ref().map_or(0.0, |b| b.data()[ch]);
                depthwise_plane(xc, w, bias, &g, o);
            });
        return Ok(Tensor::new(out_shape.to_vec(), out)?);
    }
    crate::with_scratch(&COL, |col| conv_gemm(x, c, packed, &g, col, &mut out));
    Ok(Tensor::new(out_shape.to_vec(), out)?)
}

thread_local! {
    /// The unfolded input of the thread's last convolution (kept: no fresh pages per layer).
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every image and group of a (non-depthwise) convolution as one product each.
fn conv_gemm(
    x: &Tensor,
    c: &Conv,
    packed: Option<&PackedA>,
    g: &Geometry,
    col: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let groups = c.groups;
    let cig = ci / groups;
    let co = out.len() / (n * g.oh * g.ow).max(1);
    let cog = co / groups;
    let kk = cig * g.k[0] * g.k[1];
    let npos = g.oh * g.ow;
    for b in 0..n {
        for gr in 0..groups {
            let xin =
                &x.data()[(b * ci + gr * cig) * g.h * g.w..(b * ci + (gr + 1) * cig) * g.h * g.w];
            let w = &c.weight.data()[gr * cog * kk..(gr + 1) * cog * kk];
            let o = &mut out[(b * co + gr * cog) * npos..(b * co + (gr + 1) * cog) * npos];
            let bias = c.bias.as_ref().map(|v| &v.data()[gr * cog..(gr + 1) * cog]);
            let kernel = FKernel::best();
            // Packed weights (one group only): the unfolded input is small (≤ 64 columns).
            if let Some(pa) = packed.filter(|p| groups == 1 && p.rows() == cog && p.depth() == kk)
                && packs(kernel, npos)
            {
                let colv: &[f32] = if g.is_pointwise() {
                    xin
                } else {
                    im2col(xin, cig, g, col);
                    col
                };
                if gemm_packed(kernel, pa, npos, colv, bias, o) {
                    continue;
                }
            }
            // The panel kernel packs straight from the image; the others need the unfolded
            // matrix (or the image itself for a pointwise window).
            if !g.is_pointwise()
                && gemm_columns(kernel, cog, kk, npos, w, &Unfold { x: xin, g }, bias, o)
            {
                continue;
            }
            let colv: &[f32] = if g.is_pointwise() {
                xin
            } else {
                im2col(xin, cig, g, col);
                col
            };
            gemm_bias(kernel, cog, kk, npos, w, colv, bias, o);
        }
    }
}

/// A dense layer over a batch of at most [`crate::gemm_f32::packs`]'s width on AVX-512, as the
/// product `W · xᵀ` (one column per sample) on packed weights or the panel kernel (the same
/// sums), transposed back; `None` for any other (the general product runs).
fn dense_narrow(
    x: &Tensor,
    d: &tessera_model::ir::Dense,
    packed: Option<&PackedA>,
    out_shape: &[usize],
) -> Result<Option<Tensor>, EngineError> {
    let kernel = FKernel::best();
    let (n, k) = (x.shape()[0], x.shape()[1]);
    let m = d.weight.shape()[0];
    if !packs(kernel, n) {
        return Ok(None);
    }
    let xt: Vec<f32> = if n == 1 {
        x.data().to_vec()
    } else {
        (0..k * n).map(|i| x.data()[(i % n) * k + i / n]).collect()
    };
    let bias = d.bias.as_ref().map(|b| b.data());
    let mut ct = vec![0f32; m * n];
    let done = packed
        .filter(|p| p.rows() == m && p.depth() == k)
        .is_some_and(|pa| gemm_packed(kernel, pa, n, &xt, bias, &mut ct));
    if !done {
        gemm_bias(kernel, m, k, n, d.weight.data(), &xt, bias, &mut ct);
    }
    let out = if n == 1 {
        ct
    } else {
        (0..n * m).map(|i| ct[(i % m) * n + i / m]).collect()
    };
    Ok(Some(Tensor::new(out_shape.to_vec(), out)?))
}

fn matmul_f32(a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor, EngineError> {
    let a2: Vec<usize> = if a.shape().len() == 1 {
        vec![1, a.shape()[0]]
    } else {
        a.shape().to_vec()
    };
    let b2: Vec<usize> = if b.shape().len() == 1 {
        vec![b.shape()[0], 1]
    } else {
        b.shape().to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let ab = &a2[..a2.len() - 2];
    let bb = &b2[..b2.len() - 2];
    let batch = broadcast_shapes(ab, bb)?;
    let ma = broadcast_index_map(ab, &batch);
    let mb = broadcast_index_map(bb, &batch);
    let mut out = vec![0f32; ma.len() * m * n];
    for (t, (&ia, &ib)) in ma.iter().zip(&mb).enumerate() {
        let av = View::rows(&a.data()[ia * m * k..(ia + 1) * m * k], k);
        let bv = View::rows(&b.data()[ib * k * n..(ib + 1) * k * n], n);
        sgemm(
            m,
            k,
            n,
            1.0,
            av,
            bv,
            0.0,
            &mut out[t * m * n..(t + 1) * m * n],
        );
    }
    Ok(Tensor::new(out_shape.to_vec(), out)?)
}

/// Numerically stable softmax.
pub fn softmax(x: &Tensor, axis: usize, coerce_2d: bool) -> Result<Tensor, EngineError> {
    let s = x.shape();
    // Opset 13 normalises along an existing axis; the legacy form flattens at `axis` ≤ rank.
    let fits = if coerce_2d {
        axis <= s.len()
    } else {
        axis < s.len()
    };
    if !fits {
        return Err(EngineError::Input(format!(
            "softmax axis {axis} does not exist in a tensor of rank {}",
            s.len()
        )));
    }
    let (outer, len, inner) = if coerce_2d {
        (
            s[..axis].iter().product::<usize>(),
            s[axis..].iter().product::<usize>(),
            1,
        )
    } else {
        (
            s[..axis].iter().product(),
            s[axis],
            s[axis + 1..].iter().product(),
        )
    };
    let mut out = x.data().to_vec();
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * len * inner + j * inner + i;
            let mx = (0..len)
                .map(|j| out[at(j)])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for j in 0..len {
                let e = (out[at(j)] - mx).exp();
                out[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                out[at(j)] /= sum;
            }
        }
    }
    Ok(Tensor::new(s.to_vec(), out)?)
}

/// Index of the largest element (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
