//! Static facts about a network: parameters, multiply-accumulates, ReLU count, per-layer shapes.

use crate::ir::{Graph, Op};
use serde::Serialize;

/// One row of a network summary.
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    /// Node name.
    pub name: String,
    /// Op kind.
    pub op: String,
    /// Output shape.
    pub shape: Vec<usize>,
    /// Parameters held by the node.
    pub params: u64,
    /// Multiply-accumulates per run (batch as in the graph).
    pub macs: u64,
    /// ReLUs evaluated (output elements of a Relu).
    pub relus: u64,
}

/// Totals over a network.
#[derive(Clone, Debug, Serialize)]
pub struct NetStats {
    /// Per node.
    pub layers: Vec<LayerStats>,
    /// Sum of parameters.
    pub params: u64,
    /// Sum of MACs.
    pub macs: u64,
    /// Sum of ReLUs.
    pub relus: u64,
}

/// Compute the summary of a graph.
pub fn stats(g: &Graph) -> NetStats {
    let mut layers = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let out = g.shape(n.output);
        let out_n: u64 = out.iter().map(|&d| d as u64).product();
        let (params, macs) = match &n.op {
            Op::Conv(c) => {
                let ws = c.weight.shape();
                let per_out: u64 = ws.iter().skip(1).map(|&d| d as u64).product();
                (
                    c.weight.len() as u64 + c.bias.as_ref().map_or(0, |b| b.len() as u64),
                    out_n * per_out,
                )
            }
            Op::Dense(d) => {
                let k = d.weight.shape().get(1).copied().unwrap_or(0) as u64;
                (
                    d.weight.len() as u64 + d.bias.as_ref().map_or(0, |b| b.len() as u64),
                    out_n * k,
                )
            }
            Op::MatMul | Op::Gemm(_) => {
                let a = n.inputs.first().map(|&i| g.shape(i)).unwrap_or(&[]);
                let k = match &n.op {
                    Op::Gemm(gm) if gm.trans_a => a.first().copied().unwrap_or(0),
                    _ => a.last().copied().unwrap_or(0),
                } as u64;
                (0, out_n * k)
            }
            Op::Constant(t) => (t.len() as u64, 0),
            Op::Binary { constant, .. } => (constant.as_ref().map_or(0, |c| c.len() as u64), 0),
            _ => (0, 0),
        };
        let relus = if matches!(n.op, Op::Relu) { out_n } else { 0 };
        layers.push(LayerStats {
            name: n.name.clone(),
            op: n.op.kind().to_string(),
            shape: out.to_vec(),
            params,
            macs,
            relus,
        });
    }
    NetStats {
        params: layers.iter().map(|l| l.params).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        relus: layers.iter().map(|l| l.relus).sum(),
        layers,
    }
}
