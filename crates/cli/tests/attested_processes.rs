//! The `attested` scheme with every party a separate `tessera` process: swtpm as the training
//! host's TPM (its PCR 10 extended with a synthetic IMA log written to a file), `tessera broker
//! serve --config` (the stakeholders' pinned signing keys), the three stakeholders (`tessera
//! stakeholder keygen|policy|upload|model-key|job`, each request signed), the host (`tessera
//! agent run`), the model owner (`tessera stakeholder fetch-model`), and inference with the
//! trained model in the enclave (`tessera broker infer` + `tessera client`, every held-out
//! row). Refusals, each with a reason that names it: a job without the infrastructure
//! provider's policy, a provider policy signed with a key the broker does not pin, a replayed
//! policy revision, an agent after that provider withdrew its consent, a host that ran a file
//! not on the data owner's allow-list, an IMA log that does not replay to the quoted PCR 10, a
//! model fetched with the wrong key, and a client expecting another enclave measurement.
//!
//! Without swtpm this test prints why it skips, unless `CI` is set, where it fails; without the
//! shared breast-cancer table it skips (`tessera_data::shared_data`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tessera_attested::dataset::{load_breast_cancer, standardize};
use tessera_attested::flow::split;
use tessera_attested::{HostImage, MeasuredHost, PlainDataset, Swtpm, swtpm_installed};

const JOB: &str = "breast-cancer-mlp";
const DATASET: &str = "breast-cancer";

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let d =
            std::env::temp_dir().join(format!("tessera-attested-processes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create the scratch directory");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long-running `tessera` process (a server), killed on drop; its stdout lines arrive on a
/// channel, its stderr goes to a file for diagnostics.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
    name: &'static str,
}

impl Server {
    fn start(name: &'static str, args: &[&str], dir: &Path) -> Server {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create a stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            stderr,
            name,
        }
    }

    /// Waits (at most 30 s) for a stdout line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{} printed no line with {needle:?} (exit status {status:?}); stderr:\n{}",
                        self.name,
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tessera args…` to completion: (success, stdout, stderr).
fn tessera(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tessera");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tessera args…` and insists it succeeds; returns stdout.
fn ok(args: &[&str]) -> String {
    let (success, out, err) = tessera(args);
    assert!(
        success,
        "`tessera {}` failed:\nstdout: {out}\nstderr: {err}",
        args.join(" ")
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Writes rows as scikit-learn's CSV format (`rows,features,names…` header, then features and
/// the label per row), which `tessera stakeholder upload --csv` reads.
fn write_csv(path: &Path, ds: &PlainDataset) {
    let d = ds.features_per_row();
    let mut text = format!("{},{d},malignant,benign\n", ds.rows());
    for i in 0..ds.rows() {
        let row = ds.row(i).expect("row");
        let cells: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        text.push_str(&cells.join(","));
        text.push_str(&format!(",{}\n", ds.labels[i]));
    }
    std::fs::write(path, text).expect("write the CSV");
}

fn policy_json(
    who: &str,
    name: &str,
    jobs: &[&str],
    measurement: &str,
    identity: &serde_json::Value,
    allow_list: &serde_json::Value,
    eks: bool,
) -> String {
    let v = serde_json::json!({
        "version": 1,
        "stakeholder": who,
        "name": name,
        "jobs": jobs,
        "enclave_measurements": [measurement],
        "allow_simulated_enclave": true,
        "boot_pcrs": identity["boot_pcrs"],
        "ima_allow_list": allow_list,
        "trusted_eks": if eks { identity["trusted_eks"].clone() } else { serde_json::json!([]) },
        "outputs": {"trained_model": ["model_owner"], "predictions": ["data_owner"]},
    });
    serde_json::to_string_pretty(&v).expect("policy JSON")
}

#[test]
fn attested_flow_with_separate_processes() {
    let t0 = Instant::now();
    let Some(csv) = tessera_data::shared_data("sklearn-datasets/breast_cancer.csv") else {
        return;
    };
    if !swtpm_installed() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "swtpm is not installed, and CI must run the attested tests: apt-get install swtpm swtpm-tools"
            );
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)"
        );
        return;
    }
    let scratch = Scratch::new();
    let dir = scratch.0.as_path();
    let store = dir.join("store");
    let state = dir.join("broker");

    // The training host boots: its TPM (swtpm), and the files it runs measured into PCR 10 as
    // the kernel's IMA would, with the log written where the agent reads it.
    let tpm = Swtpm::start(dir).expect("start swtpm");
    let tcti = tpm.tcti();
    let image = HostImage::training_host();
    let ima_log = dir.join("binary_runtime_measurements");
    {
        let host = MeasuredHost::boot(&tcti, &image).expect("measure the host into swtpm");
        std::fs::write(&ima_log, host.log.to_bytes()).expect("write the IMA log");
        // Dropped here: swtpm serves one TPM connection at a time.
    }
    let allow_list: serde_json::Value =
        serde_json::from_str(&image.allow_list().expect("allow-list")).expect("allow-list JSON");

    // Each stakeholder makes its signing key; the broker's configuration pins the public keys.
    let keygen = |who: &str| {
        let path = dir.join(format!("{who}.signing-key"));
        let out = ok(&["stakeholder", "keygen", "--out", s(&path)]);
        let public = out
            .trim()
            .strip_prefix("public key ")
            .unwrap_or_else(|| panic!("keygen prints the public key: {out}"))
            .to_string();
        assert_eq!(public.len(), 64, "{out}");
        (path, public)
    };
    let (do_key, do_pub) = keygen("data_owner");
    let (mo_key, mo_pub) = keygen("model_owner");
    let (ip_key, ip_pub) = keygen("infrastructure_provider");
    let (success, _, err) = tessera(&["stakeholder", "keygen", "--out", s(&do_key)]);
    assert!(
        !success && err.contains("never overwritten"),
        "keygen must not replace a key: {err}"
    );
    let config = dir.join("broker-config.json");
    std::fs::write(
        &config,
        serde_json::to_string_pretty(&serde_json::json!({
            "version": 1,
            "stakeholders": {
                "data_owner": {"name": "hospital-a", "key": do_pub},
                "model_owner": {"name": "lab-b", "key": mo_pub},
                "infrastructure_provider": {"name": "cloud-c", "key": ip_pub},
            }
        }))
        .expect("config JSON"),
    )
    .expect("write the broker config");

    // What the stakeholders learn out of band: the broker's measurement (which covers the
    // configuration) and the host's identity.
    let measurement = ok(&[
        "broker",
        "measurement",
        "--config",
        s(&config),
        "--state",
        s(&state),
    ])
    .trim()
    .to_string();
    assert_eq!(
        measurement.len(),
        96,
        "a 48-byte measurement: {measurement}"
    );
    let identity: serde_json::Value =
        serde_json::from_str(&ok(&["agent", "identity", "--tcti", &tcti]))
            .expect("`agent identity` prints JSON");
    assert_eq!(identity["trusted_eks"].as_array().map(Vec::len), Some(1));
    assert_eq!(identity["boot_pcrs"].as_object().map(|m| m.len()), Some(10));

    // The broker.
    let broker_addr = format!("127.0.0.1:{}", free_port());
    let mut broker = Server::start(
        "broker",
        &[
            "broker",
            "serve",
            "--config",
            s(&config),
            "--state",
            s(&state),
            "--listen",
            &broker_addr,
        ],
        dir,
    );
    let line = broker.wait_for("broker measurement");
    assert!(line.ends_with(&measurement), "{line} vs {measurement}");
    broker.wait_for("listening on");

    // The stakeholders' policies (the infrastructure provider's comes later).
    let policy = |who: &str, name: &str, jobs: &[&str], eks: bool| {
        let p = dir.join(format!("{who}.json"));
        std::fs::write(
            &p,
            policy_json(who, name, jobs, &measurement, &identity, &allow_list, eks),
        )
        .expect("write a policy");
        p
    };
    let data_owner = policy("data_owner", "hospital-a", &[JOB], false);
    let model_owner = policy("model_owner", "lab-b", &[JOB], false);
    let provider = policy("infrastructure_provider", "cloud-c", &[JOB], true);
    let provider_withdrawn = dir.join("provider-withdrawn.json");
    std::fs::write(
        &provider_withdrawn,
        policy_json(
            "infrastructure_provider",
            "cloud-c",
            &[],
            &measurement,
            &identity,
            &allow_list,
            true,
        ),
    )
    .expect("write a policy");
    for (p, key) in [(&data_owner, &do_key), (&model_owner, &mo_key)] {
        let out = ok(&[
            "stakeholder",
            "policy",
            "--broker",
            &broker_addr,
            "--key",
            s(key),
            "--revision",
            "1",
            s(p),
        ]);
        assert!(out.contains("stored"), "{out}");
    }

    // The data owner splits and standardizes its table, uploads the training rows encrypted and
    // deposits the key; the model owner deposits its model key.
    let all = load_breast_cancer(&csv).expect("breast cancer CSV");
    let (mut train, mut test) = split(all, 455, 2).expect("split");
    standardize(&mut train, &mut test);
    let train_csv = dir.join("train.csv");
    write_csv(&train_csv, &train);
    let dataset_key = dir.join("dataset.key");
    let out = ok(&[
        "stakeholder",
        "upload",
        "--broker",
        &broker_addr,
        "--policy",
        s(&data_owner),
        "--key",
        s(&do_key),
        "--name",
        DATASET,
        "--csv",
        s(&train_csv),
        "--store",
        s(&store),
        "--key-out",
        s(&dataset_key),
    ]);
    assert!(out.contains("455 rows") && out.contains("sealed"), "{out}");
    let model_key = dir.join("model.key");
    let out = ok(&[
        "stakeholder",
        "model-key",
        "--broker",
        &broker_addr,
        "--policy",
        s(&model_owner),
        "--key",
        s(&mo_key),
        "--job",
        JOB,
        "--key-out",
        s(&model_key),
    ]);
    assert!(out.contains("sealed"), "{out}");

    // The job.
    let job = dir.join("job.json");
    std::fs::write(
        &job,
        serde_json::to_string_pretty(&serde_json::json!({
            "id": JOB,
            "dataset": DATASET,
            "train": {"hidden": [16], "epochs": 40, "batch": 16, "lr": 0.01, "momentum": 0.9,
                      "input_scale": 1.0, "seed": 1},
            "outputs": {"trained_model": "model_owner", "predictions": "data_owner"},
        }))
        .expect("job JSON"),
    )
    .expect("write the job");
    let submit_job = |revision: &str| {
        tessera(&[
            "stakeholder",
            "job",
            "--broker",
            &broker_addr,
            "--policy",
            s(&model_owner),
            "--key",
            s(&mo_key),
            "--revision",
            revision,
            s(&job),
        ])
    };

    // Refused: no infrastructure provider policy yet.
    let (success, out, err) = submit_job("1");
    assert!(
        !success && err.contains("infrastructure provider") && err.contains("no"),
        "the job must be refused for the missing policy, naming it:\nstdout: {out}\nstderr: {err}"
    );

    let provider_policy = |p: &Path, key: &Path, revision: &str| {
        tessera(&[
            "stakeholder",
            "policy",
            "--broker",
            &broker_addr,
            "--key",
            s(key),
            "--revision",
            revision,
            s(p),
        ])
    };
    // Refused: a provider policy signed with a key the broker does not pin (the host's own).
    let (host_key, _) = keygen("host");
    let (success, out, err) = provider_policy(&provider, &host_key, "1");
    assert!(
        !success && err.contains("is not signed by the infrastructure provider"),
        "a policy signed with an unpinned key must be refused:\nstdout: {out}\nstderr: {err}"
    );
    for (p, revision) in [(&provider, "1"), (&provider_withdrawn, "2")] {
        let (success, out, err) = provider_policy(p, &ip_key, revision);
        assert!(
            success && out.contains("infrastructure provider"),
            "{out}{err}"
        );
        if p == &provider {
            let (success, out, err) = submit_job("1");
            assert!(
                success && out.contains("accepted") && out.contains("cloud-c"),
                "the job is accepted once all three consent: {out}{err}"
            );
        }
    }
    // Refused: the consenting policy again at its old revision (a replay, or a rollback).
    let (success, out, err) = provider_policy(&provider, &ip_key, "1");
    assert!(
        !success && err.contains("revision 1 is not higher"),
        "an old revision must be refused:\nstdout: {out}\nstderr: {err}"
    );

    // Refused: the provider withdrew its consent after the job was accepted.
    let agent_run = [
        "agent",
        "run",
        "--broker",
        &broker_addr,
        "--job",
        JOB,
        "--store",
        s(&store),
        "--tcti",
        &tcti,
        "--ima-log",
        s(&ima_log),
        "--threads",
        "2",
    ];
    let (success, out, err) = tessera(&agent_run);
    assert!(
        !success && err.contains("infrastructure provider") && err.contains("does not list"),
        "the agent must be refused, naming the withdrawn consent:\nstdout: {out}\nstderr: {err}"
    );
    assert!(!tessera_attested::host::model_path(&store, JOB).exists());

    // Refused: the provider withdrew its policy altogether.
    let out = ok(&[
        "stakeholder",
        "withdraw",
        "--broker",
        &broker_addr,
        "--policy",
        s(&provider),
        "--key",
        s(&ip_key),
        "--revision",
        "3",
    ]);
    assert!(out.contains("withdrew its policy at revision 3"), "{out}");
    let (success, out, err) = tessera(&agent_run);
    assert!(
        !success && err.contains("the infrastructure provider withdrew its policy (revision 3)"),
        "the agent must be refused, naming the withdrawal:\nstdout: {out}\nstderr: {err}"
    );

    // Consent restored (a higher revision): the host attests, receives the keys, trains.
    let (success, out, err) = provider_policy(&provider, &ip_key, "4");
    assert!(success, "{out}{err}");
    let out = ok(&agent_run);
    assert!(
        out.contains(&format!("job {JOB}: trained on 455 rows")),
        "{out}"
    );

    // The model owner decrypts the trained model; it imports.
    let onnx = dir.join("model.onnx");
    let out = ok(&[
        "stakeholder",
        "fetch-model",
        "--job",
        JOB,
        "--store",
        s(&store),
        "--key",
        s(&model_key),
        "--out",
        s(&onnx),
    ]);
    assert!(out.contains("written"), "{out}");
    let bytes = std::fs::read(&onnx).expect("read the model");
    tessera_model::import::import_model(&bytes, &Default::default())
        .expect("the trained model imports");

    // Inference in the enclave: the data owner sends its held-out rows with `tessera client`.
    let infer_addr = format!("127.0.0.1:{}", free_port());
    let mut infer = Server::start(
        "broker infer",
        &[
            "broker",
            "infer",
            "--config",
            s(&config),
            "--state",
            s(&state),
            "--job",
            JOB,
            "--store",
            s(&store),
            "--listen",
            &infer_addr,
        ],
        dir,
    );
    let line = infer.wait_for("inference enclave");
    let enclave_measurement = line
        .split_whitespace()
        .skip_while(|w| *w != "measurement")
        .nth(1)
        .expect("the inference enclave's measurement")
        .trim_end_matches([',', ';'])
        .to_string();
    assert_eq!(enclave_measurement.len(), 96, "{line}");
    let n = test.rows();
    assert_eq!(n, 114);
    let mut correct = 0;
    for i in 0..n {
        let x = tessera_model::Tensor::new(vec![1, 30], test.row(i).expect("row").to_vec())
            .expect("tensor");
        let npy = dir.join("row.npy");
        std::fs::write(&npy, tessera_data::npy::to_npy(&x)).expect("write npy");
        let out = ok(&[
            "client",
            "--connect",
            &infer_addr,
            "--input",
            s(&npy),
            "--allow-simulated",
            "--measurement",
            &enclave_measurement,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("client --json");
        if v["class"].as_u64() == Some(u64::from(test.labels[i])) {
            correct += 1;
        }
    }
    let acc = f64::from(correct) / n as f64;
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "attested (separate processes): {correct}/{n} held-out rows correct in the enclave; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.9, "held-out accuracy {acc:.3} ({correct}/{n})");

    // A wrong measurement is refused by the client.
    let (success, _, err) = tessera(&[
        "client",
        "--connect",
        &infer_addr,
        "--input",
        s(&dir.join("row.npy")),
        "--allow-simulated",
        "--measurement",
        &"00".repeat(48),
    ]);
    assert!(!success && err.contains("measurement"), "{err}");
    drop(infer);

    // The model owner's key is needed: the dataset key does not open the model.
    let (success, _, err) = tessera(&[
        "stakeholder",
        "fetch-model",
        "--job",
        JOB,
        "--store",
        s(&store),
        "--key",
        s(&dataset_key),
        "--out",
        s(&dir.join("wrong.onnx")),
    ]);
    assert!(
        !success && err.contains("wrong model key"),
        "fetching with the wrong key must fail clearly: {err}"
    );

    // The host runs a file no allow-list lists (extended into PCR 10 as IMA would): refused,
    // naming the file; the old log no longer replays to PCR 10: refused, naming the replay.
    let honest_log = std::fs::read(&ima_log).expect("read the IMA log");
    {
        let mut host = MeasuredHost {
            agent: tessera_tpm::Agent::connect(Some(&tcti)).expect("connect to swtpm"),
            log: tessera_tpm::ImaLog::parse_any(&honest_log).expect("parse the IMA log"),
            boot_pcrs: Vec::new(),
        };
        host.run_file(
            "/usr/local/bin/cryptominer",
            &tessera_tpm::HashAlg::Sha256.digest(b"not on any allow-list"),
        )
        .expect("measure an unlisted file");
        std::fs::write(&ima_log, host.log.to_bytes()).expect("write the IMA log");
    }
    let (success, out, err) = tessera(&agent_run);
    assert!(
        !success
            && err.contains("no key released")
            && err.contains("the data owner's allow-list (hospital-a)")
            && err.contains("unknown file /usr/local/bin/cryptominer"),
        "an unlisted file must be refused, naming it:\nstdout: {out}\nstderr: {err}"
    );
    std::fs::write(&ima_log, &honest_log).expect("write the IMA log");
    let (success, out, err) = tessera(&agent_run);
    assert!(
        !success && err.contains("does not replay to the quoted PCR 10"),
        "a log missing an entry must be refused:\nstdout: {out}\nstderr: {err}"
    );
    // Neither refusal touched the trained model.
    assert_eq!(
        std::fs::read(&onnx).expect("model"),
        bytes,
        "the trained model is unchanged"
    );
    drop(broker);
    drop(tpm);
}
