//! The `tessera` binary end to end.

use std::process::Command;

fn tessera(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_runs_from_the_repository_alone() {
    // The demo's "bit-exact" column compares each scheme with `QuantModel::run`, which is also
    // what `plain` runs, so it is no check of `plain`; the glyph labels are the oracle here, and
    // `plain_matches_hand_computed_integers` and `run_and_eval_mnist8` check `plain`'s numbers.
    let dir = std::env::temp_dir().join(format!("tessera-demo-test-{}", std::process::id()));
    let out_dir = dir.display().to_string();
    let (ok, out, err) = tessera(&["demo", "--n", "100", "--out", &out_dir]);
    assert!(ok, "demo failed: {err}");
    assert!(out.contains("scheme") && out.contains("plain"), "{out}");
    // lhe runs every image bit-exact with its (v2) reference, 2pc its sample.
    assert!(out.contains("lhe: 100 of 100 bit-exact"), "{out}");
    assert!(
        out.contains("2pc server-garbler: 20 of 20 bit-exact"),
        "{out}"
    );
    assert!(
        out.contains("2pc client-garbler: 20 of 20 bit-exact"),
        "{out}"
    );
    let (ok, json, err) = tessera(&["demo", "--n", "50", "--json", "--out", &out_dir]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("demo --json is JSON");
    let rows = v["rows"].as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["scheme"].as_str().is_some_and(|s| s.starts_with(name)))
            .unwrap_or_else(|| panic!("no {name} row: {v}"))
    };
    let acc = row("plain")["correct"].as_u64().expect("correct count");
    assert!(
        acc >= 45,
        "the demo's CNN should classify glyphs well: {acc}/50"
    );
    // The demo's CNN gives asym layers to split: the worker gets work and bytes.
    let asym = row("asym");
    assert!(asym["rounds"].as_u64() >= Some(1), "{asym}");
    assert!(asym["bytes_up"].as_u64() > Some(0), "{asym}");
    // Every scheme of the build has a row, attested's computed from its own run.
    for s in ["tee", "gc", "lhe", "2pc", "attested"] {
        let r = row(s);
        assert!(r["latency_ms_median"].as_f64() > Some(0.0), "{r}");
    }
    assert!(row("attested")["rounds"].as_u64() >= Some(1));
    assert!(dir.join("compare.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_command_has_help() {
    for c in [
        "inspect",
        "run",
        "eval",
        "build",
        "demo",
        "compare",
        "characterize",
        "bench",
        "enclave",
        "client",
        "relay",
        "attest",
        "selftest",
        "worker",
        "train",
        "broker",
        "agent",
        "stakeholder",
        "attested-demo",
        "server",
        "upload",
    ] {
        let (ok, out, _) = tessera(&[c, "--help"]);
        assert!(ok && out.contains("Usage"), "{c} --help: {out}");
    }
}

#[test]
fn inspect_builtin_counts_relus() {
    let (ok, out, err) = tessera(&["inspect", "resnet18-32", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["stats"]["relus"], 557_056);
}

#[test]
fn clear_errors() {
    let (ok, _, err) = tessera(&["inspect", "no-such-model"]);
    assert!(
        !ok && err.contains("neither an existing ONNX file nor a built-in network"),
        "{err}"
    );
    let bad = std::env::temp_dir().join(format!("tessera-bad-{}.onnx", std::process::id()));
    std::fs::write(&bad, b"\x08\x07garbage that is not a model").expect("write");
    let (ok, _, err) = tessera(&["inspect", bad.to_str().expect("utf8")]);
    assert!(!ok && err.starts_with("error:"), "{err}");
    let (ok, _, err) = tessera(&["run", "dash-a", "--input", "nothing.xyz"]);
    assert!(!ok && err.contains("unknown input format"), "{err}");
}

#[test]
fn build_writes_onnx_that_imports() {
    let out = std::env::temp_dir().join(format!("tessera-dash-c-{}.onnx", std::process::id()));
    let (ok, _, err) = tessera(&["build", "dash-c", "-o", out.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    let (ok, text, err) = tessera(&["inspect", out.to_str().expect("utf8"), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["stats"]["relus"], 5 * 13 * 13 + 100);
}

#[test]
fn an_int8_model_runs_under_its_own_scales_in_plain_and_tee() {
    let Some(m) = tessera_data::shared_data("onnx-shufflenet-v2-12-int8") else {
        return;
    };
    let model = m.join("model.onnx");
    let input = m.join("test_data_set_0/input_0.pb");
    let (model, input) = (model.to_str().expect("utf8"), input.to_str().expect("utf8"));
    let mut exact = Vec::new();
    for scheme in ["plain", "tee"] {
        let (ok, out, err) =
            tessera(&["run", model, "--input", input, "--scheme", scheme, "--json"]);
        assert!(ok, "{scheme}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["class"], 556, "{scheme}: the zoo reference's class");
        assert_eq!(v["float_class"], 556);
        let sem = v["semantics"].as_str().expect("semantics");
        assert!(sem.contains("the model's own int8 scales"), "{sem}");
        exact.push(v["exact_output"].clone());
    }
    assert_eq!(exact[0], exact[1], "tee reproduces plain bit for bit");
    // gc compiles it too (split, concatenation and shuffle are label moves): `inspect` reports
    // the sound k it would garble at.
    let (ok, out, err) = tessera(&["inspect", model, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["gc_error"], serde_json::Value::Null, "{v}");
    assert_eq!(v["gc_sound_primes"], 12);
}

/// The mnist-8 model directory and the MNIST test set (shared data; `None`, after a printed
/// reason, when absent outside CI).
fn mnist8_and_data() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    Some((
        tessera_data::shared_data("onnx-mnist-8")?,
        tessera_data::shared_data("mnist-t10k")?,
    ))
}

#[test]
fn auto_semantics_follow_the_calibration_data() {
    let Some((m, d)) = mnist8_and_data() else {
        return;
    };
    let model = m.join("model.onnx");
    let input = m.join("test_data_set_0/input_0.pb");
    let base = [
        "run",
        model.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--json",
    ];
    let semantics = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (ok, out, err) = tessera(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["semantics"].as_str().expect("semantics").to_string()
    };
    assert!(semantics(&[]).starts_with("pow2"), "no data: pow2");
    let data = d.to_str().expect("utf8");
    let with = semantics(&["--calibrate", "mnist:8", "--calibration-data", data]);
    assert!(with.starts_with("v2") && with.contains("mnist:8"), "{with}");
}

#[test]
fn run_and_eval_mnist8() {
    let Some((m, d)) = mnist8_and_data() else {
        return;
    };
    let model = m.join("model.onnx");
    let input = m.join("test_data_set_0/input_0.pb");
    let (ok, out, err) = tessera(&[
        "run",
        model.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["class"], 2);
    assert_eq!(v["float_class"], 2);
    // The reference outputs shipped with the model (computed by ONNX's own runtime, not by
    // tessera): plain's dequantized logits stay within the fixed-point error of them, under the
    // power-of-two semantics (f = 8) and under v2 calibrated on 64 MNIST images.
    let data = d.to_str().expect("utf8");
    let v2: [&str; 6] = [
        "--semantics",
        "v2",
        "--calibrate",
        "mnist:64",
        "--calibration-data",
        data,
    ];
    for (set, semantics) in (0..3).flat_map(|s| [(s, &[][..]), (s, &v2[..])]) {
        let dir = m.join(format!("test_data_set_{set}"));
        let input = dir.join("input_0.pb");
        let mut args = vec![
            "run",
            model.to_str().expect("utf8"),
            "--input",
            input.to_str().expect("utf8"),
            "--json",
        ];
        args.extend_from_slice(semantics);
        let (ok, out, err) = tessera(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let want = tessera_data::load_pb(&dir.join("output_0.pb")).expect("reference output");
        let scale = v["output_scale"].as_f64().expect("output_scale");
        let got: Vec<f64> = v["exact_output"]
            .as_array()
            .expect("exact_output")
            .iter()
            .map(|e| e.as_i64().expect("integer") as f64 * scale)
            .collect();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(want.data())
            .map(|(g, &w)| (g - f64::from(w)).abs())
            .fold(0f64, f64::max);
        let scale = want
            .data()
            .iter()
            .fold(1f64, |m, &w| m.max(f64::from(w).abs()));
        println!(
            "mnist-8 set {set}: worst |plain − ONNX reference| = {worst:.3} of logits up to {scale:.0}"
        );
        // Fixed-point error at f = 8 on this model: about 0.2% of the largest logit; v2 at 8-bit
        // activations: about 0.5%.
        assert!(
            worst < 0.01 * scale,
            "set {set}: {got:?} vs {:?}",
            want.data()
        );
        let fworst = v["float_output"]
            .as_array()
            .expect("float_output")
            .iter()
            .zip(want.data())
            .map(|(g, &w)| (g.as_f64().expect("float") - f64::from(w)).abs())
            .fold(0f64, f64::max);
        assert!(
            fworst < 1e-4 * scale,
            "float engine: {fworst} off the reference"
        );
        let argmax = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        let want64: Vec<f64> = want.data().iter().map(|&w| f64::from(w)).collect();
        assert_eq!(v["class"].as_u64(), Some(argmax(&want64) as u64));
    }
    let (ok, out, err) = tessera(&[
        "eval",
        model.to_str().expect("utf8"),
        "--dataset",
        "mnist:300",
        "--data",
        d.to_str().expect("utf8"),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    // Oracles independent of the integer engine: the MNIST labels, and the float engine.
    // (`exact_matches` for plain compares `QuantModel::run` with itself, so it is not asserted.)
    let q = v["quantized_correct"].as_u64().expect("quantized_correct");
    assert!(q >= 290, "mnist-8 quantized: {q}/300 correct");
    assert!(v["agreement"].as_u64().expect("agreement") >= 299);
    let (ok, _, err) = tessera(&[
        "eval",
        model.to_str().expect("utf8"),
        "--dataset",
        "mnist:10",
        "--data",
        d.to_str().expect("utf8"),
        "--max-bits",
        "12",
    ]);
    assert!(!ok && err.contains("signed bits"), "{err}");
    // --max-bits bounds the pow2 widths; v2's intervals are proven, and it says so.
    let (ok, _, err) = tessera(&[
        "eval",
        model.to_str().expect("utf8"),
        "--dataset",
        "mnist:10",
        "--data",
        d.to_str().expect("utf8"),
        "--semantics",
        "v2",
        "--max-bits",
        "12",
    ]);
    assert!(
        !ok && err.contains("--max-bits applies to --semantics pow2 only"),
        "{err}"
    );
}

/// `tessera enclave` and `tessera client` as separate processes (through `tessera relay`, the
/// untrusted host), bit-exact with `tessera run --scheme plain`.
#[test]
fn enclave_and_client_processes() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-enclave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("dash-a.onnx");
    let (ok, _, err) = tessera(&["build", "dash-a", "-o", model.to_str().unwrap()]);
    assert!(ok, "{err}");
    let input = dir.join("x.npy");
    let x = tessera_model::Tensor::new(
        vec![1, 1, 28, 28],
        (0..784u32)
            .map(|i| ((i * 37) % 256) as f32 / 255.0)
            .collect(),
    )
    .unwrap();
    std::fs::write(&input, tessera_data::npy::to_npy(&x)).unwrap();

    let state = dir.join("state");
    let (mut enclave, addr, seen) = spawn_until(
        &[
            "enclave",
            model.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
        ],
        "listening on ",
    );
    let measurement = seen
        .iter()
        .find_map(|l| l.strip_prefix("measurement "))
        .expect("the enclave prints its measurement")
        .to_string();
    let (mut relay, raddr, _) = spawn_until(
        &["relay", "--listen", "127.0.0.1:0", "--to", &addr],
        "relaying ",
    );
    let (ok, out, err) = tessera(&[
        "client",
        "--connect",
        &raddr,
        "--input",
        input.to_str().unwrap(),
        "--allow-simulated",
        "--measurement",
        &measurement,
        "--json",
    ]);
    let (ok2, plain, err2) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    // A client that pins another measurement is refused.
    let (bad, _, bad_err) = tessera(&[
        "client",
        "--connect",
        &addr,
        "--input",
        input.to_str().unwrap(),
        "--allow-simulated",
        "--measurement",
        &"00".repeat(48),
    ]);
    let _ = enclave.kill();
    let _ = relay.kill();
    let _ = enclave.wait();
    let _ = relay.wait();
    assert!(ok, "client failed: {err}");
    assert!(ok2, "run failed: {err2}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("client --json");
    let p: serde_json::Value = serde_json::from_str(&plain).expect("run --json");
    assert_eq!(
        v["exact_output"], p["exact_output"],
        "bit-exact with the reference"
    );
    assert!(
        v["attestation"].as_str().unwrap().contains("SIMULATED"),
        "{v}"
    );
    assert!(!bad, "a wrong measurement must be refused");
    assert!(bad_err.contains("measurement"), "{bad_err}");
    let (ok, _, err) = tessera(&["client", "--input", "x.npy"]);
    assert!(!ok && err.contains("--allow-simulated"), "{err}");
}

/// A two-layer dense network whose integer outputs are worked out by hand from the semantics
/// in `engine::quant` (not by running tessera): `plain` must print exactly those integers.
#[test]
fn plain_matches_hand_computed_integers() {
    use tessera_model::{Dense, GraphBuilder, Op, Tensor};
    let dir = std::env::temp_dir().join(format!("tessera-cli-hand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = |shape: Vec<usize>, v: Vec<f32>| Tensor::new(shape, v).unwrap();
    let mut b = GraphBuilder::new("hand", 0);
    let x = b.input("x", vec![1, 2]).unwrap();
    let d1 = Dense {
        weight: t(vec![2, 2], vec![1.0, 0.5, -0.25, 2.0]),
        bias: Some(t(vec![2], vec![0.125, -1.0])),
        weight_scales: None,
    };
    let h = b.push("d1", Op::Dense(d1), vec![x], "").unwrap();
    let r = b.push("relu", Op::Relu, vec![h], "").unwrap();
    let d2 = Dense {
        weight: t(vec![2, 2], vec![0.5, 1.0, -1.0, 0.25]),
        bias: Some(t(vec![2], vec![0.25, 0.5])),
        weight_scales: None,
    };
    let y = b.push("d2", Op::Dense(d2), vec![r], "").unwrap();
    let g = b.finish(vec![y]).unwrap();
    let model = dir.join("hand.onnx");
    std::fs::write(&model, tessera_model::export::export_model(&g).unwrap()).unwrap();
    let input = dir.join("x.npy");
    std::fs::write(
        &input,
        tessera_data::npy::to_npy(&t(vec![1, 2], vec![0.75, -0.5])),
    )
    .unwrap();
    let (ok, out, err) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--frac-bits",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // f = 2: x = q_2(0.75, −0.5) = (3, −2); W1 = q_2 = [[4, 2], [−1, 8]]; b1 = q_4 = (2, −16).
    // acc = (4·3 + 2·(−2) + 2, −1·3 + 8·(−2) − 16) = (10, −35);
    // rescale ⌊(a + 2) / 4⌋ = (3, ⌊−33/4⌋ = −9); ReLU → (3, 0).
    // W2 = [[2, 4], [−4, 1]], b2 = q_4(0.25, 0.5) = (4, 8): acc = (2·3 + 4, −4·3 + 8) = (10, −4);
    // rescale → (⌊12/4⌋, ⌊−2/4⌋) = (3, −1); class 0.
    assert_eq!(v["exact_output"], serde_json::json!([3, -1]), "{v}");
    assert_eq!(v["class"], 0, "{v}");
    assert_eq!(v["semantics"], "pow2 f = 2", "{v}");
    assert_eq!(v["output_scale"], 0.25, "{v}");
}

#[test]
fn selftest_cpu_and_a_clear_cuda_error() {
    let (ok, out, err) = tessera(&["selftest", "--device", "cpu"]);
    assert!(ok, "{err}");
    for kernel in ["label matmul mod", "AES-128", "float GEMM"] {
        assert!(out.contains(kernel), "{kernel} missing: {out}");
    }
    assert!(!out.contains("MISMATCH"), "{out}");
    let (ok, out, err) = tessera(&["selftest", "--device", "cuda"]);
    if !tessera_cuda::built_with_cuda() {
        assert!(
            !ok,
            "a build without the cuda feature ran the GPU selftest: {out}"
        );
        assert!(
            err.contains("this tessera build has no CUDA support")
                && err.contains("--features tessera-cuda/cuda"),
            "{err}"
        );
    } else if ok {
        // A GPU was found: every kernel ran on it and matched the references.
        assert!(
            out.contains("AES-128") && !out.contains("MISMATCH"),
            "{out}"
        );
        assert!(!out.contains("device: cpu"), "{out}");
    } else {
        // Built with the GPU path on a machine without one: one of the named reasons.
        assert!(
            [
                "no CUDA driver found",
                "no NVRTC found",
                "no CUDA GPU is visible"
            ]
            .iter()
            .any(|m| err.contains(m)),
            "{err}"
        );
    }
}

/// `worker --device cuda` must refuse (before listening) instead of opening the GPU and then
/// computing on the CPU.
#[test]
fn worker_refuses_device_cuda() {
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("tessera-cli-cuda-{}", std::process::id()));
    for scheme in ["gc", "asym"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "worker",
                "--scheme",
                scheme,
                "--device",
                "cuda",
                "--listen",
                "127.0.0.1:0",
                "--store",
                dir.join("store").to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawns");
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if started.elapsed() > Duration::from_secs(20) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            status.is_some_and(|s| !s.success()),
            "{scheme}: worker --device cuda did not refuse: {stdout} {stderr}"
        );
        assert!(
            stderr.contains(
                "--device cuda: the GPU evaluator is not wired in yet; the worker runs on the CPU; use --device cpu"
            ),
            "{scheme}: {stderr}"
        );
        assert!(!stdout.contains("listening"), "{scheme}: {stdout}");
    }
}

/// A crafted 1 KB model whose im2col buffer would need gigabytes is refused by `inspect` and
/// `run` under the default budget, naming the layer, and `--max-memory` is the way to raise it.
#[test]
fn hostile_model_is_refused_and_max_memory_raises_the_budget() {
    use tessera_model::{Conv, GraphBuilder, Op, Tensor};
    let dir = std::env::temp_dir().join(format!("tessera-cli-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = GraphBuilder::new("hostile", 0);
    let x = b.input("x", vec![1, 8, 2048, 2048]).unwrap();
    let conv = Conv {
        weight: Tensor::new(vec![1, 8, 5, 5], vec![0.5; 200]).unwrap(),
        bias: None,
        strides: [1, 1],
        pads: [0; 4],
        dilations: [1, 1],
        groups: 1,
        weight_scales: None,
    };
    let y = b.push("bomb", Op::Conv(conv), vec![x], "").unwrap();
    let g = b.finish(vec![y]).unwrap();
    let model = dir.join("hostile.onnx");
    std::fs::write(&model, tessera_model::export::export_model(&g).unwrap()).unwrap();
    let (ok, _, err) = tessera(&["inspect", model.to_str().unwrap()]);
    assert!(!ok, "the hostile model was inspected");
    assert!(
        err.contains("node 'bomb'")
            && err.contains("per-node budget")
            && err.contains("--max-memory"),
        "{err}"
    );
    let (ok, _, err) = tessera(&["run", model.to_str().unwrap(), "--input", "x.npy"]);
    assert!(!ok && err.contains("node 'bomb'"), "{err}");
    // Raised, the model imports (inspect only reads shapes; nothing is allocated).
    let (ok, out, err) = tessera(&["inspect", model.to_str().unwrap(), "--max-memory", "16G"]);
    assert!(ok, "{err}");
    assert!(out.contains("bomb"), "{out}");
    // The enclave honours the same budget: refused by default, served once it is raised.
    let state = dir.join("enclave-state");
    let state = state.to_str().unwrap();
    let (ok, _, err) = tessera(&[
        "enclave",
        model.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--state",
        state,
    ]);
    assert!(!ok && err.contains("node 'bomb'"), "{err}");
    let (mut enclave, _, _) = spawn_until(
        &[
            "enclave",
            model.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--state",
            state,
            "--max-memory",
            "16G",
        ],
        "listening on ",
    );
    let _ = enclave.kill();
    let _ = enclave.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Spawn `tessera ARGS` and read its stdout until a line starts with `want`; returns the child
/// (the caller kills and waits for it), the rest of that line's first word, and the lines
/// before it.
#[allow(clippy::zombie_processes)]
fn spawn_until(args: &[&str], want: &str) -> (std::process::Child, String, Vec<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawns");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let l = lines
            .next()
            .unwrap_or_else(|| panic!("{args:?} ended before printing {want:?}: {seen:?}"))
            .unwrap();
        if let Some(a) = l.strip_prefix(want) {
            let a = a.split_whitespace().next().unwrap_or("").to_string();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (child, a, seen);
        }
        seen.push(l);
    }
}

/// gc with the worker and the enclave as separate processes, bit-exact with `run`.
#[test]
fn gc_worker_and_enclave_processes() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-gc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("dash-c.onnx");
    let (ok, _, err) = tessera(&["build", "dash-c", "-o", model.to_str().unwrap()]);
    assert!(ok, "{err}");
    let input = dir.join("x.npy");
    let x = tessera_model::Tensor::new(
        vec![1, 1, 28, 28],
        (0..784u32)
            .map(|i| ((i * 13) % 256) as f32 / 255.0)
            .collect(),
    )
    .unwrap();
    std::fs::write(&input, tessera_data::npy::to_npy(&x)).unwrap();
    let store = dir.join("store");
    let (mut worker, waddr, _) = spawn_until(
        &[
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store.to_str().unwrap(),
        ],
        "worker listening on ",
    );
    let state = dir.join("state");
    let (mut enclave, eaddr, seen) = spawn_until(
        &[
            "enclave",
            model.to_str().unwrap(),
            "--scheme",
            "gc",
            "--worker",
            &waddr,
            "--pool",
            "1",
            "--input-range",
            "1",
            "--semantics",
            "v2",
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
        ],
        "listening on ",
    );
    let m = seen
        .iter()
        .find_map(|l| l.strip_prefix("measurement "))
        .expect("measurement printed")
        .to_string();
    let (ok, out, err) = tessera(&[
        "client",
        "--connect",
        &eaddr,
        "--input",
        input.to_str().unwrap(),
        "--allow-simulated",
        "--measurement",
        &m,
        "--json",
    ]);
    let (ok2, plain, err2) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--semantics",
        "v2",
        "--json",
    ]);
    let _ = enclave.kill();
    let _ = worker.kill();
    let _ = enclave.wait();
    let _ = worker.wait();
    assert!(ok, "client: {err}");
    assert!(ok2, "run: {err2}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["exact_output"], p["exact_output"]);
    assert_eq!(v["offload"]["scheme"], "gc", "{v}");
    assert_eq!(v["offload"]["rounds"], 1, "{v}");
}

#[test]
fn train_through_the_split_and_whole() {
    let mut acc = Vec::new();
    for scheme in ["asym", "tee"] {
        let (ok, out, err) = tessera(&[
            "train",
            "--scheme",
            scheme,
            "--dataset",
            "glyphs",
            "--epochs",
            "1",
            "--limit",
            "2048",
            "--lr",
            "0.05",
            "--json",
        ]);
        assert!(ok, "{scheme}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        acc.push(v["test_accuracy"].as_f64().unwrap());
        if scheme == "asym" {
            assert!(v["trusted_share_forward"].as_f64().unwrap() < 1.0, "{v}");
        }
    }
    assert!(acc[0] > 0.5 && acc[1] > 0.5, "{acc:?}");
    assert!(
        (acc[0] - acc[1]).abs() < 0.05,
        "split tracks unsplit: {acc:?}"
    );
}

/// The trade-off as a user option: a VGG-style network trained with a trusted-share target
/// under a batch basis reports the selection (within the target), the figures at batch 1 and
/// the training batch, and the accuracy through the split with noise; an unreachable target and
/// conflicting rank options are refused with the reason.
#[test]
fn train_with_a_trusted_share_target_reports_the_trade_off() {
    let (ok, out, err) = tessera(&[
        "train",
        "--arch",
        "vgg",
        "--dataset",
        "glyphs",
        "--epochs",
        "1",
        "--limit",
        "256",
        "--batch",
        "16",
        "--trusted-share",
        "0.3",
        "--basis",
        "batch",
        "--figures",
        "--noise-eval",
        "0.1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sel = &v["selection"];
    assert!(sel["trusted_share"].as_f64().unwrap() <= 0.3, "{sel}");
    assert!(
        sel["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["rank"].as_u64().unwrap() > 0)
    );
    let rows = v["figures"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "batch 1 and 16, inference and training");
    for r in rows {
        assert!(r["modeled_speedup"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["trusted_share_macs"].as_f64().unwrap() < 1.0, "{r}");
    }
    assert_eq!(v["noise_accuracy"].as_array().unwrap().len(), 1);
    let (ok, _, err) = tessera(&[
        "train",
        "--arch",
        "vgg",
        "--dataset",
        "glyphs",
        "--epochs",
        "1",
        "--limit",
        "64",
        "--trusted-share",
        "0.0001",
    ]);
    assert!(
        !ok && err.contains("the least this network allows"),
        "{err}"
    );
    let (ok, _, err) = tessera(&[
        "train",
        "--dataset",
        "glyphs",
        "--rank",
        "2",
        "--energy",
        "0.1",
    ]);
    assert!(!ok && err.contains("give one of"), "{err}");
}

/// `run --scheme asym --trusted-share` chooses per-layer ranks, prints them, and the inference
/// still matches the float model (asym is exact up to float rounding).
#[test]
fn run_asym_with_a_trusted_share_target() {
    let (Some(m), Some(d)) = (
        tessera_data::shared_data("onnx-mnist-8"),
        tessera_data::shared_data("mnist-t10k"),
    ) else {
        return;
    };
    let model = m.join("model.onnx");
    let input = format!("{}:3", d.join("t10k-images-idx3-ubyte.gz").display());
    let (ok, out, err) = tessera(&[
        "run",
        model.to_str().expect("utf8"),
        "--input",
        &input,
        "--scheme",
        "asym",
        "--trusted-share",
        "0.5",
        "--calibrate",
        "mnist:8",
        "--calibration-data",
        d.to_str().expect("utf8"),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("rank selection for trusted share ≤ 50.0%"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = v["cost"]["trusted_macs"].as_f64().unwrap();
    let all = v["cost"]["total_macs"].as_f64().unwrap();
    assert!(t / all <= 0.5 + 1e-9, "{t} / {all}");
    assert_eq!(v["class"], v["float_class"]);
}

/// A scheme that cannot run a model is refused before any work (here before the input file is
/// even read), naming the node, what the scheme lacks, and the schemes that can run it.
#[test]
fn a_scheme_that_cannot_run_the_model_is_refused_naming_the_node_and_the_alternatives() {
    use tessera_model::{GraphBuilder, Op, Pool};
    let dir = std::env::temp_dir().join(format!("tessera-cli-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = GraphBuilder::new("avg3", 1);
    let x = b.input("x", vec![1, 1, 6, 6]).unwrap();
    let y = b.conv(x, 2, 3, 1, 1).unwrap();
    let y = b.relu(y).unwrap();
    let pool = Pool {
        kernel: [3, 3],
        strides: [3, 3],
        pads: [0; 4],
        dilations: [1, 1],
        count_include_pad: false,
        ceil_mode: false,
    };
    let y = b.push("avg3x3", Op::AvgPool(pool), vec![y], "").unwrap();
    let y = b.flatten(y).unwrap();
    let y = b.dense(y, 2).unwrap();
    let g = b.finish(vec![y]).unwrap();
    let model = dir.join("avg3.onnx");
    std::fs::write(&model, tessera_model::export::export_model(&g).unwrap()).unwrap();
    // A 3×3 average divides by 9, which gc's rescale (powers of two) cannot garble.
    let (ok, _, err) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--scheme",
        "gc",
        "--input",
        "does-not-exist.npy",
    ]);
    assert!(!ok, "gc ran a model it cannot garble");
    assert!(
        err.contains("scheme gc cannot run this model")
            && err.contains("avg3x3")
            && err.contains("schemes that can: plain, tee, asym"),
        "{err}"
    );
    // Under v2 a 3×3 average pool is a multiplier and a shift, which gc garbles: the run gets
    // past the scheme check and stops at the missing input.
    let (ok, _, err) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--scheme",
        "gc",
        "--semantics",
        "v2",
        "--calibrate-range",
        "1",
        "--input",
        "does-not-exist.npy",
    ]);
    assert!(!ok && !err.contains("cannot run this model"), "{err}");
    assert!(err.contains("does-not-exist.npy"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn integer_semantics_v2_through_inspect_and_eval() {
    let (ok, out, err) = tessera(&["inspect", "mix", "--semantics", "v2", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["semantics"]
            .as_str()
            .expect("semantics")
            .starts_with("v2 w8a8"),
        "{v}"
    );
    let layers = v["v2_layers"].as_array().expect("v2 layers");
    let linear: Vec<&serde_json::Value> = layers.iter().filter(|l| l["op"] == "linear").collect();
    assert_eq!(linear.len(), 4, "{v}");
    for l in &linear {
        assert!(l["weight_max"].as_i64().expect("weights") <= 127, "{l}");
        assert!(l["shift"].as_u64().is_some(), "{l}");
    }
    assert!(v["gc_sound_primes"].as_u64().expect("k") <= 10, "{v}");
    let (ok, out, _) = tessera(&["inspect", "mix", "--semantics", "v2"]);
    assert!(
        ok && out.contains("integer semantics v2") && out.contains("for every input"),
        "{out}"
    );
    let (ok, _, err) = tessera(&[
        "run",
        "mix",
        "--input",
        "x.npy",
        "--semantics",
        "v2",
        "--gc-calibrated",
        "glyphs:4",
        "--scheme",
        "gc",
    ]);
    assert!(
        !ok && err.contains("applies to --semantics pow2 only"),
        "{err}"
    );

    let Some((m, d)) = mnist8_and_data() else {
        return;
    };
    let model = m.join("model.onnx");
    let v2 = |scheme: &str, n: &str| {
        let (ok, out, err) = tessera(&[
            "eval",
            model.to_str().expect("utf8"),
            "--dataset",
            n,
            "--data",
            d.to_str().expect("utf8"),
            "--semantics",
            "v2",
            "--calibrate",
            "mnist:64",
            "--calibration-data",
            d.to_str().expect("utf8"),
            "--scheme",
            scheme,
            "--json",
        ]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("json")
    };
    // The labels and the float engine are the oracles here.
    let v = v2("plain", "mnist:300");
    assert!(
        v["quantized_correct"].as_u64().expect("correct") >= 290,
        "{v}"
    );
    assert!(v["agreement"].as_u64().expect("agreement") >= 299, "{v}");
    assert!(
        v["semantics"]
            .as_str()
            .expect("semantics")
            .contains("mnist:64"),
        "{v}"
    );
    // gc against the v2 reference, bit for bit.
    let v = v2("gc", "mnist:4");
    assert_eq!(v["scheme"]["exact_matches"], 4, "{v}");
}

/// lhe as four processes — the server, the enclave driving it, the model owner's upload and the
/// data owner's client — bit-exact with `run` under the same v2 semantics.
#[test]
fn lhe_server_enclave_owner_and_client_processes() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-lhe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("dash-c.onnx");
    let (ok, _, err) = tessera(&["build", "dash-c", "-o", model.to_str().unwrap()]);
    assert!(ok, "{err}");
    let input = dir.join("x.npy");
    let x = tessera_model::Tensor::new(
        vec![1, 1, 28, 28],
        (0..784u32)
            .map(|i| ((i * 29) % 256) as f32 / 255.0)
            .collect(),
    )
    .unwrap();
    std::fs::write(&input, tessera_data::npy::to_npy(&x)).unwrap();
    let store = dir.join("store");
    let (mut server, saddr, _) = spawn_until(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store.to_str().unwrap(),
        ],
        "lhe server listening on ",
    );
    let state = dir.join("state");
    let (mut enclave, eaddr, seen) = spawn_until(
        &[
            "enclave",
            model.to_str().unwrap(),
            "--scheme",
            "lhe",
            "--server",
            &saddr,
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
        ],
        "listening on ",
    );
    let m = seen
        .iter()
        .find_map(|l| l.strip_prefix("measurement "))
        .expect("measurement printed")
        .to_string();
    let policy = ["--allow-simulated", "--measurement", &m];
    let (ok_up, up, err_up) = tessera(
        &[
            &[
                "upload",
                model.to_str().unwrap(),
                "--enclave",
                &eaddr,
                "--server",
                &saddr,
            ][..],
            &policy,
            &["--json"],
        ]
        .concat(),
    );
    let (ok, out, err) = tessera(
        &[
            &[
                "client",
                "--scheme",
                "lhe",
                "--connect",
                &eaddr,
                "--server",
                &saddr,
            ][..],
            &["--input", input.to_str().unwrap()],
            &policy,
            &["--json"],
        ]
        .concat(),
    );
    let (ok2, plain, err2) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--semantics",
        "v2",
        "--json",
    ]);
    let _ = enclave.kill();
    let _ = server.kill();
    let _ = enclave.wait();
    let _ = server.wait();
    assert!(ok_up, "upload: {err_up}");
    assert!(ok, "client: {err}");
    assert!(ok2, "run: {err2}");
    let u: serde_json::Value = serde_json::from_str(&up).unwrap();
    assert_eq!(u["layers"], 3, "{u}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["exact_output"], p["exact_output"]);
    assert!(v["products"].as_u64().unwrap_or(0) > 0, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// 2pc as two processes — the server holding the model, the client holding the input — in both
/// variants, bit-exact with `run` under the same v2 semantics; a client that pins another
/// certificate is refused.
#[test]
fn two_pc_server_and_client_processes() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-2pc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("dash-c.onnx");
    let (ok, _, err) = tessera(&["build", "dash-c", "-o", model.to_str().unwrap()]);
    assert!(ok, "{err}");
    let input = dir.join("x.npy");
    let x = tessera_model::Tensor::new(
        vec![1, 1, 28, 28],
        (0..784u32)
            .map(|i| ((i * 31) % 256) as f32 / 255.0)
            .collect(),
    )
    .unwrap();
    std::fs::write(&input, tessera_data::npy::to_npy(&x)).unwrap();
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let (mut server, addr, _) = spawn_until(
        &[
            "server",
            "--scheme",
            "2pc",
            model.to_str().unwrap(),
            "--semantics",
            "v2",
            "--listen",
            "127.0.0.1:0",
            "--identity",
            key.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--store",
            dir.join("server-store").to_str().unwrap(),
        ],
        "2pc server listening on ",
    );
    let client = |variant: &str, cert: &std::path::Path| {
        tessera(&[
            "client",
            "--scheme",
            "2pc",
            "--connect",
            &addr,
            "--server-cert",
            cert.to_str().unwrap(),
            "--variant",
            variant,
            "--input",
            input.to_str().unwrap(),
            "--json",
        ])
    };
    let sg = client("server-garbler", &cert);
    let cg = client("client-garbler", &cert);
    // Precomputation kept on disk on both sides, then used by two later inferences.
    let cstore = dir.join("client-store");
    let pre = |extra: &[&str]| {
        tessera(
            &[
                &[
                    "client",
                    "--scheme",
                    "2pc",
                    "--connect",
                    &addr,
                    "--server-cert",
                    cert.to_str().unwrap(),
                    "--variant",
                    "client-garbler",
                    "--store",
                    cstore.to_str().unwrap(),
                    "--json",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let made = pre(&["--precompute", "2"]);
    let used: Vec<_> = (0..3)
        .map(|_| pre(&["--input", input.to_str().unwrap()]))
        .collect();
    let other = dir.join("other.crt");
    let id = tessera_runtime::tls::Identity::generate().unwrap();
    std::fs::write(&other, id.cert()).unwrap();
    let wrong = client("server-garbler", &other);
    let _ = server.kill();
    let _ = server.wait();
    let (ok2, plain, err2) = tessera(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--semantics",
        "v2",
        "--json",
    ]);
    assert!(ok2, "run: {err2}");
    let p: serde_json::Value = serde_json::from_str(&plain).unwrap();
    for (name, (ok, out, err)) in [("server-garbler", sg), ("client-garbler", cg)] {
        assert!(ok, "{name} client: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["exact_output"], p["exact_output"], "{name}");
        assert_eq!(v["variant"], name);
        assert!(v["client_stored_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
        assert!(v["server_stored_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    }
    assert!(made.0, "precompute: {}", made.2);
    let m: serde_json::Value = serde_json::from_str(&made.1).unwrap();
    assert_eq!(m["ready"], 2, "{m}");
    assert!(m["server_stored_bytes"].as_u64().unwrap_or(0) > 0, "{m}");
    for (k, (ok, out, err)) in used.into_iter().enumerate() {
        assert!(ok, "stored inference {k}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["exact_output"], p["exact_output"], "stored inference {k}");
        // Two were precomputed: the third runs its own offline phase.
        assert_eq!(v["preprocessing_from_store"], k < 2, "{v}");
    }
    assert!(
        !wrong.0,
        "a client pinning another certificate must be refused"
    );
    assert!(wrong.2.contains("not the one pinned"), "{}", wrong.2);
    let _ = std::fs::remove_dir_all(&dir);
}
