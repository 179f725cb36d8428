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
    for c in ["inspect", "run", "eval", "build", "demo", "bench"] {
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
