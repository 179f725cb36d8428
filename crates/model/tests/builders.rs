//! The literature network builders: they build, validate, have the published ReLU counts and
//! layer shapes, are deterministic per seed, and survive an ONNX export/import round trip.

use tessera_model::builders::{NETWORKS, find};
use tessera_model::export::export_model;
use tessera_model::stats::stats;
use tessera_model::{Graph, ImportOptions, Op, import_model};

const SEED: u64 = 7;

fn build(name: &str) -> Graph {
    let spec = find(name).unwrap_or_else(|| panic!("no builder named {name}"));
    (spec.build)(SEED).unwrap_or_else(|e| panic!("{name} does not build: {e}"))
}

#[test]
fn every_network_builds_and_validates() {
    assert_eq!(NETWORKS.len(), 14, "the builder list changed");
    for spec in NETWORKS {
        let g = (spec.build)(SEED).unwrap_or_else(|e| panic!("{} does not build: {e}", spec.name));
        g.validate()
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", spec.name));
        assert_eq!(g.inputs.len(), 1, "{}: one input", spec.name);
        assert_eq!(g.outputs.len(), 1, "{}: one output", spec.name);
        assert!(!spec.about.is_empty());
        let s = stats(&g);
        assert!(s.params > 0 && s.macs > 0 && s.relus > 0, "{}", spec.name);
        println!(
            "{:<12} params {:>10} macs {:>12} relus {:>9}",
            spec.name, s.params, s.macs, s.relus
        );
    }
}

#[test]
fn relu_counts_match_the_literature() {
    for (name, relus) in [
        ("resnet18-32", 557_056u64),
        ("resnet18-64", 2_228_224),
        ("resnet32-32", 303_104),
        ("resnet32-64", 1_212_416),
        ("vgg16-32", 276_480),
        ("vgg16-64", 1_105_920),
    ] {
        assert_eq!(stats(&build(name)).relus, relus, "{name} ReLU count");
    }
}

/// Number of features entering the first dense layer, from the flatten (Reshape) output.
fn flatten_features(g: &Graph) -> usize {
    let n = g
        .nodes
        .iter()
        .find(|n| matches!(n.op, Op::Reshape))
        .expect("a flatten");
    let s = g.shape(n.output);
    assert_eq!(s.len(), 2, "flatten gives [N, features]");
    s[1]
}

/// Input width (K) of the first dense layer.
fn first_dense_k(g: &Graph) -> usize {
    g.nodes
        .iter()
        .find_map(|n| match &n.op {
            Op::Dense(d) => Some(d.weight.shape()[1]),
            _ => None,
        })
        .expect("a dense layer")
}

#[test]
fn dash_and_cifar_net_shapes() {
    for (name, features) in [("dash-b", 40), ("dash-c", 845), ("dash-d", 256)] {
        let g = build(name);
        assert_eq!(flatten_features(&g), features, "{name} flatten");
        assert_eq!(first_dense_k(&g), features, "{name} first dense input");
    }
    let a = build("dash-a");
    assert_eq!(flatten_features(&a), 784);
    let dense: Vec<[usize; 2]> = a
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Dense(d) => Some([d.weight.shape()[0], d.weight.shape()[1]]),
            _ => None,
        })
        .collect();
    assert_eq!(dense, [[128, 784], [128, 128], [10, 128]], "dash-a MLP");
    // ResNet-50: 53 convolutions (the stem, 48 in the blocks, 4 projections),
    // 4.1 G multiply-accumulates at 224×224, a 2048-wide head.
    let r50 = build("resnet50-224");
    let convs = r50
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_)))
        .count();
    assert_eq!(convs, 53, "resnet50 convolutions");
    assert_eq!(first_dense_k(&r50), 2048, "resnet50 head");
    let macs = stats(&r50).macs;
    assert!(
        (4_000_000_000..4_200_000_000).contains(&macs),
        "resnet50 MACs {macs}"
    );
    for (name, k) in [("f-small", 128), ("f", 144)] {
        let g = build(name);
        assert_eq!(first_dense_k(&g), k, "{name} dense input");
        assert_eq!(flatten_features(&g), k, "{name} flatten");
    }
    for spec in NETWORKS {
        let g = (spec.build)(SEED).expect("builds");
        let classes = match spec.name {
            n if n.ends_with("-64") => 200,
            n if n.ends_with("-224") => 1000,
            _ => 10,
        };
        assert_eq!(g.shape(g.outputs[0]), [1, classes], "{} output", spec.name);
    }
}

#[test]
fn same_seed_same_network() {
    for spec in NETWORKS {
        let a = (spec.build)(11).expect("builds");
        let b = (spec.build)(11).expect("builds");
        assert!(a == b, "{}: two builds with one seed differ", spec.name);
        if spec.name.starts_with("dash") {
            let c = (spec.build)(12).expect("builds");
            assert!(a != c, "{}: another seed gives the same weights", spec.name);
        }
    }
}

#[test]
fn export_import_round_trip_keeps_stats() {
    for spec in NETWORKS {
        let g = (spec.build)(SEED).expect("builds");
        let bytes = export_model(&g).unwrap_or_else(|e| panic!("{}: export: {e}", spec.name));
        let h = import_model(&bytes, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{}: re-import: {e}", spec.name));
        let (s, t) = (stats(&g), stats(&h));
        assert_eq!(
            (s.params, s.macs, s.relus),
            (t.params, t.macs, t.relus),
            "{}: stats change in the round trip",
            spec.name
        );
        assert_eq!(g.nodes.len(), h.nodes.len(), "{}: node count", spec.name);
        for (a, b) in g.nodes.iter().zip(&h.nodes) {
            assert_eq!(a.op.kind(), b.op.kind(), "{}: node {}", spec.name, a.name);
            assert_eq!(
                g.shape(a.output),
                h.shape(b.output),
                "{}: shape of {}",
                spec.name,
                a.name
            );
        }
        assert_eq!(g.shape(g.inputs[0]), h.shape(h.inputs[0]));
        assert_eq!(g.shape(g.outputs[0]), h.shape(h.outputs[0]));
    }
}
