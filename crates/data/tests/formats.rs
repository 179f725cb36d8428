//! Input formats: round trips on generated files, real MNIST idx and TensorProto files, and
//! clear errors on damaged input.

use tessera_data::npy::{parse_npy, to_npy};
use tessera_data::{load_input, load_mnist_dir, load_pb, shared_data, synth};
use tessera_model::Tensor;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-data-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d.join(name)
}

#[test]
fn npy_round_trip_and_errors() {
    let t = Tensor::new(vec![1, 2, 3], vec![0.5, -1.0, 2.0, 3.25, 4.0, 5.0]).expect("tensor");
    let bytes = to_npy(&t);
    assert_eq!(parse_npy(&bytes).expect("parses"), t);
    let p = tmp("x.npy");
    std::fs::write(&p, &bytes).expect("write");
    assert_eq!(load_input(p.to_str().expect("utf8")).expect("loads"), t);
    // Truncated data, bad magic, every prefix: errors, never panics.
    for cut in 0..bytes.len() {
        assert!(
            parse_npy(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes accepted"
        );
    }
    let err = parse_npy(b"not numpy at all").expect_err("bad magic");
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn png_grey_and_rgb() {
    for (ct, ch) in [
        (png::ColorType::Grayscale, 1usize),
        (png::ColorType::Rgb, 3),
    ] {
        let (w, h) = (5u32, 4u32);
        let px: Vec<u8> = (0..(w * h) as usize * ch)
            .map(|i| (i * 11 % 256) as u8)
            .collect();
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, w, h);
            enc.set_color(ct);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().expect("header");
            wr.write_image_data(&px).expect("data");
        }
        let p = tmp(&format!("img{ch}.png"));
        std::fs::write(&p, &buf).expect("write");
        let t = load_input(p.to_str().expect("utf8")).expect("loads");
        assert_eq!(t.shape(), [1, ch, h as usize, w as usize]);
        // Planar layout: channel c of pixel (y, x) comes from interleaved px[(y*w+x)*ch + c].
        for c in 0..ch {
            for i in 0..(w * h) as usize {
                assert_eq!(
                    t.data()[c * (w * h) as usize + i],
                    f32::from(px[i * ch + c])
                );
            }
        }
        std::fs::write(&p, &buf[..buf.len() / 2]).expect("write");
        assert!(
            load_input(p.to_str().expect("utf8")).is_err(),
            "truncated PNG accepted"
        );
    }
}

#[test]
fn mnist_idx_and_tensorproto() {
    let Some(dir) = shared_data("mnist-t10k") else {
        return;
    };
    let d = load_mnist_dir(&dir).expect("mnist loads");
    assert_eq!(
        (d.count, d.rows, d.cols, d.labels.len()),
        (10_000, 28, 28, 10_000)
    );
    assert_eq!(d.labels[..5], [7, 2, 1, 0, 4]);
    let spec = format!("{}:1", dir.join("t10k-images-idx3-ubyte.gz").display());
    let x = load_input(&spec).expect("idx index");
    assert_eq!(x.shape(), [1, 1, 28, 28]);
    let bad = format!("{}:10000", dir.join("t10k-images-idx3-ubyte.gz").display());
    let e = load_input(&bad).expect_err("out of range");
    assert!(e.to_string().contains("out of range"), "{e}");
    let Some(m) = shared_data("onnx-mnist-8/test_data_set_0") else {
        return;
    };
    let t = load_pb(&m.join("input_0.pb")).expect("pb");
    assert_eq!(t.shape(), [1, 1, 28, 28]);
    let bytes = std::fs::read(m.join("input_0.pb")).expect("read");
    let p = tmp("cut.pb");
    std::fs::write(&p, &bytes[..bytes.len() - 7]).expect("write");
    assert!(load_pb(&p).is_err(), "truncated TensorProto accepted");
}

#[test]
fn glyphs_are_deterministic_and_balanced() {
    let a = synth::glyphs(1000, 5);
    let b = synth::glyphs(1000, 5);
    assert_eq!(a.pixels, b.pixels);
    let mut counts = [0usize; 10];
    for &l in &a.labels {
        counts[usize::from(l)] += 1;
    }
    assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    assert!(a.pixels.iter().all(|&p| (0.0..=255.0).contains(&p)));
}
