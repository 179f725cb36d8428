//! tessera's typed intermediate representation of a network.
//!
//! A [`Graph`] is a list of single-output [`Node`]s in execution (topological) order over
//! [`ValueId`]s, every value with a static shape. Constant operands that the integer semantics
//! must treat specially (weights, biases, normalisation constants) live inside the op; a
//! [`Op::Constant`] node only appears where a general, float-only op consumes a constant.

use crate::ModelError;
use crate::tensor::{Tensor, broadcast_shapes, numel};

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// A value: its name (from the ONNX file, or generated) and static shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Name of the value.
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
}

/// One operation with a single output.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name (from the ONNX file, or generated).
    pub name: String,
    /// What the node computes.
    pub op: Op,
    /// Variable inputs.
    pub inputs: Vec<ValueId>,
    /// The output value.
    pub output: ValueId,
}

/// 2-D convolution over NCHW with constant weights `[C_out, C_in/groups, kh, kw]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Weights `[C_out, C_in/groups, kh, kw]`.
    pub weight: Tensor,
    /// Bias `[C_out]`, if any.
    pub bias: Option<Tensor>,
    /// Strides (h, w).
    pub strides: [usize; 2],
    /// Padding (top, left, bottom, right), resolved from `pads`/`auto_pad`.
    pub pads: [usize; 4],
    /// Dilations (h, w).
    pub dilations: [usize; 2],
    /// Groups (1 = dense, C_in = depthwise).
    pub groups: usize,
    /// The scales of an int8 model's weights, one per output channel (or one for the tensor):
    /// every `weight / scale` is an integer, which the integer semantics v2 uses as given.
    pub weight_scales: Option<Vec<f32>>,
}

/// Fully connected layer `y[n, m] = Σ_k x[n, k]·W[m, k] + b[m]` with constant weights `[M, K]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Weights `[M, K]` (output-major).
    pub weight: Tensor,
    /// Bias `[M]`, if any.
    pub bias: Option<Tensor>,
    /// The scales of an int8 model's weights, one per output row (or one for the tensor), as
    /// in [`Conv::weight_scales`].
    pub weight_scales: Option<Vec<f32>>,
}

/// The quantization grid of an int8 model's tensor (ONNX QuantizeLinear): the integer `q` in
/// `[qmin, qmax]` stands for `scale · (q − zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParam {
    /// Real value of one step (finite, > 0).
    pub scale: f32,
    /// The integer that stands for 0, inside `[qmin, qmax]`.
    pub zero_point: i32,
    /// Smallest integer of the storage type (0 for uint8, −128 for int8).
    pub qmin: i32,
    /// Largest integer of the storage type (255 for uint8, 127 for int8).
    pub qmax: i32,
}

impl QParam {
    /// A uint8 (`signed = false`) or int8 grid; rejects a scale that is not finite and
    /// positive and a zero point outside the type.
    pub fn new(scale: f32, zero_point: i32, signed: bool) -> Result<Self, ModelError> {
        let (qmin, qmax) = if signed { (-128, 127) } else { (0, 255) };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(ModelError::Invalid(format!(
                "quantization scale {scale} is not a finite positive number"
            )));
        }
        if !(qmin..=qmax).contains(&zero_point) {
            return Err(ModelError::Invalid(format!(
                "zero point {zero_point} is outside [{qmin}, {qmax}]"
            )));
        }
        Ok(Self {
            scale,
            zero_point,
            qmin,
            qmax,
        })
    }

    /// The storage type is int8 (else uint8).
    pub fn signed(&self) -> bool {
        self.qmin < 0
    }

    /// The integers `q − zero_point` the grid can hold: `[qmin − zp, qmax − zp]`.
    pub fn interval(&self) -> (i64, i64) {
        let z = i64::from(self.zero_point);
        (i64::from(self.qmin) - z, i64::from(self.qmax) - z)
    }

    /// ONNX QuantizeLinear then DequantizeLinear on a real: round half to even of `x / scale`,
    /// saturate to the grid, scale back. NaN becomes 0 (the zero point).
    pub fn fake_quant(&self, x: f32) -> f32 {
        let (lo, hi) = self.interval();
        let q = (f64::from(x) / f64::from(self.scale)).round_ties_even();
        let q = if q.is_nan() {
            0.0
        } else {
            q.clamp(lo as f64, hi as f64)
        };
        (q * f64::from(self.scale)) as f32
    }
}

/// General matrix product `alpha·A'·B' + beta·C` with variable operands (float engine only).
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// Transpose A.
    pub trans_a: bool,
    /// Transpose B.
    pub trans_b: bool,
}

/// 2-D max or average pooling window.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// Window (h, w).
    pub kernel: [usize; 2],
    /// Strides (h, w).
    pub strides: [usize; 2],
    /// Padding (top, left, bottom, right).
    pub pads: [usize; 4],
    /// Dilations (h, w).
    pub dilations: [usize; 2],
    /// Average pooling: count padded positions in the divisor.
    pub count_include_pad: bool,
    /// Output size rounds up (ONNX `ceil_mode`); windows then may run past the end padding.
    pub ceil_mode: bool,
}

/// Elementwise arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b
    Div,
}

impl BinOp {
    /// Apply to floats.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
        }
    }
    /// ONNX op name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            BinOp::Add => "Add",
            BinOp::Sub => "Sub",
            BinOp::Mul => "Mul",
            BinOp::Div => "Div",
        }
    }
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A constant tensor (only feeds float-only general ops).
    Constant(Tensor),
    /// Convolution with constant weights.
    Conv(Conv),
    /// Fully connected layer with constant weights (input `[N, K]`).
    Dense(Dense),
    /// Numpy-style (batched, broadcasting) matrix product of two variables (float engine only).
    MatMul,
    /// General Gemm over variables; inputs A, B and optionally C (float engine only).
    Gemm(Gemm),
    /// Elementwise op with broadcasting. With `constant`, the node has one variable input and
    /// the constant is the right operand (`x op c`), or the left one when `constant_first`.
    Binary {
        /// The operation.
        op: BinOp,
        /// Constant operand, if any.
        constant: Option<Tensor>,
        /// The constant is the left operand.
        constant_first: bool,
    },
    /// max(x, 0).
    Relu,
    /// Max pooling.
    MaxPool(Pool),
    /// Average pooling.
    AvgPool(Pool),
    /// Mean over the spatial dimensions, output `[N, C, 1, 1]`.
    GlobalAvgPool,
    /// Same data, the output value's shape (Flatten and Reshape both become this).
    Reshape,
    /// Softmax along `axis` (final layer only). `coerce_2d`: opset < 13 semantics (flatten
    /// to 2-D at `axis` and normalise over everything after it).
    Softmax {
        /// Axis, non-negative.
        axis: usize,
        /// Opset < 13 semantics.
        coerce_2d: bool,
    },
    /// Concatenation of the variable inputs along `axis` (float engine only).
    Concat {
        /// Axis, non-negative.
        axis: usize,
    },
    /// Axis permutation: output axis `i` is input axis `perm[i]` (float engine only).
    Transpose {
        /// A permutation of `0..rank`.
        perm: Vec<usize>,
    },
    /// Constant padding: `pads` holds the begin pads of every axis, then the end pads.
    Pad {
        /// `2·rank` pads.
        pads: Vec<usize>,
        /// The fill value.
        value: f32,
    },
    /// min(max(x, min), max).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// Local response normalisation across channels (axis 1):
    /// `y = x / (bias + alpha/size · Σ x²)^beta` over a window of `size` channels.
    Lrn {
        /// Channels in the window.
        size: usize,
        /// Scale.
        alpha: f32,
        /// Exponent.
        beta: f32,
        /// Offset.
        bias: f32,
    },
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// An int8 model's quantization of its input to a grid: the float engines compute ONNX
    /// QuantizeLinear followed by DequantizeLinear; the integer semantics v2 requantizes to the
    /// grid's scale and saturates to its interval.
    Quantize(QParam),
    /// The elements `start..end` along `axis` (ONNX Slice with one axis and step 1, and each
    /// output of Split).
    Slice {
        /// Axis, non-negative.
        axis: usize,
        /// First index taken.
        start: usize,
        /// One past the last index taken.
        end: usize,
    },
}

impl Op {
    /// Short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Constant(_) => "Constant",
            Op::Conv(_) => "Conv",
            Op::Dense(_) => "Dense",
            Op::MatMul => "MatMul",
            Op::Gemm(_) => "Gemm",
            Op::Binary { op, .. } => op.onnx_name(),
            Op::Relu => "Relu",
            Op::MaxPool(_) => "MaxPool",
            Op::AvgPool(_) => "AveragePool",
            Op::GlobalAvgPool => "GlobalAveragePool",
            Op::Reshape => "Reshape",
            Op::Softmax { .. } => "Softmax",
            Op::Concat { .. } => "Concat",
            Op::Transpose { .. } => "Transpose",
            Op::Pad { .. } => "Pad",
            Op::Clip { .. } => "Clip",
            Op::Lrn { .. } => "LRN",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Quantize(_) => "QuantizeLinear",
            Op::Slice { .. } => "Slice",
        }
    }
}

/// A network: values, inputs, outputs and nodes in execution order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Name of the network.
    pub name: String,
    /// Every value.
    pub values: Vec<ValueInfo>,
    /// Runtime inputs.
    pub inputs: Vec<ValueId>,
    /// Outputs.
    pub outputs: Vec<ValueId>,
    /// Nodes in execution order.
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        self.values
            .get(v)
            .map(|x| x.shape.as_slice())
            .unwrap_or(&[])
    }

    /// Check internal consistency: ids in range, every input defined before use, shapes
    /// consistent with each op. Engines call this before running an untrusted graph.
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut defined = vec![false; self.values.len()];
        for &i in &self.inputs {
            *defined
                .get_mut(i)
                .ok_or_else(|| ModelError::Invalid(format!("input id {i} out of range")))? = true;
        }
        for n in &self.nodes {
            for &i in &n.inputs {
                if !defined.get(i).copied().unwrap_or(false) {
                    return Err(ModelError::Invalid(format!(
                        "node '{}' reads value {i} before it is defined",
                        n.name
                    )));
                }
            }
            let shapes: Vec<&[usize]> = n.inputs.iter().map(|&i| self.shape(i)).collect();
            let expect = infer_shape(&n.op, &shapes, &n.name)?;
            let out = self.values.get(n.output).ok_or_else(|| {
                ModelError::Invalid(format!("node '{}' output out of range", n.name))
            })?;
            // Reshape's output shape is given, not inferred: check only the element count.
            if matches!(n.op, Op::Reshape) {
                if numel(&out.shape)? != numel(shapes.first().copied().unwrap_or(&[]))? {
                    return Err(ModelError::Invalid(format!(
                        "reshape '{}' changes the element count",
                        n.name
                    )));
                }
            } else if expect != out.shape {
                return Err(ModelError::Invalid(format!(
                    "node '{}' ({}) yields shape {:?} but its output is declared {:?}",
                    n.name,
                    n.op.kind(),
                    expect,
                    out.shape
                )));
            }
            defined[n.output] = true;
        }
        for &o in &self.outputs {
            if !defined.get(o).copied().unwrap_or(false) {
                return Err(ModelError::Invalid(format!("output {o} is never computed")));
            }
        }
        Ok(())
    }

    /// For each value, the index of the last node that reads it (`usize::MAX` for outputs).
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.values.len()];
        for (k, n) in self.nodes.iter().enumerate() {
            for &i in &n.inputs {
                if let Some(l) = last.get_mut(i) {
                    *l = k;
                }
            }
        }
        for &o in &self.outputs {
            if let Some(l) = last.get_mut(o) {
                *l = usize::MAX;
            }
        }
        last
    }

    /// Number of nodes that read each value.
    pub fn consumer_counts(&self) -> Vec<usize> {
        let mut c = vec![0usize; self.values.len()];
        for n in &self.nodes {
            for &i in &n.inputs {
                if let Some(x) = c.get_mut(i) {
                    *x += 1;
                }
            }
        }
        c
    }
}

/// Output size of a sliding window along one axis (explicit pads), or an error.
#[allow(clippy::too_many_arguments)] // one scalar per ONNX window parameter, named at every call site
pub fn window_out(
    input: usize,
    pad_begin: usize,
    pad_end: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil_mode: bool,
    what: &str,
) -> Result<usize, ModelError> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return Err(ModelError::Shape(format!(
            "{what}: kernel, stride and dilation must be positive"
        )));
    }
    let span = dilation * (kernel - 1) + 1;
    let padded = input + pad_begin + pad_end;
    if padded < span {
        return Err(ModelError::Shape(format!(
            "{what}: window of span {span} does not fit the padded input of size {padded}"
        )));
    }
    let num = padded - span;
    let mut out = if ceil_mode {
        num.div_ceil(stride)
    } else {
        num / stride
    } + 1;
    // ONNX rule: with ceil mode, the last window must start inside the input or its left pad.
    if ceil_mode && (out - 1) * stride >= input + pad_begin {
        out -= 1;
    }
    Ok(out)
}

/// Shape an op yields for the given input shapes.
pub fn infer_shape(op: &Op, ins: &[&[usize]], node: &str) -> Result<Vec<usize>, ModelError> {
    let arity = |n: usize| -> Result<(), ModelError> {
        if ins.len() == n {
            Ok(())
        } else {
            Err(ModelError::Invalid(format!(
                "node '{node}' ({}) needs {n} variable inputs, has {}",
                op.kind(),
                ins.len()
            )))
        }
    };
    let rank4 = |s: &[usize]| -> Result<[usize; 4], ModelError> {
        <[usize; 4]>::try_from(s).map_err(|_| {
            ModelError::Shape(format!(
                "node '{node}' ({}) needs an NCHW input, got shape {s:?}",
                op.kind()
            ))
        })
    };
    let out = match op {
        Op::Constant(t) => {
            arity(0)?;
            t.shape().to_vec()
        }
        Op::Conv(c) => {
            arity(1)?;
            let [n, ci, h, w] = rank4(ins[0])?;
            let ws = c.weight.shape();
            let [co, cig, kh, kw] = <[usize; 4]>::try_from(ws).map_err(|_| {
                ModelError::Shape(format!("node '{node}': conv weight must be 4-D"))
            })?;
            if c.groups == 0 || ci % c.groups != 0 || co % c.groups != 0 || cig * c.groups != ci {
                return Err(ModelError::Shape(format!(
                    "node '{node}': conv with {ci} input channels, weight {ws:?} and groups {} do not agree",
                    c.groups
                )));
            }
            if let Some(b) = &c.bias
                && b.shape() != [co]
            {
                return Err(ModelError::Shape(format!(
                    "node '{node}': bias must have shape [{co}]"
                )));
            }
            check_weight_scales(c.weight_scales.as_deref(), co, node)?;
            let oh = window_out(
                h,
                c.pads[0],
                c.pads[2],
                kh,
                c.strides[0],
                c.dilations[0],
                false,
                node,
            )?;
            let ow = window_out(
                w,
                c.pads[1],
                c.pads[3],
                kw,
                c.strides[1],
                c.dilations[1],
                false,
                node,
            )?;
            vec![n, co, oh, ow]
        }
        Op::Dense(d) => {
            arity(1)?;
            let [n, k] = <[usize; 2]>::try_from(ins[0]).map_err(|_| {
                ModelError::Shape(format!(
                    "node '{node}': dense layer needs a 2-D input, got {:?}",
                    ins[0]
                ))
            })?;
            let ws = d.weight.shape();
            if ws.len() != 2 || ws[1] != k {
                return Err(ModelError::Shape(format!(
                    "node '{node}': dense weight {ws:?} does not take {k} inputs"
                )));
            }
            if let Some(b) = &d.bias
                && b.shape() != [ws[0]]
            {
                return Err(ModelError::Shape(format!(
                    "node '{node}': bias must have shape [{}]",
                    ws[0]
                )));
            }
            check_weight_scales(d.weight_scales.as_deref(), ws[0], node)?;
            vec![n, ws[0]]
        }
        Op::MatMul => {
            arity(2)?;
            matmul_shape(ins[0], ins[1], node)?
        }
        Op::Gemm(g) => {
            if ins.len() != 2 && ins.len() != 3 {
                arity(3)?;
            }
            let (a, b) = (ins[0], ins[1]);
            if a.len() != 2 || b.len() != 2 {
                return Err(ModelError::Shape(format!(
                    "node '{node}': Gemm needs 2-D A and B"
                )));
            }
            let (m, ka) = if g.trans_a {
                (a[1], a[0])
            } else {
                (a[0], a[1])
            };
            let (kb, nn) = if g.trans_b {
                (b[1], b[0])
            } else {
                (b[0], b[1])
            };
            if ka != kb {
                return Err(ModelError::Shape(format!(
                    "node '{node}': Gemm inner dimensions {ka} and {kb} differ"
                )));
            }
            if let Some(c) = ins.get(2) {
                let bc = broadcast_shapes(&[m, nn], c)?;
                if bc != [m, nn] {
                    return Err(ModelError::Shape(format!(
                        "node '{node}': Gemm C {c:?} does not broadcast to [{m}, {nn}]"
                    )));
                }
            }
            vec![m, nn]
        }
        Op::Binary { constant, .. } => match constant {
            Some(c) => {
                arity(1)?;
                broadcast_shapes(ins[0], c.shape())?
            }
            None => {
                arity(2)?;
                broadcast_shapes(ins[0], ins[1])?
            }
        },
        Op::Relu => {
            arity(1)?;
            ins[0].to_vec()
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            arity(1)?;
            let [n, c, h, w] = rank4(ins[0])?;
            let oh = window_out(
                h,
                p.pads[0],
                p.pads[2],
                p.kernel[0],
                p.strides[0],
                p.dilations[0],
                p.ceil_mode,
                node,
            )?;
            let ow = window_out(
                w,
                p.pads[1],
                p.pads[3],
                p.kernel[1],
                p.strides[1],
                p.dilations[1],
                p.ceil_mode,
                node,
            )?;
            vec![n, c, oh, ow]
        }
        Op::GlobalAvgPool => {
            arity(1)?;
            let [n, c, _, _] = rank4(ins[0])?;
            vec![n, c, 1, 1]
        }
        Op::Reshape => {
            arity(1)?;
            ins[0].to_vec()
        }
        Op::Softmax { axis, coerce_2d } => {
            arity(1)?;
            // Opset 13 normalises along an existing axis (a scalar has none); the legacy form
            // flattens at `axis`, and takes a scalar as one row.
            let rank = ins[0].len();
            let axes = if *coerce_2d { rank.max(1) } else { rank };
            if *axis >= axes {
                return Err(ModelError::Shape(format!(
                    "node '{node}': softmax axis {axis} out of range"
                )));
            }
            ins[0].to_vec()
        }
        Op::Concat { axis } => concat_shape(ins, *axis, node)?,
        Op::Transpose { perm } => {
            arity(1)?;
            let x = ins[0];
            if !is_permutation(perm, x.len()) {
                return Err(ModelError::Shape(format!(
                    "node '{node}': transpose permutation {perm:?} does not permute the {} axes of {x:?}",
                    x.len()
                )));
            }
            perm.iter().map(|&p| x[p]).collect()
        }
        Op::Pad { pads, .. } => {
            arity(1)?;
            let x = ins[0];
            if pads.len() != 2 * x.len() {
                return Err(ModelError::Shape(format!(
                    "node '{node}': {} pads for a rank-{} input (need {})",
                    pads.len(),
                    x.len(),
                    2 * x.len()
                )));
            }
            let r = x.len();
            x.iter()
                .enumerate()
                .map(|(i, &d)| {
                    d.checked_add(pads[i])
                        .and_then(|v| v.checked_add(pads[r + i]))
                        .ok_or_else(|| {
                            ModelError::Shape(format!("node '{node}': padded size overflows"))
                        })
                })
                .collect::<Result<_, _>>()?
        }
        Op::Lrn { size, .. } => {
            arity(1)?;
            if ins[0].len() < 2 || *size == 0 {
                return Err(ModelError::Shape(format!(
                    "node '{node}': LRN needs an input of rank ≥ 2 and a positive size"
                )));
            }
            ins[0].to_vec()
        }
        Op::Clip { .. } | Op::Sigmoid | Op::Tanh | Op::Quantize(_) => {
            arity(1)?;
            ins[0].to_vec()
        }
        Op::Slice { axis, start, end } => {
            arity(1)?;
            let mut s = ins[0].to_vec();
            match s.get_mut(*axis) {
                Some(d) if start < end && *end <= *d => *d = end - start,
                _ => {
                    return Err(ModelError::Shape(format!(
                        "node '{node}': slice {start}..{end} of axis {axis} does not fit the input {:?}",
                        ins[0]
                    )));
                }
            }
            s
        }
    };
    numel(&out)?;
    Ok(out)
}

/// Given weight scales: one per output channel or one in all, each finite and positive.
fn check_weight_scales(s: Option<&[f32]>, channels: usize, node: &str) -> Result<(), ModelError> {
    let Some(s) = s else { return Ok(()) };
    if s.len() != 1 && s.len() != channels {
        return Err(ModelError::Shape(format!(
            "node '{node}': {} weight scales for {channels} output channels (need 1 or {channels})",
            s.len()
        )));
    }
    if let Some(v) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(ModelError::Invalid(format!(
            "node '{node}': weight scale {v} is not a finite positive number"
        )));
    }
    Ok(())
}

/// True when `perm` is a permutation of `0..rank`.
pub fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm.iter().all(|&p| match seen.get_mut(p) {
            Some(s) if !*s => {
                *s = true;
                true
            }
            _ => false,
        })
}

/// Shape of a concatenation along `axis`: same rank, equal dimensions except along `axis`.
pub fn concat_shape(ins: &[&[usize]], axis: usize, node: &str) -> Result<Vec<usize>, ModelError> {
    let first = ins
        .first()
        .ok_or_else(|| ModelError::Invalid(format!("node '{node}' (Concat) has no inputs")))?;
    if axis >= first.len() {
        return Err(ModelError::Shape(format!(
            "node '{node}': concat axis {axis} out of range for rank {}",
            first.len()
        )));
    }
    let mut out = first.to_vec();
    out[axis] = 0;
    for s in ins {
        let agree = s.len() == first.len()
            && s.iter()
                .zip(first.iter())
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !agree {
            return Err(ModelError::Shape(format!(
                "node '{node}': cannot concatenate {s:?} with {first:?} along axis {axis}"
            )));
        }
        out[axis] = out[axis]
            .checked_add(s[axis])
            .ok_or_else(|| ModelError::Shape(format!("node '{node}': concat size overflows")))?;
    }
    Ok(out)
}

/// Numpy matmul shape rule.
pub fn matmul_shape(a: &[usize], b: &[usize], node: &str) -> Result<Vec<usize>, ModelError> {
    if a.is_empty() || b.is_empty() {
        return Err(ModelError::Shape(format!(
            "node '{node}': MatMul of a scalar"
        )));
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k1) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k1 != k2 {
        return Err(ModelError::Shape(format!(
            "node '{node}': MatMul of {a:?} by {b:?}: inner dimensions differ"
        )));
    }
    let mut out = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}
