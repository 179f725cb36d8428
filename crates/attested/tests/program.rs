//! Program jobs: the model owner's own trainer (a Python script, standard library only) runs on
//! the attested host. Its files are measured into the IMA log before the quote; the broker
//! releases keys only when every listed file was measured with the job's digest and every
//! measured file is in every allow-list.
//!
//! Without swtpm or python3 these tests print why they skip, unless `CI` is set, where they
//! fail.

mod common;
use common::{Scratch, have_swtpm};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_attested::dataset::{load_breast_cancer, standardize};
use tessera_attested::flow::split;
use tessera_attested::{
    AttestedError, FlowData, FlowOptions, Network, ProgramSpec, Report, TrainSpec, run_flow,
};
use tessera_tpm::HashAlg;

/// The interpreter itself (not a wrapper such as a pyenv shim): what runs is what is measured.
fn python3() -> Option<PathBuf> {
    let found = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|p| std::fs::canonicalize(p.trim()).ok());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("python3 is not on PATH, and CI must run the program-job tests");
        }
        eprintln!("SKIP: python3 is not on PATH");
    }
    found
}

/// A directory for changed scripts outside `/tmp`, which the test allow-lists exclude.
fn outside_tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("program-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    assert!(!d.starts_with("/tmp"), "{}", d.display());
    d
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(HashAlg::Sha256.digest(&std::fs::read(path).unwrap()))
}

fn script() -> PathBuf {
    std::fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/softmax_sgd.py"),
    )
    .unwrap()
}

/// A program job running `script` with `python`, the job listing both with the digests of
/// `listed` (the script as the model owner reviewed it).
fn program(python: &Path, script: &Path, listed: &Path) -> ProgramSpec {
    let files: BTreeMap<String, String> = [
        (python.display().to_string(), sha256_hex(python)),
        (script.display().to_string(), sha256_hex(listed)),
    ]
    .into_iter()
    .collect();
    ProgramSpec {
        command: vec![python.display().to_string(), script.display().to_string()],
        files,
        timeout_s: 300,
    }
}

/// Breast cancer, standardized; `None` (skipped) without the shared data.
fn data(program: ProgramSpec) -> Option<FlowData> {
    let path = tessera_data::shared_data("sklearn-datasets/breast_cancer.csv")?;
    let all = load_breast_cancer(&path).unwrap();
    let (mut train, mut test) = split(all, 455, 2).unwrap();
    standardize(&mut train, &mut test);
    Some(FlowData {
        train,
        test,
        train_spec: TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: Vec::new(),
            shift: 0,
            epochs: 30,
            batch: 1,
            lr: 0.01,
            lr_final: None,
            momentum: 0.0,
            input_scale: 1.0,
            seed: 1,
        },
        note: "breast cancer: 455 rows to train, 114 held out; the model owner's Python trainer"
            .into(),
        program: Some(program),
    })
}

fn opts() -> FlowOptions {
    FlowOptions {
        threads: 2,
        ..Default::default()
    }
}

fn expect_err(r: Result<Report, AttestedError>) -> AttestedError {
    match r {
        Ok(r) => panic!("keys were released and the job ran: {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_python_program_trains_the_tabular_set_through_the_flow() {
    let Some(python) = python3() else { return };
    if !have_swtpm() {
        return;
    }
    let s = script();
    let Some(data) = data(program(&python, &s, &s)) else {
        return;
    };
    let scratch = Scratch::new("program");
    let r = run_flow(&scratch.0, &data, &opts()).unwrap();
    eprintln!("{}", r.summary());
    assert!(r.model_owner_received_model);
    let rel = r.release.as_ref().expect("keys were released");
    // boot_aggregate, the host image's three files, python3 and the script.
    assert_eq!(rel.ima_entries, 6);
    assert_eq!(r.test_rows, 114);
    assert!(
        r.test_accuracy >= 0.95,
        "held-out accuracy {:.4} below 0.95",
        r.test_accuracy
    );
}

/// The host runs a changed script that no allow-list lists: the verifier's allow-list check
/// refuses the quote and no key is released.
#[test]
fn a_changed_script_outside_the_allow_lists_is_refused() {
    let Some(python) = python3() else { return };
    if !have_swtpm() {
        return;
    }
    let scratch = Scratch::new("program-changed");
    let dir = outside_tmp("changed");
    let reviewed = script();
    let changed = dir.join("train.py");
    let mut text = std::fs::read_to_string(&reviewed).unwrap();
    text.push_str("\nopen('/tmp/copy-of-the-data', 'wb').write(raw)\n");
    std::fs::write(&changed, text).unwrap();
    let changed = std::fs::canonicalize(changed).unwrap();
    let Some(data) = data(program(&python, &changed, &reviewed)) else {
        return;
    };
    let e = expect_err(run_flow(&scratch.0.join("run"), &data, &opts())).to_string();
    assert!(e.contains("IMA allow-list check failed"), "{e}");
    assert!(e.contains(&changed.display().to_string()), "{e}");
}

/// Every allow-list accepts both versions of the script, but the job names the reviewed one
/// and the host measured the other: the broker's check of the job's digests refuses it.
#[test]
fn a_script_other_than_the_jobs_is_refused_even_when_allow_listed() {
    let Some(python) = python3() else { return };
    if !have_swtpm() {
        return;
    }
    let scratch = Scratch::new("program-other");
    let dir = outside_tmp("other");
    let reviewed = script();
    let other = dir.join("train.py");
    let mut text = std::fs::read_to_string(&reviewed).unwrap();
    text.push_str("\n# another version\n");
    std::fs::write(&other, text).unwrap();
    let other = std::fs::canonicalize(other).unwrap();
    let Some(data) = data(program(&python, &other, &reviewed)) else {
        return;
    };
    let opts = FlowOptions {
        also_allowed: vec![(
            other.display().to_string(),
            HashAlg::Sha256.digest(&std::fs::read(&other).unwrap()),
        )],
        ..opts()
    };
    let e = expect_err(run_flow(&scratch.0.join("run"), &data, &opts)).to_string();
    assert!(
        e.contains(&format!("the job's program file {}", other.display())),
        "{e}"
    );
    assert!(e.contains("not the job's"), "{e}");
}
