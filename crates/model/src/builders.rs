//! Seeded builders for the networks the private-inference literature measures.
//!
//! Weights are random (He-uniform, seeded), so these networks are for cost and exactness
//! measurements, not accuracy. Layer shapes follow the papers; where a paper leaves a choice open
//! the choice made here is stated on the builder.

use crate::ModelError;
use crate::builder::GraphBuilder;
use crate::ir::{Graph, ValueId};

/// A named network builder.
pub struct NetworkSpec {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line on what it is.
    pub about: &'static str,
    /// Build it from a seed.
    pub build: fn(u64) -> Result<Graph, ModelError>,
}

/// Every builder, by name.
pub const NETWORKS: &[NetworkSpec] = &[
    NetworkSpec {
        name: "dash-a",
        about: "Dash MNIST net A: MLP 784-128-128-10",
        build: dash_a,
    },
    NetworkSpec {
        name: "dash-b",
        about: "Dash MNIST net B: 4 small convs, FC 40-100-10",
        build: dash_b,
    },
    NetworkSpec {
        name: "dash-c",
        about: "Dash MNIST net C: Conv(1→5,k4,s2), FC 845-100-10",
        build: dash_c,
    },
    NetworkSpec {
        name: "dash-d",
        about: "Dash MNIST net D: Conv(1→16,k6,s2) ×2, FC 256-100-10",
        build: dash_d,
    },
    NetworkSpec {
        name: "f-small",
        about: "CIFAR net F-small (BCM+19): 8 convs 32/64/128, FC 128→10",
        build: f_small,
    },
    NetworkSpec {
        name: "f",
        about: "CIFAR net F (MiniONN, pooling as stride-2 convs): 9 convs, FC 144→10",
        build: f_net,
    },
    NetworkSpec {
        name: "mix",
        about: "a small residual CNN with every op of the integer semantics (3×12×12 input)",
        build: |s| mix(12, 9, s),
    },
    NetworkSpec {
        name: "resnet18-32",
        about: "ResNet-18 for CIFAR (32×32, 10 classes)",
        build: |s| resnet18(32, 10, s),
    },
    NetworkSpec {
        name: "resnet18-64",
        about: "ResNet-18 for TinyImageNet (64×64, 200 classes)",
        build: |s| resnet18(64, 200, s),
    },
    NetworkSpec {
        name: "resnet32-32",
        about: "ResNet-32 for CIFAR (32×32, 10 classes)",
        build: |s| resnet32(32, 10, s),
    },
    NetworkSpec {
        name: "resnet32-64",
        about: "ResNet-32 for TinyImageNet (64×64, 200 classes)",
        build: |s| resnet32(64, 200, s),
    },
    NetworkSpec {
        name: "resnet50-224",
        about: "ResNet-50 for ImageNet (224×224, 1000 classes; 4.1 G MACs)",
        build: |s| resnet50(224, 1000, s),
    },
    NetworkSpec {
        name: "vgg16-32",
        about: "VGG-16 for CIFAR (32×32, no FC ReLUs, FC 512→10)",
        build: |s| vgg16(32, 10, s),
    },
    NetworkSpec {
        name: "vgg16-64",
        about: "VGG-16 for TinyImageNet (64×64, FC 2048→200)",
        build: |s| vgg16(64, 200, s),
    },
];

/// Look up a builder by name.
pub fn find(name: &str) -> Option<&'static NetworkSpec> {
    NETWORKS.iter().find(|n| n.name.eq_ignore_ascii_case(name))
}

fn mnist_input(b: &mut GraphBuilder) -> Result<ValueId, ModelError> {
    b.input("input", vec![1, 1, 28, 28])
}

fn head(
    b: &mut GraphBuilder,
    mut x: ValueId,
    hidden: &[usize],
    classes: usize,
) -> Result<ValueId, ModelError> {
    x = b.flatten(x)?;
    for &h in hidden {
        x = b.dense(x, h)?;
        x = b.relu(x)?;
    }
    b.dense(x, classes)
}

/// Dash net A: MLP 784-128-128-10.
pub fn dash_a(seed: u64) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("dash-a", seed);
    let x = mnist_input(&mut b)?;
    let y = head(&mut b, x, &[128, 128], 10)?;
    b.finish(vec![y])
}

/// Dash net B: Conv(1→5,k5), Conv(5→5,k3,s3), Conv(5→10,k3), Conv(10→10,k3,s3), FC 40-100-10;
/// no padding, ReLU after every layer but the last.
pub fn dash_b(seed: u64) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("dash-b", seed);
    let mut x = mnist_input(&mut b)?;
    for (c, k, s) in [(5, 5, 1), (5, 3, 3), (10, 3, 1), (10, 3, 3)] {
        x = b.conv(x, c, k, s, 0)?;
        x = b.relu(x)?;
    }
    let y = head(&mut b, x, &[100], 10)?;
    b.finish(vec![y])
}

/// Dash net C: Conv(1→5,k4,s2), FC 845-100-10.
pub fn dash_c(seed: u64) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("dash-c", seed);
    let mut x = mnist_input(&mut b)?;
    x = b.conv(x, 5, 4, 2, 0)?;
    x = b.relu(x)?;
    let y = head(&mut b, x, &[100], 10)?;
    b.finish(vec![y])
}

/// Dash net D: Conv(1→16,k6,s2), Conv(16→16,k6,s2), FC 256-100-10.
pub fn dash_d(seed: u64) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("dash-d", seed);
    let mut x = mnist_input(&mut b)?;
    for _ in 0..2 {
        x = b.conv(x, 16, 6, 2, 0)?;
        x = b.relu(x)?;
    }
    let y = head(&mut b, x, &[100], 10)?;
    b.finish(vec![y])
}

/// CIFAR "F-small": 3×3 convs with channels 32, 32, 32 (s2), 64, 64, 64 (s2), 128, 128 and FC 128→10.
/// Unpadded, except the stride-2 convs (padding 1): 32→30→28→14→12→10→5→3→1, which gives the
/// published 128 features into the classifier.
pub fn f_small(seed: u64) -> Result<Graph, ModelError> {
    cifar_chain(
        "f-small",
        &[
            (32, 3, 1, 0),
            (32, 3, 1, 0),
            (32, 3, 2, 1),
            (64, 3, 1, 0),
            (64, 3, 1, 0),
            (64, 3, 2, 1),
            (128, 3, 1, 0),
            (128, 3, 1, 0),
        ],
        seed,
    )
}

/// CIFAR "F" (MiniONN with pooling replaced by stride-2 convs): seven 3×3 convs of 64 channels
/// (the third and sixth with stride 2), 1×1 conv 64, 1×1 conv 16, FC 144→10. Unpadded except the
/// stride-2 convs (padding 1): 32→30→28→14→12→10→5→3, so 16·3·3 = 144 features as published.
pub fn f_net(seed: u64) -> Result<Graph, ModelError> {
    cifar_chain(
        "f",
        &[
            (64, 3, 1, 0),
            (64, 3, 1, 0),
            (64, 3, 2, 1),
            (64, 3, 1, 0),
            (64, 3, 1, 0),
            (64, 3, 2, 1),
            (64, 3, 1, 0),
            (64, 1, 1, 0),
            (16, 1, 1, 0),
        ],
        seed,
    )
}

fn cifar_chain(
    name: &str,
    convs: &[(usize, usize, usize, usize)],
    seed: u64,
) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new(name, seed);
    let mut x = b.input("input", vec![1, 3, 32, 32])?;
    for &(c, k, s, p) in convs {
        x = b.conv(x, c, k, s, p)?;
        x = b.relu(x)?;
    }
    let y = head(&mut b, x, &[], 10)?;
    b.finish(vec![y])
}

fn basic_block(
    b: &mut GraphBuilder,
    x: ValueId,
    planes: usize,
    stride: usize,
) -> Result<ValueId, ModelError> {
    let c_in = b.shape(x).get(1).copied().unwrap_or(0);
    let mut y = b.conv(x, planes, 3, stride, 1)?;
    y = b.relu(y)?;
    y = b.conv(y, planes, 3, 1, 1)?;
    let short = if stride != 1 || c_in != planes {
        b.conv(x, planes, 1, stride, 0)?
    } else {
        x
    };
    let s = b.add(y, short)?;
    b.relu(s)
}

fn resnet(
    name: &str,
    hw: usize,
    classes: usize,
    stem: usize,
    stages: &[(usize, usize)],
    seed: u64,
) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new(name, seed);
    let x = b.input("input", vec![1, 3, hw, hw])?;
    let mut x = b.conv(x, stem, 3, 1, 1)?;
    x = b.relu(x)?;
    for (i, &(planes, blocks)) in stages.iter().enumerate() {
        for j in 0..blocks {
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            x = basic_block(&mut b, x, planes, stride)?;
        }
    }
    x = b.global_avg_pool(x)?;
    let y = head(&mut b, x, &[], classes)?;
    b.finish(vec![y])
}

/// ResNet-18 in its CIFAR form (3×3 stem, no stem pooling), 1×1 projection shortcuts.
pub fn resnet18(hw: usize, classes: usize, seed: u64) -> Result<Graph, ModelError> {
    resnet(
        &format!("resnet18-{hw}"),
        hw,
        classes,
        64,
        &[(64, 2), (128, 2), (256, 2), (512, 2)],
        seed,
    )
}

/// A bottleneck block: 1×1 reduce, 3×3 (stride here), 1×1 expand ×4, projection shortcut where
/// the shape changes.
fn bottleneck(
    b: &mut GraphBuilder,
    x: ValueId,
    planes: usize,
    stride: usize,
) -> Result<ValueId, ModelError> {
    let c_in = b.shape(x).get(1).copied().unwrap_or(0);
    let mut y = b.conv(x, planes, 1, 1, 0)?;
    y = b.relu(y)?;
    y = b.conv(y, planes, 3, stride, 1)?;
    y = b.relu(y)?;
    y = b.conv(y, 4 * planes, 1, 1, 0)?;
    let short = if stride != 1 || c_in != 4 * planes {
        b.conv(x, 4 * planes, 1, stride, 0)?
    } else {
        x
    };
    let s = b.add(y, short)?;
    b.relu(s)
}

/// ResNet-50 in its ImageNet form: 7×7 stride-2 stem, 3×3 stride-2 max pool, bottleneck stages
/// of 3, 4, 6 and 3 blocks (64, 128, 256, 512 planes), global average pooling, one FC layer
/// (batch normalization folded into the convolutions, as an exported model has it).
pub fn resnet50(hw: usize, classes: usize, seed: u64) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new(&format!("resnet50-{hw}"), seed);
    let x = b.input("input", vec![1, 3, hw, hw])?;
    let mut x = b.conv(x, 64, 7, 2, 3)?;
    x = b.relu(x)?;
    x = b.max_pool_padded(x, 3, 2, 1)?;
    for (i, &(planes, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].iter().enumerate() {
        for j in 0..blocks {
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            x = bottleneck(&mut b, x, planes, stride)?;
        }
    }
    x = b.global_avg_pool(x)?;
    let y = head(&mut b, x, &[], classes)?;
    b.finish(vec![y])
}

/// ResNet-32 for CIFAR: 16-channel stem, three stages of five basic blocks (16, 32, 64 channels).
pub fn resnet32(hw: usize, classes: usize, seed: u64) -> Result<Graph, ModelError> {
    resnet(
        &format!("resnet32-{hw}"),
        hw,
        classes,
        16,
        &[(16, 5), (32, 5), (64, 5)],
        seed,
    )
}

/// VGG-16 in its CIFAR form: 13 3×3 convs with 2×2 max pooling, one FC classifier (no FC ReLUs).
pub fn vgg16(hw: usize, classes: usize, seed: u64) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new(&format!("vgg16-{hw}"), seed);
    let mut x = b.input("input", vec![1, 3, hw, hw])?;
    for stage in [
        &[64, 64][..],
        &[128, 128],
        &[256, 256, 256],
        &[512, 512, 512],
        &[512, 512, 512],
    ] {
        for &c in stage {
            x = b.conv(x, c, 3, 1, 1)?;
            x = b.relu(x)?;
        }
        x = b.max_pool(x, 2, 2)?;
    }
    let y = head(&mut b, x, &[], classes)?;
    b.finish(vec![y])
}

/// A small residual CNN that uses every op of the integer semantics, for exactness tests of the
/// schemes: per-channel input normalisation (Sub, Mul by constants), a grouped 3×3 conv + ReLU,
/// a MobileNet-style block (depthwise 3×3 conv, ReLU6, pointwise 1×1 conv) added back to its
/// input (residual Add) + ReLU, a padded 3×3 average pool (divisors 4, 6 and 9), a 2×2 max pool,
/// global average pooling and a dense head with 10 classes. Input `[1, 3, hw, hw]`; `c` must be a
/// multiple of 3.
pub fn mix(hw: usize, c: usize, seed: u64) -> Result<Graph, ModelError> {
    mix_with(hw, c, seed, false)
}

/// [`mix`] with a batch normalisation after its residual Add, as pre-activation networks
/// (DenseNet) put it: a per-channel Mul, then Add, by constants, which no conv can absorb — the
/// affine chain of the integer semantics v2. The 2pc scheme does not run such a step.
pub fn mix_bn(hw: usize, c: usize, seed: u64) -> Result<Graph, ModelError> {
    mix_with(hw, c, seed, true)
}

fn mix_with(hw: usize, c: usize, seed: u64, batch_norm: bool) -> Result<Graph, ModelError> {
    use crate::ir::BinOp;
    use crate::tensor::Tensor;
    let name = if batch_norm { "mix-bn" } else { "mix" };
    let mut b = GraphBuilder::new(&format!("{name}-{hw}"), seed);
    let x = b.input("input", vec![1, 3, hw, hw])?;
    let x = b.constant_op(
        x,
        BinOp::Sub,
        Tensor::new(vec![1, 3, 1, 1], vec![0.48, 0.45, 0.40])?,
    )?;
    let x = b.constant_op(
        x,
        BinOp::Mul,
        Tensor::new(vec![1, 3, 1, 1], vec![4.3, 4.4, -3.9])?,
    )?;
    let y = b.conv_grouped(x, c, 3, 1, 1, 3)?;
    let y = b.relu(y)?;
    let z = b.conv_grouped(y, c, 3, 1, 1, c)?;
    let z = b.clip(z, 0.0, 6.0)?;
    let z = b.conv(z, c, 1, 1, 0)?;
    let mut r = b.add(y, z)?;
    if batch_norm {
        r = b.constant_op(
            r,
            BinOp::Mul,
            Tensor::new(
                vec![1, c, 1, 1],
                (0..c).map(|i| 0.7 + 0.1 * (i % 5) as f32).collect(),
            )?,
        )?;
        r = b.constant_op(
            r,
            BinOp::Add,
            Tensor::new(
                vec![1, c, 1, 1],
                (0..c).map(|i| 0.05 * (i % 3) as f32 - 0.05).collect(),
            )?,
        )?;
    }
    let r = b.relu(r)?;
    let r = b.avg_pool(r, 3, 1, 1)?;
    let r = b.max_pool(r, 2, 2)?;
    let r = b.global_avg_pool(r)?;
    let y = head(&mut b, r, &[], 10)?;
    b.finish(vec![y])
}

/// A ShuffleNet-style unit as an int8 ONNX model imports (seeded): grids given by Quantize
/// nodes, integer weights with per-channel scales, a channel split, a depthwise conv, the
/// concatenation of two branches on different grids, the channel shuffle (Reshape, Transpose,
/// Reshape), a max pool, global average pooling to a finer grid, a dense head and a final
/// change of grid. `c` channels per branch, `hw` × `hw` input with `c` channels. For the
/// exactness tests of every engine and scheme on int8 models.
pub fn shuffle_int8(hw: usize, c: usize, seed: u64) -> Result<Graph, ModelError> {
    use crate::ir::{Conv, Dense, Op, Pool, QParam};
    use crate::tensor::Tensor;
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut b = GraphBuilder::new(&format!("shuffle-int8-{hw}"), seed);
    let grid = |rng: &mut rand_chacha::ChaCha20Rng, signed: bool| {
        let z = if signed {
            rng.random_range(-20..=20)
        } else {
            rng.random_range(0..=140)
        };
        QParam::new(rng.random_range(0.005f32..0.08), z, signed)
    };
    // Integer weights in [−127, 127] times per-channel scales, small biases.
    let given = |rng: &mut rand_chacha::ChaCha20Rng, co: usize, k: usize| {
        let scales: Vec<f32> = (0..co).map(|_| rng.random_range(0.001f32..0.03)).collect();
        let w: Vec<f32> = (0..co * k)
            .map(|i| rng.random_range(-127i32..=127) as f32 * scales[i / k.max(1)])
            .collect();
        let bias: Vec<f32> = (0..co).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        (w, bias, scales)
    };
    let conv = |b: &mut GraphBuilder,
                rng: &mut rand_chacha::ChaCha20Rng,
                x: ValueId,
                (ci, co, groups): (usize, usize, usize),
                relu: bool|
     -> Result<ValueId, ModelError> {
        let k = ci / groups * 9;
        let (w, bias, scales) = given(rng, co, k);
        let op = Op::Conv(Conv {
            weight: Tensor::new(vec![co, ci / groups, 3, 3], w)?,
            bias: Some(Tensor::new(vec![co], bias)?),
            strides: [1, 1],
            pads: [1; 4],
            dilations: [1, 1],
            groups,
            weight_scales: Some(scales),
        });
        let mut y = b.push("conv", op, vec![x], "")?;
        if relu && rng.random_bool(0.5) {
            // A QDQ model's Conv → Relu → QuantizeLinear: the grid moves back to the conv.
            y = b.push("relu", Op::Relu, vec![y], "")?;
        }
        let q = if relu {
            QParam::new(rng.random_range(0.005f32..0.08), 0, false)?
        } else {
            let signed = rng.random_bool(0.5);
            grid(rng, signed)?
        };
        b.push("q", Op::Quantize(q), vec![y], "")
    };
    let x = b.input("x", vec![1, c, hw, hw])?;
    let g0 = grid(&mut rng, false)?;
    let x = b.push("qin", Op::Quantize(g0), vec![x], "")?;
    let a = conv(&mut b, &mut rng, x, (c, 2 * c, 1), true)?;
    let l = b.push(
        "split0",
        Op::Slice {
            axis: 1,
            start: 0,
            end: c,
        },
        vec![a],
        "",
    )?;
    let r = b.push(
        "split1",
        Op::Slice {
            axis: 1,
            start: c,
            end: 2 * c,
        },
        vec![a],
        "",
    )?;
    let r = conv(&mut b, &mut rng, r, (c, c, c), false)?;
    let r = conv(&mut b, &mut rng, r, (c, c, 1), true)?;
    let cat = b.push("cat", Op::Concat { axis: 1 }, vec![l, r], "")?;
    let s = b.reshape("r1", cat, vec![1, 2, c, hw, hw], "")?;
    let s = b.push(
        "shuffle",
        Op::Transpose {
            perm: vec![0, 2, 1, 3, 4],
        },
        vec![s],
        "",
    )?;
    let s = b.reshape("r2", s, vec![1, 2 * c, hw, hw], "")?;
    let g1 = grid(&mut rng, false)?;
    let s = b.push("qs", Op::Quantize(g1), vec![s], "")?;
    let pool = Pool {
        kernel: [3, 3],
        strides: [2, 2],
        pads: [1; 4],
        dilations: [1, 1],
        count_include_pad: false,
        ceil_mode: false,
    };
    let s = b.push("max", Op::MaxPool(pool), vec![s], "")?;
    let s = b.push("gap", Op::GlobalAvgPool, vec![s], "")?;
    let s = b.reshape("flat", s, vec![1, 2 * c], "")?;
    let g2 = QParam::new(rng.random_range(0.0005f32..0.005), 0, false)?;
    let s = b.push("qg", Op::Quantize(g2), vec![s], "")?;
    let (w, bias, scales) = given(&mut rng, 5, 2 * c);
    let dense = Op::Dense(Dense {
        weight: Tensor::new(vec![5, 2 * c], w)?,
        bias: Some(Tensor::new(vec![5], bias)?),
        weight_scales: Some(scales),
    });
    let y = b.push("fc", dense, vec![s], "")?;
    let g3 = grid(&mut rng, false)?;
    let y = b.push("qout", Op::Quantize(g3), vec![y], "")?;
    // A requantization to another grid at the end (QLinearAdd's output, say).
    let g4 = grid(&mut rng, true)?;
    let y = b.push("qre", Op::Quantize(g4), vec![y], "")?;
    b.finish(vec![y])
}

/// The architectures [`trainable`] builds.
pub const TRAINABLE: [&str; 3] = ["cnn", "vgg", "resnet"];

/// A network to train (not a literature network): `arch` for `batch` images of
/// `channels × side × side` and `classes` outputs, He-uniform weights from a fixed seed.
///
/// * `cnn`: conv 16 5×5, ReLU, max-pool 2, conv 32 5×5, ReLU, max-pool 2, dense 128, ReLU,
///   dense `classes`;
/// * `vgg`: 3×3 convs of 32, 32, pool, 64, 64, pool, 128 channels (each followed by ReLU),
///   global average pool, dense `classes`;
/// * `resnet`: conv 32, a residual block of two 3×3 convs, pool, conv 64, a residual block,
///   global average pool, dense `classes`.
///
/// `width` (vgg, resnet) multiplies every channel count. `tessera train` and the attested host's
/// CNN jobs train these.
pub fn trainable(
    arch: &str,
    width: usize,
    batch: usize,
    channels: usize,
    side: usize,
    classes: usize,
) -> Result<Graph, ModelError> {
    if !TRAINABLE.contains(&arch) {
        return Err(ModelError::Invalid(format!(
            "no trainable network {arch:?}: choose one of {}",
            TRAINABLE.join(", ")
        )));
    }
    if batch == 0 || channels == 0 || side < 4 || classes < 2 {
        return Err(ModelError::Invalid(format!(
            "a {arch} needs a batch, channels, images of at least 4×4 and two classes \
             (got batch {batch}, {channels}×{side}×{side}, {classes} classes)"
        )));
    }
    let w = width.max(1);
    let mut b = GraphBuilder::new(arch, 7);
    let mut x = b.input("input", vec![batch, channels, side, side])?;
    match arch {
        "vgg" => {
            for (c, pool) in [
                (32, false),
                (32, true),
                (64, false),
                (64, true),
                (128, false),
            ] {
                x = b.conv(x, c * w, 3, 1, 1)?;
                x = b.relu(x)?;
                if pool {
                    x = b.max_pool(x, 2, 2)?;
                }
            }
            x = b.global_avg_pool(x)?;
            x = b.flatten(x)?;
        }
        "resnet" => {
            for (i, c) in [32 * w, 64 * w].into_iter().enumerate() {
                x = b.conv(x, c, 3, 1, 1)?;
                x = b.relu(x)?;
                let y = b.conv(x, c, 3, 1, 1)?;
                let y = b.relu(y)?;
                let z = b.conv(y, c, 3, 1, 1)?;
                let s = b.add(z, x)?;
                x = b.relu(s)?;
                if i == 0 {
                    x = b.max_pool(x, 2, 2)?;
                }
            }
            x = b.global_avg_pool(x)?;
            x = b.flatten(x)?;
        }
        _ => {
            // cnn
            x = b.conv(x, 16, 5, 1, 2)?;
            x = b.relu(x)?;
            x = b.max_pool(x, 2, 2)?;
            x = b.conv(x, 32, 5, 1, 2)?;
            x = b.relu(x)?;
            x = b.max_pool(x, 2, 2)?;
            x = b.flatten(x)?;
            x = b.dense(x, 128)?;
            x = b.relu(x)?;
        }
    }
    let y = b.dense(x, classes)?;
    b.finish(vec![y])
}
