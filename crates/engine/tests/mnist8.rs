//! mnist-8 (ONNX zoo) through the float and integer engines on real data.

use tessera_data::{load_mnist_dir, load_pb, shared_data};
use tessera_engine::quant::{NodeWidth, QuantConfig, QuantModel, merge_widths};
use tessera_engine::{argmax, run_f32};
use tessera_model::{ImportOptions, load_model};

#[test]
fn float_engine_matches_reference_outputs() {
    let Some(dir) = shared_data("onnx-mnist-8") else {
        return;
    };
    let g =
        load_model(&dir.join("model.onnx"), &ImportOptions::default()).expect("mnist-8 imports");
    for (set, want_class) in [(0, 2), (1, 0), (2, 9)] {
        let d = dir.join(format!("test_data_set_{set}"));
        let x = load_pb(&d.join("input_0.pb")).expect("input");
        let want = load_pb(&d.join("output_0.pb")).expect("output");
        let got = run_f32(&g, &[x]).expect("runs");
        let got = &got[0];
        assert_eq!(got.shape(), want.shape());
        let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.data().iter().zip(want.data()) {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "set {set}: {a} vs {b} (max |ref| {scale})"
            );
        }
        assert_eq!(argmax(got.data()), want_class);
    }
}

#[test]
fn quantized_agrees_with_float_on_all_mnist_test_images() {
    let (Some(mdir), Some(ddir)) = (shared_data("onnx-mnist-8"), shared_data("mnist-t10k")) else {
        return;
    };
    let g = load_model(&mdir.join("model.onnx"), &ImportOptions::default()).expect("imports");
    let data = load_mnist_dir(&ddir).expect("mnist");
    assert_eq!(data.count, 10_000);
    let qm = QuantModel::new(&g, QuantConfig::default()).expect("quantizes");
    use rayon::prelude::*;
    let res: Vec<(usize, usize, Vec<NodeWidth>)> = (0..data.count)
        .into_par_iter()
        .map(|i| {
            let x = data.image(i).expect("image");
            let f = argmax(run_f32(&g, std::slice::from_ref(&x)).expect("float")[0].data());
            let r = qm.run(&[x]).expect("int");
            let q = argmax(qm.dequantize(&r.outputs[0]).data());
            (f, q, r.widths)
        })
        .collect();
    let (mut fc, mut qc, mut agree) = (0, 0, 0);
    let mut widths = Vec::new();
    for (i, (f, q, w)) in res.iter().enumerate() {
        let y = usize::from(data.labels[i]);
        fc += usize::from(*f == y);
        qc += usize::from(*q == y);
        agree += usize::from(f == q);
        merge_widths(&mut widths, w);
    }
    println!(
        "mnist-8 on 10,000 images: float top-1 {fc}, quantized top-1 {qc}, agreement {agree} (f = {})",
        qm.config().frac_bits
    );
    for w in &widths {
        println!(
            "  {:<24} {:<18} out {:>2} bits, acc {:>2} bits",
            w.name,
            w.op,
            w.out_bits(),
            w.acc_bits()
        );
    }
    assert!(
        fc >= 9_800,
        "float accuracy {fc}/10000 is below the zoo's ~98.9%"
    );
    assert!(
        agree >= 9_990,
        "float/quantized agreement {agree}/10000 is below 99.9%"
    );
}
