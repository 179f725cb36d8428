//! `tessera compare` and `tessera characterize` end to end: every scheme on one model with one
//! cost definition, the JSON against the schemes' own reports, the charts, and the simulator
//! driven by the published CryptoNite figures and by compare's own measurements.

use serde_json::Value;
use std::path::{Path, PathBuf};
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

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn row<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["scheme"].as_str().is_some_and(|s| s.starts_with(name)))
        })
        .unwrap_or_else(|| panic!("no {name} row in {v}"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// A font the charts can use exists on this machine (the test script installs one).
fn have_font() -> bool {
    std::env::var_os("TESSERA_FONT").is_some()
        || Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists()
}

#[test]
fn compare_runs_every_scheme_with_one_cost_definition() {
    let dir = scratch("compare");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    // Two inputs shaped like dash-a's, as .npy files in a folder (the user's own inputs).
    for k in 0..2usize {
        let x = tessera_data::npy::to_npy(
            &tessera_model::Tensor::new(
                vec![1, 1, 28, 28],
                (0..784).map(|i| ((i * 31 + k * 97) % 256) as f32).collect(),
            )
            .expect("tensor"),
        );
        std::fs::write(inputs.join(format!("x{k}.npy")), x).expect("writes");
    }
    let out = dir.join("out");
    let (ok, json, err) = tessera(&[
        "compare",
        "dash-a",
        "--dataset",
        &inputs.display().to_string(),
        "--schemes",
        "plain,tee,gc,asym,lhe,2pc,attested",
        "--slow-n",
        "1",
        "--out",
        &out.display().to_string(),
        "--json",
    ]);
    assert!(ok, "compare failed: {err}");
    let v: Value = serde_json::from_str(&json).expect("compare --json is JSON");
    // attested cannot run a given model: listed with the reason, not dropped.
    let skipped = v["skipped"].as_array().expect("skipped");
    assert!(
        skipped.iter().any(|s| s["scheme"] == "attested"
            && s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("trains its own model"))),
        "{v}"
    );
    for r in v["rows"].as_array().expect("rows") {
        // Totals are the sums over the links (every link counted, the client's leg included).
        let links = r["links"].as_array().expect("links");
        let sum = |k: &str| links.iter().map(|l| u(l, k)).sum::<u64>();
        assert_eq!(u(r, "bytes_up"), sum("up"), "{r}");
        assert_eq!(u(r, "bytes_down"), sum("down"), "{r}");
        assert_eq!(u(r, "offline_up"), sum("offline_up"), "{r}");
        if let Some(share) = r["trusted_share"].as_f64() {
            assert!((0.0..=1.0).contains(&share), "{r}");
        }
    }
    assert_eq!(u(row(&v, "plain"), "inferences"), 2);
    assert!(row(&v, "plain")["trusted_share"].is_null());
    assert_eq!(row(&v, "tee")["trusted_share"].as_f64(), Some(1.0));
    let gc = row(&v, "gc");
    assert_eq!(u(gc, "inferences"), 1, "--slow-n samples gc");
    assert!(
        gc["offline_ms_median"].as_f64() > Some(0.0),
        "gc's garbling is reported"
    );
    assert!(u(gc, "stored_server") > 0);
    assert!(
        row(&v, "2pc")["trusted_share"].is_null(),
        "2pc has no trusted side"
    );
    assert!(u(row(&v, "2pc"), "stored_client") > 0);
    assert!(u(row(&v, "lhe"), "stored_server") > 0);

    // The same figures as each scheme's own report (`run --json`) on the first input.
    let x0 = inputs.join("x0.npy").display().to_string();
    for s in ["tee", "gc", "lhe"] {
        let (ok, json, err) = tessera(&["run", "dash-a", "--input", &x0, "--scheme", s, "--json"]);
        assert!(ok, "run --scheme {s}: {err}");
        let own: Value = serde_json::from_str(&json).expect("run --json is JSON");
        let c = &own["cost"];
        let r = row(&v, s);
        assert_eq!(u(c, "stored_server"), u(r, "stored_server"), "{s}");
        assert_eq!(u(c, "stored_client"), u(r, "stored_client"), "{s}");
        assert_eq!(u(c, "rounds"), u(r, "rounds"), "{s}");
        assert_eq!(u(c, "bytes_up"), u(r, "bytes_up"), "{s}");
    }

    // The report and the charts are written.
    let written: Value = serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap())
        .expect("compare.json is JSON");
    assert_eq!(
        written["rows"].as_array().map(Vec::len),
        Some(7),
        "2pc in both variants"
    );
    if have_font() {
        for f in ["latency", "bytes", "stored"] {
            let png = std::fs::read(out.join(format!("{f}.png"))).expect("png written");
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{f}.png is a PNG");
            let svg = std::fs::read_to_string(out.join(format!("{f}.svg"))).expect("svg");
            assert!(
                svg.contains("<svg") && svg.contains("gc"),
                "{f}.svg names the schemes"
            );
        }
    } else {
        eprintln!("skipping the chart checks: no TrueType font on this machine");
    }

    // characterize reads that report: one curve per scheme (plain is not a deployment), a
    // saturating rate reported as unstable, never as a finite mean.
    let (ok, json, err) = tessera(&[
        "characterize",
        "--compare",
        &out.join("compare.json").display().to_string(),
        "--rates",
        "0.01,1000000",
        "--client-storage",
        "1G",
        "--requests",
        "4000",
        "--json",
    ]);
    assert!(ok, "characterize failed: {err}");
    let c: Value = serde_json::from_str(&json).expect("characterize --json is JSON");
    let points = c["points"].as_array().expect("points");
    assert_eq!(
        points.len(),
        6 * 2,
        "tee, gc, asym, lhe, 2pc ×2 at two rates"
    );
    for p in points {
        if p["lambda"].as_f64() == Some(0.01) {
            assert_eq!(p["stable"], true, "{p}");
            let (mean, online) = (p["mean_s"].as_f64(), p["online_s"].as_f64());
            assert!(
                mean.zip(online).is_some_and(|(m, o)| m >= o * (1.0 - 1e-6)),
                "{p}"
            );
        } else {
            assert_eq!(p["stable"], false, "{p}");
            assert!(p["mean_s"].is_null(), "{p}");
        }
    }
    // gc's enclave garbles in the background: at a light load every request finds one ready.
    let gc_light = points
        .iter()
        .find(|p| p["scheme"].as_str().is_some_and(|s| s.starts_with("gc")) && p["lambda"] == 0.01)
        .expect("gc point");
    assert!(gc_light["hit_fraction"].as_f64() > Some(0.9), "{gc_light}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn characterize_reproduces_cryptonites_headline() {
    // ResNet-18 on TinyImageNet with the paper's constants (500/500 Mbps, Atom-class client,
    // EPYC server) at 0.0001 requests/s and 16 GB of client storage: client-garbler's mean
    // latency at least 4× below server-garbler's.
    let (ok, json, err) = tessera(&[
        "characterize",
        "--costs",
        "resnet18-tinyimagenet-cryptonite",
        "--rates",
        "0.0001",
        "--client-storage",
        "16000000000",
        "--json",
    ]);
    assert!(ok, "characterize failed: {err}");
    let v: Value = serde_json::from_str(&json).expect("JSON");
    let r = &v["garbler_ratios"][0];
    let ratio = r["ratio"].as_f64().expect("ratio");
    assert!(
        ratio >= 4.0,
        "server-garbler / client-garbler = {ratio}: {r}"
    );
    assert_eq!(v["winners"][0]["scheme"], "client-garbler");
}

#[test]
fn characterize_and_compare_refuse_bad_input_clearly() {
    let dir = scratch("characterize-bad");
    let f = dir.join("compare.json");
    std::fs::write(&f, b"{\"rows\": [{\"scheme\": \"tee\"}]}").expect("writes");
    let (ok, _, err) = tessera(&["characterize", "--compare", &f.display().to_string()]);
    assert!(!ok);
    assert!(
        err.contains("latency_ms_median") && err.contains("tessera compare"),
        "{err}"
    );
    let (ok, _, err) = tessera(&["characterize"]);
    assert!(!ok && err.contains("--costs"), "{err}");
    let (ok, _, err) = tessera(&["characterize", "--costs", "no-such-costs"]);
    assert!(
        !ok && err.contains("resnet18-tinyimagenet-cryptonite"),
        "{err}"
    );
    let (ok, _, err) = tessera(&["compare", "dash-a", "--dataset", "generated:0"]);
    assert!(!ok && err.contains("no inputs"), "{err}");
    let (ok, _, err) = tessera(&[
        "compare",
        "dash-a",
        "--schemes",
        "nope",
        "--dataset",
        "generated:1",
    ]);
    assert!(ok, "an unknown scheme is listed, not fatal: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
