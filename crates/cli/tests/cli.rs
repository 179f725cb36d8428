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
    let (ok, out, err) = tessera(&["demo", "--n", "100"]);
    assert!(ok, "demo failed: {err}");
    assert!(out.contains("scheme") && out.contains("plain"), "{out}");
    assert!(
        out.contains("100/100"),
        "plain must be bit-exact with the reference: {out}"
    );
    let (ok, json, _) = tessera(&["demo", "--n", "50", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).expect("demo --json is JSON");
    let acc = v[0]["correct"].as_u64().expect("correct count");
    assert!(
        acc >= 45,
        "the demo model should classify glyphs well: {acc}/50"
    );
}

#[test]
fn every_command_has_help() {
    for c in [
        "inspect",
        "run",
        "eval",
        "build",
        "demo",
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
fn run_and_eval_mnist8() {
    let Some(m) = tessera_data::shared_data("onnx-mnist-8") else {
        return;
    };
    let Some(d) = tessera_data::shared_data("mnist-t10k") else {
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
    assert_eq!(v["scheme"]["exact_matches"], 300);
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

#[test]
fn selftest_cpu_and_a_clear_cuda_error() {
    let (ok, out, err) = tessera(&["selftest", "--device", "cpu"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("AES-128") && !out.contains("MISMATCH"),
        "{out}"
    );
    let (ok, out, err) = tessera(&["selftest", "--device", "cuda"]);
    if ok {
        assert!(out.contains("cuda"), "{out}");
    } else {
        assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
    }
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
            "--frac-bits",
            "4",
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
        "--frac-bits",
        "4",
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
