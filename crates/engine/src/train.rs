//! A small trainer for dense ReLU networks (mini-batch SGD with momentum, softmax cross-entropy),
//! used to make the demo's model from generated data in a few seconds.

use crate::gemm::{View, sgemm};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_model::ir::{BinOp, Dense, Graph, Op};
use tessera_model::{GraphBuilder, ModelError, Tensor};

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Passes over the data.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// Momentum.
    pub momentum: f32,
    /// Input scale applied before the first layer's weights (folded into them at export).
    pub input_scale: f32,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden: vec![128],
            epochs: 12,
            batch: 32,
            lr: 0.05,
            momentum: 0.9,
            input_scale: 1.0 / 255.0,
            seed: 1,
        }
    }
}

struct Layer {
    w: Vec<f32>, // [out, in]
    b: Vec<f32>,
    vw: Vec<f32>,
    vb: Vec<f32>,
    fan_in: usize,
    fan_out: usize,
}

/// Train a dense network on `x` (`n × d`, row-major) with labels in `0..classes`; `progress` is
/// called after each epoch with (epoch, mean loss). Returns a graph taking `input_shape`.
pub fn train_mlp(
    x: &[f32],
    labels: &[u8],
    input_shape: &[usize],
    classes: usize,
    cfg: &TrainConfig,
    mut progress: impl FnMut(usize, f32),
) -> Result<Graph, ModelError> {
    let d: usize = input_shape.iter().skip(1).product();
    let n = labels.len();
    if x.len() != n * d || n == 0 {
        return Err(ModelError::Invalid(format!(
            "training data holds {} values for {n} labels of {d} features",
            x.len()
        )));
    }
    if classes == 0 || d == 0 || cfg.hidden.contains(&0) {
        return Err(ModelError::Invalid(
            "every layer of the trained network needs at least one unit".into(),
        ));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let mut dims = vec![d];
    dims.extend(&cfg.hidden);
    dims.push(classes);
    let mut layers: Vec<Layer> = dims
        .windows(2)
        .map(|w| {
            let a = (6.0 / w[0] as f32).sqrt();
            Layer {
                w: (0..w[0] * w[1]).map(|_| rng.random_range(-a..a)).collect(),
                b: vec![0.0; w[1]],
                vw: vec![0.0; w[0] * w[1]],
                vb: vec![0.0; w[1]],
                fan_in: w[0],
                fan_out: w[1],
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0f32;
        for chunk in order.chunks(cfg.batch.max(1)) {
            let bs = chunk.len();
            // Forward, keeping activations.
            let mut acts: Vec<Vec<f32>> = vec![
                chunk
                    .iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().map(|v| v * cfg.input_scale))
                    .collect(),
            ];
            for (li, l) in layers.iter().enumerate() {
                let mut out = vec![0f32; bs * l.fan_out];
                for row in out.chunks_mut(l.fan_out) {
                    row.copy_from_slice(&l.b);
                }
                let prev = &acts[acts.len() - 1];
                sgemm(
                    bs,
                    l.fan_in,
                    l.fan_out,
                    1.0,
                    View::rows(prev, l.fan_in),
                    View::transposed(&l.w, l.fan_in),
                    1.0,
                    &mut out,
                );
                if li + 1 < layers.len() {
                    for v in &mut out {
                        *v = v.max(0.0);
                    }
                }
                acts.push(out);
            }
            // Softmax cross-entropy gradient.
            let logits = &acts[acts.len() - 1];
            let mut grad = vec![0f32; bs * classes];
            for (r, &i) in chunk.iter().enumerate() {
                let z = &logits[r * classes..(r + 1) * classes];
                let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = z.iter().map(|v| (v - mx).exp()).collect();
                let s: f32 = e.iter().sum();
                let y = usize::from(labels[i]);
                loss_sum += -(e.get(y).copied().unwrap_or(1e-30) / s).max(1e-30).ln();
                for c in 0..classes {
                    grad[r * classes + c] = (e[c] / s - if c == y { 1.0 } else { 0.0 }) / bs as f32;
                }
            }
            // Backward.
            for li in (0..layers.len()).rev() {
                let l = &layers[li];
                let input = &acts[li];
                let mut gw = vec![0f32; l.fan_out * l.fan_in];
                sgemm(
                    l.fan_out,
                    bs,
                    l.fan_in,
                    1.0,
                    View::transposed(&grad, l.fan_out),
                    View::rows(input, l.fan_in),
                    0.0,
                    &mut gw,
                );
                let mut gb = vec![0f32; l.fan_out];
                for row in grad.chunks(l.fan_out) {
                    for (a, v) in gb.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                let next = if li > 0 {
                    let mut gx = vec![0f32; bs * l.fan_in];
                    sgemm(
                        bs,
                        l.fan_out,
                        l.fan_in,
                        1.0,
                        View::rows(&grad, l.fan_out),
                        View::rows(&l.w, l.fan_in),
                        0.0,
                        &mut gx,
                    );
                    for (g, a) in gx.iter_mut().zip(input) {
                        if *a <= 0.0 {
                            *g = 0.0;
                        }
                    }
                    Some(gx)
                } else {
                    None
                };
                let l = &mut layers[li];
                for ((w, v), g) in l.w.iter_mut().zip(&mut l.vw).zip(&gw) {
                    *v = cfg.momentum * *v - cfg.lr * g;
                    *w += *v;
                }
                for ((b, v), g) in l.b.iter_mut().zip(&mut l.vb).zip(&gb) {
                    *v = cfg.momentum * *v - cfg.lr * g;
                    *b += *v;
                }
                if let Some(gx) = next {
                    grad = gx;
                }
            }
        }
        progress(epoch, loss_sum / n as f32);
    }
    // Export. The input scale stays a separate constant multiply: folding 1/255 into the first
    // layer would shrink its weights below the fixed-point resolution.
    let mut b = GraphBuilder::new("glyph-mlp", cfg.seed);
    let inp = b.input("input", input_shape.to_vec())?;
    let scale = Op::Binary {
        op: BinOp::Mul,
        constant: Some(Tensor::new(vec![], vec![cfg.input_scale])?),
        constant_first: false,
    };
    let scaled = b.push("normalize", scale, vec![inp], "")?;
    let mut v = b.flatten(scaled)?;
    let nl = layers.len();
    for (li, l) in layers.into_iter().enumerate() {
        let weight = Tensor::new(vec![l.fan_out, l.fan_in], l.w)?;
        let bias = Some(Tensor::vector(l.b));
        v = b.push(
            &format!("fc{li}"),
            Op::Dense(Dense {
                weight,
                bias,
                weight_scales: None,
            }),
            vec![v],
            "",
        )?;
        if li + 1 < nl {
            v = b.relu(v)?;
        }
    }
    b.finish(vec![v])
}
