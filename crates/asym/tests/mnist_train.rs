//! Train a small CNN on real MNIST through the asym split (long: run in release with
//! `cargo test --release -p tessera-asym --test mnist_train -- --ignored --nocapture`).
//!
//! The shared data holds only the 10,000-image MNIST *test* set (see
//! `../shared/data/mnist-t10k/SOURCES.md`: the training set was absent from the snapshot), so
//! this trains on its first 8,000 images and tests on the held-out last 2,000.

use std::time::Instant;
use tessera_asym::{AsymOptions, LocalWorker, RankRule, TrainOptions, Trainer, rebatch};
use tessera_data::{load_mnist_dir, shared_data};
use tessera_engine::{argmax, run_f32};
use tessera_model::{Graph, GraphBuilder, Tensor};

const TRAIN: usize = 8000;
const BATCH: usize = 32;

fn cnn(batch: usize) -> Graph {
    let mut b = GraphBuilder::new("mnist-cnn", 7);
    let mut x = b.input("input", vec![batch, 1, 28, 28]).unwrap();
    x = b.conv(x, 16, 5, 1, 2).unwrap();
    x = b.relu(x).unwrap();
    x = b.max_pool(x, 2, 2).unwrap();
    x = b.conv(x, 32, 5, 1, 2).unwrap();
    x = b.relu(x).unwrap();
    x = b.max_pool(x, 2, 2).unwrap();
    x = b.flatten(x).unwrap();
    x = b.dense(x, 128).unwrap();
    x = b.relu(x).unwrap();
    let y = b.dense(x, 10).unwrap();
    b.finish(vec![y]).unwrap()
}

/// Image `i` scaled to [0, 1], shifted by (dy, dx) pixels (zero fill).
fn image(pixels: &[f32], i: usize, dy: isize, dx: isize, out: &mut Vec<f32>) {
    let src = &pixels[i * 784..(i + 1) * 784];
    for y in 0..28isize {
        for x in 0..28isize {
            let (sy, sx) = (y - dy, x - dx);
            let v = if (0..28).contains(&sy) && (0..28).contains(&sx) {
                src[(sy * 28 + sx) as usize] / 255.0
            } else {
                0.0
            };
            out.push(v);
        }
    }
}

#[test]
#[ignore = "long: trains for a few minutes in release"]
fn mnist_cnn_through_the_split_reaches_98_percent() {
    let Some(dir) = shared_data("mnist-t10k") else {
        return;
    };
    let data = load_mnist_dir(&dir).unwrap();
    assert_eq!(data.count, 10_000);
    let epochs: usize = std::env::var("ASYM_EPOCHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let opts = TrainOptions {
        lr: 0.02,
        momentum: 0.9,
        split: Some(AsymOptions {
            rank: RankRule::Schedule { start: 2, cap: 32 },
            ..AsymOptions::default()
        }),
    };
    let mut t = Trainer::new(&cnn(BATCH), opts).unwrap();
    for l in t.plan().layers() {
        eprintln!("layer {} {}: {:?}", l.id, l.name, l.placement);
    }
    let mut w = LocalWorker::new(t.plan().worker_layers());
    let mut rng = 0x1234_5678_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t0 = Instant::now();
    let mut order: Vec<usize> = (0..TRAIN).collect();
    let mut acc = 0.0;
    for epoch in 0..epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let (mut loss, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut energy = 0f64;
        let mut steps = 0usize;
        for chunk in order.chunks_exact(BATCH) {
            let mut x = Vec::with_capacity(BATCH * 784);
            for &i in chunk {
                let (dy, dx) = if epoch + 1 < epochs {
                    ((next() % 5) as isize - 2, (next() % 5) as isize - 2)
                } else {
                    (0, 0)
                };
                image(&data.pixels, i, dy, dx, &mut x);
            }
            let labels: Vec<usize> = chunk.iter().map(|&i| usize::from(data.labels[i])).collect();
            let r = t
                .step(
                    &Tensor::new(vec![BATCH, 1, 28, 28], x).unwrap(),
                    &labels,
                    Some(&mut w),
                )
                .unwrap();
            loss += f64::from(r.loss) * BATCH as f64;
            correct += r.correct;
            seen += BATCH;
            energy += r
                .layers
                .iter()
                .filter(|l| l.placement == "split")
                .map(|l| l.residual_energy)
                .sum::<f64>();
            steps += 1;
        }
        // Held-out test accuracy with the plain float engine on the trained weights.
        let eval = rebatch(t.graph(), 100).unwrap();
        let mut right = 0usize;
        for start in (TRAIN..data.count).step_by(100) {
            let mut x = Vec::with_capacity(100 * 784);
            for i in start..start + 100 {
                image(&data.pixels, i, 0, 0, &mut x);
            }
            let out = run_f32(&eval, &[Tensor::new(vec![100, 1, 28, 28], x).unwrap()]).unwrap();
            for (j, row) in out[0].data().chunks(10).enumerate() {
                right += usize::from(argmax(row) == usize::from(data.labels[start + j]));
            }
        }
        acc = right as f64 / (data.count - TRAIN) as f64;
        eprintln!(
            "epoch {epoch}: train loss {:.4}, train acc {:.4}, mean residual energy of split layers {:.4}, held-out acc {acc:.4} ({right}/{}), {:.1}s",
            loss / seen as f64,
            correct as f64 / seen as f64,
            energy / steps as f64 / 2.0,
            data.count - TRAIN,
            t0.elapsed().as_secs_f64()
        );
    }
    assert!(acc >= 0.98, "held-out accuracy {acc}");
}
