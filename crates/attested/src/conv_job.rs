//! Convolutional training jobs on the attested host: the networks of
//! [`tessera_model::builders::trainable`] trained with the conv trainer that `asym` and `tee`
//! training use (`tessera_asym::Trainer`, here with no split: the host is trusted with the data
//! once attested, so everything runs on it).
//!
//! The data set's rows are images `[1, C, H, W]` (H = W). Each epoch visits the rows in a
//! fresh order drawn from the job's seed, in batches of the job's size; the rows that do not
//! fill a last batch are left out of that epoch (a different few each epoch). With a `shift`,
//! every training image is moved by a fresh random offset of up to that many pixels; with an
//! `lr_final`, the learning rate falls linearly from `lr` in the first epoch to it in the
//! last. The inputs are multiplied by the job's `input_scale` for training, and the trained
//! model takes the raw features: it starts with a multiply by the scale, as the MLP trainer's
//! models do.

use tessera_asym::{TrainOptions, Trainer, rebatch};
use tessera_model::ir::{BinOp, Graph, Node, Op, ValueInfo};
use tessera_model::{Tensor, builders};

use zeroize::Zeroizing;

use crate::dataset::PlainDataset;
use crate::error::AttestedError;
use crate::policy::TrainSpec;

fn fail(what: impl std::fmt::Display) -> AttestedError {
    AttestedError::Training(what.to_string())
}

/// Trains `spec`'s convolutional network on `data`; calls `epoch_done(epoch, mean loss)` after
/// each epoch and returns the trained network at batch 1, taking unscaled features.
pub fn train_conv(
    spec: &TrainSpec,
    data: &PlainDataset,
    epoch_done: &mut dyn FnMut(usize, f32),
) -> Result<Graph, AttestedError> {
    let cfg = spec.config()?;
    let (c, side) = match data.input_shape.as_slice() {
        [1, c, h, w] if h == w => (*c, *h),
        other => {
            return Err(fail(format!(
                "a {} job needs square images: the dataset's input shape is {other:?}, not \
                 [1, C, H, H] (train an mlp on tabular data)",
                spec.network.name()
            )));
        }
    };
    let rows = data.rows();
    let per = data.features_per_row();
    if rows < cfg.batch {
        return Err(fail(format!(
            "the dataset has {rows} rows, fewer than one batch of {}: lower the job's batch",
            cfg.batch
        )));
    }
    let graph = builders::trainable(
        spec.network.name(),
        spec.width,
        cfg.batch,
        c,
        side,
        data.classes,
    )
    .map_err(fail)?;
    let mut trainer = Trainer::new(
        &graph,
        TrainOptions {
            lr: cfg.lr,
            momentum: cfg.momentum,
            split: None,
        },
    )
    .map_err(fail)?;
    let mut order: Vec<usize> = (0..rows).collect();
    let mut state = cfg.seed ^ 0x5eed_c0de;
    // The batch buffer holds plaintext rows: zeroed when dropped, on every path.
    let mut x = Zeroizing::new(Vec::with_capacity(cfg.batch * per));
    let mut labels = Vec::with_capacity(cfg.batch);
    for epoch in 0..cfg.epochs {
        if let Some(last) = spec.lr_final {
            let t = epoch as f32 / (cfg.epochs.max(2) - 1) as f32;
            trainer
                .set_learning_rate(cfg.lr + (last - cfg.lr) * t)
                .map_err(fail)?;
        }
        shuffle(&mut order, &mut state);
        let (mut sum, mut steps) = (0f64, 0usize);
        for idx in order.chunks_exact(cfg.batch) {
            x.clear();
            labels.clear();
            for &i in idx {
                let row = data
                    .features
                    .get(i * per..(i + 1) * per)
                    .ok_or_else(|| fail(format!("row {i} is missing from the dataset")))?;
                if spec.shift == 0 {
                    x.extend(row.iter().map(|v| v * cfg.input_scale));
                } else {
                    let span = 2 * spec.shift as u64 + 1;
                    let dy = (next(&mut state) % span) as isize - spec.shift as isize;
                    let dx = (next(&mut state) % span) as isize - spec.shift as isize;
                    shifted(row, c, side, dy, dx, cfg.input_scale, &mut x);
                }
                let y = data
                    .labels
                    .get(i)
                    .ok_or_else(|| fail(format!("row {i} has no label")))?;
                labels.push(usize::from(*y));
            }
            let batch = Tensor::new(vec![cfg.batch, c, side, side], std::mem::take(&mut *x))
                .map_err(fail)?;
            let report = trainer.step(&batch, &labels, None);
            *x = batch.into_parts().1;
            let report = report.map_err(fail)?;
            if !report.loss.is_finite() {
                return Err(fail(format!(
                    "the loss diverged in epoch {} (lower the job's lr)",
                    epoch + 1
                )));
            }
            sum += f64::from(report.loss);
            steps += 1;
        }
        epoch_done(epoch, (sum / steps.max(1) as f64) as f32);
    }
    drop(x);
    let mut out = rebatch(trainer.graph(), 1).map_err(fail)?;
    prepend_input_scale(&mut out, cfg.input_scale)?;
    Ok(out)
}

/// The next value of a SplitMix64 stream.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fisher–Yates.
fn shuffle(v: &mut [usize], state: &mut u64) {
    for i in (1..v.len()).rev() {
        let j = (next(state) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// `row` (`c` channels of `side × side`) moved down by `dy` and right by `dx` pixels, zero
/// filled, scaled, appended to `out`.
fn shifted(
    row: &[f32],
    c: usize,
    side: usize,
    dy: isize,
    dx: isize,
    scale: f32,
    out: &mut Vec<f32>,
) {
    let s = side as isize;
    for ch in 0..c {
        for y in 0..s {
            for x in 0..s {
                let (sy, sx) = (y - dy, x - dx);
                let v = if (0..s).contains(&sy) && (0..s).contains(&sx) {
                    row.get(ch * side * side + (sy * s + sx) as usize)
                        .copied()
                        .unwrap_or(0.0)
                } else {
                    0.0
                };
                out.push(v * scale);
            }
        }
    }
}

/// The scale as the network's first node, a multiply by a constant (as the MLP trainer
/// exports it): folding 1/255 into the first convolution's weights would shrink them below the
/// integer semantics' resolution when the model later runs quantized.
fn prepend_input_scale(g: &mut Graph, scale: f32) -> Result<(), AttestedError> {
    if scale == 1.0 {
        return Ok(());
    }
    let &input = g
        .inputs
        .first()
        .ok_or_else(|| fail("the trained network has no input"))?;
    let info = g
        .values
        .get(input)
        .cloned()
        .ok_or_else(|| fail("the trained network's input has no shape"))?;
    let scaled = g.values.len();
    g.values.push(ValueInfo {
        name: format!("{}_scaled", info.name),
        shape: info.shape,
    });
    for n in &mut g.nodes {
        for v in &mut n.inputs {
            if *v == input {
                *v = scaled;
            }
        }
    }
    g.nodes.insert(
        0,
        Node {
            name: "normalize".into(),
            op: Op::Binary {
                op: BinOp::Mul,
                constant: Some(Tensor::new(vec![], vec![scale]).map_err(fail)?),
                constant_first: false,
            },
            inputs: vec![input],
            output: scaled,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Network;

    fn spec(network: Network, batch: usize) -> TrainSpec {
        TrainSpec {
            network,
            width: 1,
            hidden: Vec::new(),
            shift: 1,
            epochs: 1,
            batch,
            lr: 0.02,
            lr_final: None,
            momentum: 0.9,
            input_scale: 0.5,
            seed: 3,
        }
    }

    /// Tabular rows and too few rows are refused with what to change; a small job trains and
    /// the model takes unscaled inputs through its leading multiply.
    #[test]
    fn conv_jobs_check_their_data_and_export_a_scaled_model() {
        let tab = PlainDataset::new("t", vec![1, 30], 2, vec![0.0; 60], vec![0, 1]).unwrap();
        let e = train_conv(&spec(Network::Cnn, 2), &tab, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs square images"), "{e}");
        let img = |n: usize| {
            let x: Vec<f32> = (0..n * 64).map(|i| (i % 7) as f32).collect();
            let y: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
            PlainDataset::new("i", vec![1, 1, 8, 8], 2, x, y).unwrap()
        };
        let e = train_conv(&spec(Network::Cnn, 8), &img(4), &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("fewer than one batch"), "{e}");
        let mut epochs = Vec::new();
        let g = train_conv(&spec(Network::Vgg, 4), &img(10), &mut |e, l| {
            epochs.push((e, l))
        })
        .unwrap();
        assert_eq!(epochs.len(), 1);
        assert!(epochs.iter().all(|(_, l)| l.is_finite()));
        assert_eq!(g.values[g.inputs[0]].shape, vec![1, 1, 8, 8]);
        match &g.nodes[0].op {
            Op::Binary {
                op: BinOp::Mul,
                constant: Some(c),
                ..
            } => assert_eq!(c.data(), &[0.5]),
            other => panic!("first node {other:?}"),
        }
    }
}
