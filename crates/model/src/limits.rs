//! What an imported model may ask of the machine.
//!
//! A model file is untrusted input. Without limits a 2 KB file can declare a pooling window of
//! 2^31 × 2^31 positions, or a convolution whose im2col buffer needs terabytes, and the engines
//! would try to allocate it or loop over it. Import therefore
//!
//! 1. checks every window attribute (kernel, stride, pad, dilation, group count) and every tensor
//!    rank and dimension against [`ImportLimits`], with an [`ModelError::OutOfRange`] naming the
//!    node and the attribute, and
//! 2. once the graph is built, charges each node the memory of every buffer the engines allocate
//!    for it (inputs, output, the im2col buffer, f64/i64 staging copies, broadcast index maps,
//!    its constants in f32, i64 and f64) and its work (multiply-accumulates, window reads,
//!    im2col copies), and the whole model its peak memory (constants plus the activations alive
//!    at once plus the busiest node's scratch) and its total work, with an
//!    [`ModelError::OverBudget`] naming the node, the budget and how to raise it.
//!
//! The cost model charges 8 bytes per activation element (the integer engine's i64 and f64
//! buffers; the float engine needs half), so a model that passes runs in either engine within
//! the memory budget. [`check_graph`] is public so that graphs built in code can be held to the
//! same budget.

use crate::ModelError;
use crate::ir::{Graph, Op};
use serde::Serialize;

/// Caps on attributes and budgets on memory and work, applied at import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// Largest tensor rank.
    pub max_rank: usize,
    /// Largest single dimension of any tensor or value.
    pub max_dim: usize,
    /// Largest window (kernel) extent along one axis.
    pub max_kernel: usize,
    /// Largest stride.
    pub max_stride: usize,
    /// Largest pad on one side.
    pub max_pad: usize,
    /// Largest dilation.
    pub max_dilation: usize,
    /// Largest convolution group count.
    pub max_groups: usize,
    /// Bytes one node may need (its inputs, output, scratch and constants).
    pub max_node_memory: u64,
    /// Bytes the whole model may need at its peak.
    pub max_model_memory: u64,
    /// Work (multiply-accumulates and window reads) one node may do per run.
    pub max_node_macs: u64,
    /// Work the whole model may do per run.
    pub max_model_macs: u64,
}

/// 1 GiB.
pub const GIB: u64 = 1 << 30;

impl Default for ImportLimits {
    /// Generous for every network tessera targets (the largest, ResNet-50 at 224², needs about
    /// 4 GMACs and a few hundred MB), far below what a hostile file could ask for.
    fn default() -> Self {
        Self {
            max_rank: 8,
            max_dim: 1 << 24,
            max_kernel: 1024,
            max_stride: 1024,
            max_pad: 1024,
            max_dilation: 1024,
            max_groups: 1 << 16,
            max_node_memory: 2 * GIB,
            max_model_memory: 4 * GIB,
            max_node_macs: 1 << 36,
            max_model_macs: 1 << 38,
        }
    }
}

impl ImportLimits {
    /// These limits with both memory budgets (per node and per model) set to `bytes`.
    pub fn with_max_memory(mut self, bytes: u64) -> Self {
        self.max_node_memory = bytes;
        self.max_model_memory = bytes;
        self
    }

    /// These limits with both work budgets (per node and per model) set to `macs`.
    pub fn with_max_macs(mut self, macs: u64) -> Self {
        self.max_node_macs = macs;
        self.max_model_macs = macs;
        self
    }

    /// Check one window or group attribute value against `max`.
    pub(crate) fn attr(
        &self,
        node: &str,
        op: &str,
        attr: &str,
        value: i64,
        max: usize,
        field: &'static str,
    ) -> Result<usize, ModelError> {
        usize::try_from(value)
            .ok()
            .filter(|&v| v <= max)
            .ok_or_else(|| ModelError::OutOfRange {
                node: node.to_string(),
                op: op.to_string(),
                attr: attr.to_string(),
                value,
                max: max as u64,
                field,
            })
    }

    /// Check a shape's rank and dimensions; `node`/`op` name where it appears.
    pub fn shape(&self, node: &str, op: &str, shape: &[usize]) -> Result<(), ModelError> {
        let range = |attr: &str, value: usize, max: usize, field| ModelError::OutOfRange {
            node: node.to_string(),
            op: op.to_string(),
            attr: attr.to_string(),
            value: i64::try_from(value).unwrap_or(i64::MAX),
            max: max as u64,
            field,
        };
        if shape.len() > self.max_rank {
            return Err(range("rank", shape.len(), self.max_rank, "max_rank"));
        }
        if let Some(&d) = shape.iter().find(|&&d| d > self.max_dim) {
            return Err(range("a dimension", d, self.max_dim, "max_dim"));
        }
        Ok(())
    }
}

/// Which budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Resource {
    /// Bytes of memory.
    Memory,
    /// Multiply-accumulates and window reads.
    Work,
}

/// Whether a node's own budget or the whole model's ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// One node's.
    Node,
    /// The whole model's (the error names the node at which it ran out).
    Model,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Memory => "memory (bytes)",
            Resource::Work => "work (multiply-accumulates and window reads)",
        })
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Node => "per-node",
            Scope::Model => "per-model",
        })
    }
}

/// How to raise a budget, for the error message.
pub(crate) fn how_to_raise(r: Resource) -> &'static str {
    match r {
        Resource::Memory => {
            "pass --max-memory BYTES to the tessera command, or set ImportLimits::max_node_memory / max_model_memory"
        }
        Resource::Work => {
            "pass --max-macs N to the tessera command, or set ImportLimits::max_node_macs / max_model_macs"
        }
    }
}

/// What a graph needs, as charged by [`check_graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Peak bytes of the whole model.
    pub peak_memory: u64,
    /// Largest bytes of one node.
    pub max_node_memory: u64,
    /// Work of one run.
    pub macs: u64,
}

/// Bytes per activation element the engines hold (i64 or f64).
const ELEM: u128 = 8;
/// Bytes per constant element: the graph's f32, the integer engine's i64 and its f64 copy.
const CONST_ELEM: u128 = 20;

fn elems(shape: &[usize]) -> u128 {
    shape
        .iter()
        .fold(1u128, |a, &d| a.saturating_mul(d as u128))
}

/// A node's cost: (scratch bytes beyond its inputs and output, constant bytes, work).
fn node_cost(g: &Graph, k: usize) -> (u128, u128, u128) {
    let Some(n) = g.nodes.get(k) else {
        return (0, 0, 0);
    };
    let out_shape = g.shape(n.output);
    let out = elems(out_shape);
    let ins: Vec<&[usize]> = n.inputs.iter().map(|&i| g.shape(i)).collect();
    let in_elems = ins.iter().fold(0u128, |a, s| a.saturating_add(elems(s)));
    let dim = |s: &[usize], i: usize| s.get(i).copied().unwrap_or(0) as u128;
    match &n.op {
        Op::Conv(c) => {
            let ws = c.weight.shape();
            let (co, cig, kh, kw) = (dim(ws, 0), dim(ws, 1), dim(ws, 2), dim(ws, 3));
            let (nb, oh, ow) = (dim(out_shape, 0), dim(out_shape, 2), dim(out_shape, 3));
            let col = cig.saturating_mul(kh).saturating_mul(kw);
            let col = col.saturating_mul(oh).saturating_mul(ow);
            // f64 copy of the input, the im2col buffer, the f64 result and the i64 accumulator.
            let scratch = ELEM.saturating_mul(
                in_elems
                    .saturating_add(col)
                    .saturating_add(out.saturating_mul(2)),
            );
            let consts = CONST_ELEM.saturating_mul(c.weight.len() as u128 + co);
            let macs = nb
                .saturating_mul(co)
                .saturating_mul(oh)
                .saturating_mul(ow)
                .saturating_mul(cig.saturating_mul(kh).saturating_mul(kw));
            // Each group's im2col is filled once per image.
            let copies = nb.saturating_mul(col).saturating_mul(c.groups as u128);
            (scratch, consts, macs.saturating_add(copies))
        }
        Op::Dense(d) => {
            let ws = d.weight.shape();
            let (m, kk) = (dim(ws, 0), dim(ws, 1));
            let nb = ins.first().map_or(0, |s| dim(s, 0));
            // f64 copy of the input, f64 result, i64 accumulator, the i64 path's transpose.
            let scratch = ELEM.saturating_mul(
                in_elems
                    .saturating_add(out.saturating_mul(2))
                    .saturating_add(d.weight.len() as u128),
            );
            let consts = CONST_ELEM.saturating_mul(d.weight.len() as u128 + m);
            (
                scratch,
                consts,
                nb.saturating_mul(m).saturating_mul(kk).saturating_add(out),
            )
        }
        Op::MatMul | Op::Gemm(_) => {
            let kk = ins.first().map_or(0, |s| {
                let (a, b) = (dim(s, s.len().saturating_sub(1)), dim(s, 0));
                if matches!(&n.op, Op::Gemm(gm) if gm.trans_a) {
                    b
                } else {
                    a
                }
            });
            // Broadcast index maps of the batch (or of C), one usize per output element.
            let scratch = ELEM.saturating_mul(out.saturating_mul(2));
            (scratch, 0, out.saturating_mul(kk.max(1)))
        }
        Op::Binary { constant, .. } => {
            // Two broadcast index maps of one usize per output element.
            let scratch = ELEM.saturating_mul(out.saturating_mul(2));
            let consts = constant
                .as_ref()
                .map_or(0, |c| CONST_ELEM.saturating_mul(c.len() as u128));
            (scratch, consts, out)
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let window = (p.kernel[0] as u128).saturating_mul(p.kernel[1] as u128);
            (0, 0, out.saturating_mul(window))
        }
        Op::GlobalAvgPool => (ELEM.saturating_mul(out), 0, in_elems),
        Op::Constant(t) => (0, CONST_ELEM.saturating_mul(t.len() as u128), out),
        // One output-sized index or coordinate walk.
        Op::Transpose { .. } | Op::Pad { .. } | Op::Concat { .. } | Op::Slice { .. } => (0, 0, out),
        // A window of `size` channels read per output element.
        Op::Lrn { size, .. } => (0, 0, out.saturating_mul(*size as u128)),
        Op::Relu
        | Op::Reshape
        | Op::Softmax { .. }
        | Op::Clip { .. }
        | Op::Sigmoid
        | Op::Tanh
        | Op::Quantize(_) => (0, 0, out),
    }
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Charge every node of `g` against `limits` (see the module docs). The first node over a
/// budget is named in the error.
pub fn check_graph(g: &Graph, limits: &ImportLimits) -> Result<Budget, ModelError> {
    for (id, v) in g.values.iter().enumerate() {
        let origin = g
            .nodes
            .iter()
            .find(|n| n.output == id)
            .map_or(("input", v.name.as_str()), |n| {
                (n.op.kind(), n.name.as_str())
            });
        limits.shape(origin.1, origin.0, &v.shape)?;
    }
    let over =
        |node: &str, op: &str, resource, scope, needed: u128, limit: u64| ModelError::OverBudget {
            node: node.to_string(),
            op: op.to_string(),
            resource,
            scope,
            needed: clamp(needed),
            limit,
            how: how_to_raise(resource),
        };
    let last = g.last_uses();
    let bytes = |id: usize| ELEM.saturating_mul(elems(g.shape(id)));
    let mut consts_total = 0u128;
    let mut work_total = 0u128;
    let mut live = g
        .inputs
        .iter()
        .fold(0u128, |a, &i| a.saturating_add(bytes(i)));
    let mut peak = 0u128;
    let mut node_peak = 0u128;
    for (k, n) in g.nodes.iter().enumerate() {
        let (scratch, consts, work) = node_cost(g, k);
        let io = n
            .inputs
            .iter()
            .fold(bytes(n.output), |a, &i| a.saturating_add(bytes(i)));
        let mem = io.saturating_add(scratch).saturating_add(consts);
        let kind = n.op.kind();
        if mem > u128::from(limits.max_node_memory) {
            return Err(over(
                &n.name,
                kind,
                Resource::Memory,
                Scope::Node,
                mem,
                limits.max_node_memory,
            ));
        }
        if work > u128::from(limits.max_node_macs) {
            return Err(over(
                &n.name,
                kind,
                Resource::Work,
                Scope::Node,
                work,
                limits.max_node_macs,
            ));
        }
        node_peak = node_peak.max(mem);
        consts_total = consts_total.saturating_add(consts);
        work_total = work_total.saturating_add(work);
        live = live.saturating_add(bytes(n.output));
        // Every constant stays resident; activations are freed after their last reader.
        let now = consts_total.saturating_add(live).saturating_add(scratch);
        peak = peak.max(now);
        if now > u128::from(limits.max_model_memory) {
            return Err(over(
                &n.name,
                kind,
                Resource::Memory,
                Scope::Model,
                now,
                limits.max_model_memory,
            ));
        }
        if work_total > u128::from(limits.max_model_macs) {
            return Err(over(
                &n.name,
                kind,
                Resource::Work,
                Scope::Model,
                work_total,
                limits.max_model_macs,
            ));
        }
        let mut read: Vec<usize> = n.inputs.clone();
        read.sort_unstable();
        read.dedup();
        for i in read {
            if last.get(i) == Some(&k) && !g.inputs.contains(&i) {
                live = live.saturating_sub(bytes(i));
            }
        }
    }
    Ok(Budget {
        peak_memory: clamp(peak),
        max_node_memory: clamp(node_peak),
        macs: clamp(work_total),
    })
}
