//! Incremental construction of a [`Graph`] with shape inference at every step.

use crate::ModelError;
use crate::ir::{BinOp, Conv, Dense, Graph, Node, Op, Pool, ValueId, ValueInfo, infer_shape};
use crate::tensor::{Tensor, numel};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// A k×k window, stride s, `pad` on every side, undilated, padded positions not counted.
fn square_pool(k: usize, s: usize, pad: usize) -> Pool {
    Pool {
        kernel: [k, k],
        strides: [s, s],
        pads: [pad; 4],
        dilations: [1, 1],
        count_include_pad: false,
        ceil_mode: false,
    }
}

/// Builds a [`Graph`] node by node; every `push` infers and checks the output shape.
#[derive(Debug)]
pub struct GraphBuilder {
    g: Graph,
    rng: ChaCha20Rng,
}

impl GraphBuilder {
    /// New empty graph; `seed` drives the random weights of the layer helpers.
    pub fn new(name: &str, seed: u64) -> Self {
        Self {
            g: Graph {
                name: name.to_string(),
                ..Graph::default()
            },
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// Add a runtime input.
    pub fn input(&mut self, name: &str, shape: Vec<usize>) -> Result<ValueId, ModelError> {
        numel(&shape)?;
        let id = self.value(name, shape);
        self.g.inputs.push(id);
        Ok(id)
    }

    fn value(&mut self, name: &str, shape: Vec<usize>) -> ValueId {
        self.g.values.push(ValueInfo {
            name: name.to_string(),
            shape,
        });
        self.g.values.len() - 1
    }

    /// Shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        self.g.shape(v)
    }

    /// Number of nodes so far.
    pub fn len(&self) -> usize {
        self.g.nodes.len()
    }

    /// True when no node was added yet.
    pub fn is_empty(&self) -> bool {
        self.g.nodes.is_empty()
    }

    /// Append a node; `out_name` names the output value (generated when empty).
    pub fn push(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<ValueId>,
        out_name: &str,
    ) -> Result<ValueId, ModelError> {
        for &i in &inputs {
            if i >= self.g.values.len() {
                return Err(ModelError::Invalid(format!(
                    "node '{name}' reads an unknown value"
                )));
            }
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|&i| self.g.shape(i)).collect();
        let shape = infer_shape(&op, &shapes, name)?;
        let nm = if out_name.is_empty() {
            format!("{name}_out")
        } else {
            out_name.to_string()
        };
        let out = self.value(&nm, shape);
        self.g.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            output: out,
        });
        Ok(out)
    }

    /// Append a reshape to `shape` (same element count).
    pub fn reshape(
        &mut self,
        name: &str,
        x: ValueId,
        shape: Vec<usize>,
        out_name: &str,
    ) -> Result<ValueId, ModelError> {
        if numel(&shape)? != numel(self.g.shape(x))? {
            return Err(ModelError::Shape(format!(
                "node '{name}': cannot reshape {:?} to {shape:?}",
                self.g.shape(x)
            )));
        }
        let nm = if out_name.is_empty() {
            format!("{name}_out")
        } else {
            out_name.to_string()
        };
        let out = self.value(&nm, shape);
        self.g.nodes.push(Node {
            name: name.to_string(),
            op: Op::Reshape,
            inputs: vec![x],
            output: out,
        });
        Ok(out)
    }

    /// Mark outputs and return the graph, validated.
    pub fn finish(mut self, outputs: Vec<ValueId>) -> Result<Graph, ModelError> {
        self.g.outputs = outputs;
        self.g.validate()?;
        Ok(self.g)
    }

    fn auto_name(&self, kind: &str) -> String {
        format!("{kind}{}", self.g.nodes.len())
    }

    /// He-initialised random tensor with `fan_in`.
    fn he(&mut self, shape: Vec<usize>, fan_in: usize) -> Result<Tensor, ModelError> {
        let n = numel(&shape)?;
        // Uniform with the variance of He init: U(-a, a), a = sqrt(6 / fan_in).
        let a = (6.0 / fan_in.max(1) as f32).sqrt();
        let data = (0..n).map(|_| self.rng.random_range(-a..a)).collect();
        Tensor::new(shape, data)
    }

    fn small(&mut self, n: usize) -> Result<Tensor, ModelError> {
        let data = (0..n)
            .map(|_| self.rng.random_range(-0.05f32..0.05))
            .collect();
        Tensor::new(vec![n], data)
    }

    /// Convolution with seeded He-initialised weights and a small random bias; symmetric padding.
    pub fn conv(
        &mut self,
        x: ValueId,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<ValueId, ModelError> {
        self.conv_grouped(x, c_out, k, stride, pad, 1)
    }

    /// [`Self::conv`] with `groups` groups (`groups` = C_in = C_out: depthwise).
    pub fn conv_grouped(
        &mut self,
        x: ValueId,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<ValueId, ModelError> {
        let c_in = *self
            .g
            .shape(x)
            .get(1)
            .ok_or_else(|| ModelError::Shape("conv input must be NCHW".into()))?;
        if groups == 0 || !c_in.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
            return Err(ModelError::Shape(format!(
                "{groups} groups do not divide {c_in} input and {c_out} output channels"
            )));
        }
        let weight = self.he(vec![c_out, c_in / groups, k, k], c_in / groups * k * k)?;
        let bias = Some(self.small(c_out)?);
        let name = self.auto_name("conv");
        let op = Op::Conv(Conv {
            weight,
            bias,
            strides: [stride, stride],
            pads: [pad; 4],
            dilations: [1, 1],
            groups,
            weight_scales: None,
        });
        self.push(&name, op, vec![x], "")
    }

    /// Elementwise `x op c` with a constant `c` (broadcast).
    pub fn constant_op(&mut self, x: ValueId, op: BinOp, c: Tensor) -> Result<ValueId, ModelError> {
        let name = self.auto_name(&op.onnx_name().to_ascii_lowercase());
        let op = Op::Binary {
            op,
            constant: Some(c),
            constant_first: false,
        };
        self.push(&name, op, vec![x], "")
    }

    /// `min(max(x, min), max)` (ReLU6 is `clip(x, 0, 6)`).
    pub fn clip(&mut self, x: ValueId, min: f32, max: f32) -> Result<ValueId, ModelError> {
        let name = self.auto_name("clip");
        self.push(&name, Op::Clip { min, max }, vec![x], "")
    }

    /// Average pooling k×k, stride s, symmetric padding `pad`, padded positions not counted.
    pub fn avg_pool(
        &mut self,
        x: ValueId,
        k: usize,
        s: usize,
        pad: usize,
    ) -> Result<ValueId, ModelError> {
        let name = self.auto_name("avgpool");
        self.push(&name, Op::AvgPool(square_pool(k, s, pad)), vec![x], "")
    }

    /// Fully connected layer with seeded weights.
    pub fn dense(&mut self, x: ValueId, out: usize) -> Result<ValueId, ModelError> {
        let k = *self
            .g
            .shape(x)
            .get(1)
            .ok_or_else(|| ModelError::Shape("dense input must be [N, K]".into()))?;
        let weight = self.he(vec![out, k], k)?;
        let bias = Some(self.small(out)?);
        let name = self.auto_name("dense");
        self.push(
            &name,
            Op::Dense(Dense {
                weight,
                bias,
                weight_scales: None,
            }),
            vec![x],
            "",
        )
    }

    /// ReLU.
    pub fn relu(&mut self, x: ValueId) -> Result<ValueId, ModelError> {
        let name = self.auto_name("relu");
        self.push(&name, Op::Relu, vec![x], "")
    }

    /// Elementwise sum of two values (residual connection).
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, ModelError> {
        let name = self.auto_name("add");
        self.push(
            &name,
            Op::Binary {
                op: BinOp::Add,
                constant: None,
                constant_first: false,
            },
            vec![a, b],
            "",
        )
    }

    /// Max pooling k×k, stride s, no padding.
    pub fn max_pool(&mut self, x: ValueId, k: usize, s: usize) -> Result<ValueId, ModelError> {
        self.max_pool_padded(x, k, s, 0)
    }

    /// Max pooling k×k, stride s, `pad` on every side.
    pub fn max_pool_padded(
        &mut self,
        x: ValueId,
        k: usize,
        s: usize,
        pad: usize,
    ) -> Result<ValueId, ModelError> {
        let name = self.auto_name("maxpool");
        self.push(&name, Op::MaxPool(square_pool(k, s, pad)), vec![x], "")
    }

    /// Global average pooling.
    pub fn global_avg_pool(&mut self, x: ValueId) -> Result<ValueId, ModelError> {
        let name = self.auto_name("gap");
        self.push(&name, Op::GlobalAvgPool, vec![x], "")
    }

    /// Flatten `[N, ...]` to `[N, rest]`.
    pub fn flatten(&mut self, x: ValueId) -> Result<ValueId, ModelError> {
        let s = self.g.shape(x).to_vec();
        let n = s.first().copied().unwrap_or(1);
        let rest = numel(s.get(1..).unwrap_or(&[]))?;
        let name = self.auto_name("flatten");
        self.reshape(&name, x, vec![n, rest], "")
    }
}
