//! The whole `attested` flow in one process: swtpm as the training host's TPM, the broker on
//! loopback, the three stakeholders, the host agent, and inference in the `tee` enclave.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_model::Tensor;
use tessera_runtime::{AttestedClient, ChannelOptions, RuntimeError};

use crate::broker::{Broker, BrokerClient, BrokerConfig, KeyKind, Release, serve_broker};
use crate::dataset::{
    PlainDataset, chunk_offsets, decrypt_model, encrypt_dataset, new_key, shuffle,
};
use crate::error::AttestedError;
use crate::host::{dataset_path, model_path, run_host_job};
use crate::policy::{
    JobSpec, Network, Output, ProgramSpec, Stakeholder, StakeholderPolicy, TrainSpec,
};
use crate::signed::{Pinned, StakeholderKey};
use crate::swtpm::{HostImage, MeasuredHost, Swtpm};

/// The data of one run: the data owner's training rows and held-out test rows.
#[derive(Debug)]
pub struct FlowData {
    /// Training rows (encrypted, sent to the host).
    pub train: PlainDataset,
    /// Held-out rows (sent one by one to the inference enclave).
    pub test: PlainDataset,
    /// The model owner's training settings.
    pub train_spec: TrainSpec,
    /// The model owner's own training program, run instead of tessera's trainer (the
    /// stakeholders' allow-lists list its files with the job's digests).
    pub program: Option<ProgramSpec>,
    /// How the data was split, for the report.
    pub note: String,
}

/// Variations of a run (the defaults are the honest flow).
#[derive(Clone, Debug, Default)]
pub struct FlowOptions {
    /// Training threads on the host (0: all cores).
    pub threads: usize,
    /// A file the host runs after boot that no allow-list lists: `(path, content)`.
    pub unlisted_file: Option<(String, Vec<u8>)>,
    /// Flip one byte of this encrypted dataset chunk in the untrusted store.
    pub tamper_chunk: Option<usize>,
    /// This stakeholder's policy does not list the job.
    pub withhold_consent: Option<Stakeholder>,
    /// Test at most this many held-out rows (all when `None`).
    pub max_test: Option<usize>,
    /// Rows per encrypted chunk (default 512).
    pub chunk_rows: Option<usize>,
    /// The broker binary for its measurement (`None`: this executable).
    pub broker_binary: Option<Vec<u8>>,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// Files every allow-list permits beyond the host image and the job's program:
    /// `(path, SHA-256)`.
    pub also_allowed: Vec<(String, Vec<u8>)>,
}

/// What a run established.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Dataset.
    pub dataset: String,
    /// How it was split.
    pub note: String,
    /// True: the broker's and the inference enclave's TEE are simulated.
    pub simulated_tee: bool,
    /// The warning that goes with it.
    pub warning: String,
    /// Broker enclave measurement (hex).
    pub broker_measurement: String,
    /// Inference enclave measurement (hex; covers the trained model).
    pub inference_measurement: String,
    /// Stakeholders (role → name).
    pub stakeholders: BTreeMap<String, String>,
    /// The key release the broker recorded.
    pub release: Option<Release>,
    /// Training rows.
    pub train_rows: usize,
    /// Test rows evaluated.
    pub test_rows: usize,
    /// Classes.
    pub classes: usize,
    /// Features per row.
    pub features: usize,
    /// The network trained (`mlp [64, 32]`, `cnn`, `vgg ×2`, …).
    pub network: String,
    /// Hidden widths (mlp).
    pub hidden: Vec<usize>,
    /// Epochs.
    pub epochs: usize,
    /// Loss after each epoch.
    pub losses: Vec<f32>,
    /// Training time on the host (s).
    pub train_seconds: f64,
    /// Host threads.
    pub threads: usize,
    /// Encrypted dataset size.
    pub encrypted_dataset_bytes: usize,
    /// Trained model (ONNX) size.
    pub model_onnx_bytes: usize,
    /// Encrypted model size.
    pub encrypted_model_bytes: usize,
    /// Whether the model owner decrypted and imported the trained model.
    pub model_owner_received_model: bool,
    /// Accuracy of the enclave's predictions on the held-out rows.
    pub test_accuracy: f64,
    /// Mean client-side latency per prediction (ms).
    pub inference_mean_ms: f64,
    /// Mean modeled SGX time per prediction (ms).
    pub modeled_sgx_mean_ms: f64,
    /// Bytes the data owner sent and received for all predictions (TLS).
    pub inference_bytes: (u64, u64),
    /// Round trips of all predictions.
    pub inference_rounds: u64,
    /// The inference enclave's measured compute time over all predictions, nanoseconds.
    pub inference_enclave_ns: u64,
    /// Wall time of the whole run (s).
    pub total_seconds: f64,
}

impl Report {
    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        format!(
            "{warning}\n\
             attested: {ds} — {note}\n\
             host attested (EK {ek}…, {ima} IMA entries checked against 3 allow-lists), keys released to its quote\n\
             trained {network} × {epochs} epochs on {tr} rows in {ts:.2} s{th}{loss}\n\
             model: {mb} B ONNX, {emb} B encrypted for the model owner (received: {got})\n\
             tee inference on {te} held-out rows: accuracy {acc:.2}% ({lat:.3} ms/prediction measured, {sgx:.3} ms modeled SGX)",
            warning = self.warning,
            ds = self.dataset,
            note = self.note,
            ek = self
                .release
                .as_ref()
                .map(|r| r.ek_name.get(..16).unwrap_or_default().to_string())
                .unwrap_or_default(),
            ima = self.release.as_ref().map_or(0, |r| r.ima_entries),
            network = self.network,
            epochs = self.epochs,
            tr = self.train_rows,
            ts = self.train_seconds,
            th = if self.threads > 0 {
                format!(" ({} threads)", self.threads)
            } else {
                String::new()
            },
            loss = self
                .losses
                .last()
                .map(|l| format!("; loss {l:.4}"))
                .unwrap_or_default(),
            mb = self.model_onnx_bytes,
            emb = self.encrypted_model_bytes,
            got = self.model_owner_received_model,
            te = self.test_rows,
            acc = 100.0 * self.test_accuracy,
            lat = self.inference_mean_ms,
            sgx = self.modeled_sgx_mean_ms,
        )
    }
}

/// A stakeholder policy for `job` trusting the broker `measurement` (simulated consent given),
/// the host's boot PCRs, `allow_list` (Keylime JSON), and `eks` (hex TPMT_PUBLIC).
pub fn make_policy(
    who: Stakeholder,
    name: &str,
    job: &str,
    measurement: &[u8; 48],
    boot_pcrs: &[Vec<u8>],
    allow_list: &str,
    eks: &[String],
) -> Result<StakeholderPolicy, AttestedError> {
    let allow: serde_json::Value =
        serde_json::from_str(allow_list).map_err(|e| AttestedError::PolicyFile {
            origin: "allow-list".into(),
            reason: e.to_string(),
        })?;
    Ok(StakeholderPolicy {
        version: 1,
        stakeholder: who,
        name: name.into(),
        jobs: vec![job.into()],
        enclave_measurements: vec![hex::encode(measurement)],
        allow_simulated_enclave: true,
        boot_pcrs: boot_pcrs
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u8, vec![hex::encode(v)]))
            .collect(),
        ima_allow_list: allow,
        trusted_eks: if who == Stakeholder::InfrastructureProvider {
            eks.to_vec()
        } else {
            Vec::new()
        },
        outputs: [
            (Output::TrainedModel, vec![Stakeholder::ModelOwner]),
            (Output::Predictions, vec![Stakeholder::DataOwner]),
        ]
        .into_iter()
        .collect(),
    })
}

fn say(on: bool, line: &str) {
    if on {
        let _ = writeln!(std::io::stderr(), "  [attested] {line}");
    }
}

/// Runs the whole flow under `dir` (created; swtpm state, broker state, the untrusted store).
pub fn run_flow(dir: &Path, data: &FlowData, opts: &FlowOptions) -> Result<Report, AttestedError> {
    let t_all = Instant::now();
    let p = opts.progress;
    std::fs::create_dir_all(dir).map_err(|e| AttestedError::io("creating", dir, e))?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store).map_err(|e| AttestedError::io("creating", &store, e))?;
    let job_id = format!("{}-mlp", data.train.name);
    let dataset = data.train.name.clone();

    // The training host boots and measures its software into its TPM.
    let tpm = Swtpm::start(dir)?;
    let image = HostImage::training_host();
    let mut host = MeasuredHost::boot(&tpm.tcti(), &image)?;
    if let Some((path, content)) = &opts.unlisted_file {
        host.run_file(path, &tessera_tpm::HashAlg::Sha256.digest(content))?;
    }
    say(
        p,
        &format!(
            "host booted: swtpm {}, {} IMA entries",
            tpm.tcti(),
            host.log.entries().len()
        ),
    );

    // Each stakeholder makes its signing key; the broker is set up pinning the three public
    // keys (its measurement covers them).
    let names = [
        (Stakeholder::DataOwner, "data-owner"),
        (Stakeholder::ModelOwner, "model-owner"),
        (Stakeholder::InfrastructureProvider, "infra-provider"),
    ];
    let mut keys = BTreeMap::new();
    for (who, _) in names {
        keys.insert(who, StakeholderKey::generate()?);
    }
    let pinned = Pinned::new(
        names
            .iter()
            .filter_map(|(who, name)| {
                keys.get(who)
                    .map(|k| (*who, (name.to_string(), k.public())))
            })
            .collect(),
        "the demo's stakeholders",
    )?;
    let key_of = |who: Stakeholder| {
        keys.get(&who)
            .ok_or_else(|| AttestedError::NotFound(format!("no {who} signing key")))
    };

    // The broker enclave.
    let broker = Arc::new(Broker::open(BrokerConfig {
        state_dir: dir.join("broker"),
        binary: opts.broker_binary.clone(),
        stakeholders: pinned,
    })?);
    let measurement = *broker.measurement();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| {
        AttestedError::Runtime(RuntimeError::Io(format!("binding a loopback port: {e}")))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| AttestedError::Runtime(RuntimeError::Io(e.to_string())))?
        .to_string();
    let server = serve_broker(broker.clone(), listener)?;
    say(
        p,
        &format!(
            "broker (SIMULATED TEE) on {addr}, measurement {}",
            hex::encode(&measurement[..12])
        ),
    );

    // The stakeholders' policies.
    let mut allowed = image.clone();
    if let Some(program) = &data.program {
        allowed.files.extend(
            program
                .digests()
                .into_iter()
                .map(|(path, d)| (path.to_string(), d)),
        );
    }
    allowed.files.extend(opts.also_allowed.iter().cloned());
    let allow = allowed.allow_list()?;
    let ek = hex::encode(host.agent.ek_public().as_bytes());
    let mut policies = BTreeMap::new();
    for (who, name) in names {
        let mut pol = make_policy(
            who,
            name,
            &job_id,
            &measurement,
            &host.boot_pcrs,
            &allow,
            std::slice::from_ref(&ek),
        )?;
        if opts.withhold_consent == Some(who) {
            pol.jobs.clear();
        }
        let mut c = BrokerClient::connect(&addr, false)?;
        say(p, &c.submit_policy(&pol, key_of(who)?, 1)?);
        policies.insert(who, pol);
    }
    let policy_of = |who: Stakeholder| {
        policies
            .get(&who)
            .ok_or_else(|| AttestedError::NotFound(format!("no {who} policy")))
    };

    // The data owner encrypts and stores the dataset, and deposits its key.
    let dkey = new_key()?;
    let mut enc = encrypt_dataset(&data.train, &dkey, opts.chunk_rows.unwrap_or(512))?;
    if let Some(c) = opts.tamper_chunk {
        let chunks = chunk_offsets(&enc)?;
        let (at, len) = chunks
            .get(c)
            .copied()
            .ok_or_else(|| AttestedError::Data(format!("no chunk {c} to tamper with")))?;
        if let Some(b) = enc.get_mut(at + len / 2) {
            *b ^= 0x01;
        }
    }
    let ds_path = dataset_path(&store, &dataset);
    tessera_runtime::seal::write_atomic(&ds_path, &enc)?;
    let mut c = BrokerClient::connect(&addr, false)?;
    say(
        p,
        &c.deposit_key(
            policy_of(Stakeholder::DataOwner)?,
            key_of(Stakeholder::DataOwner)?,
            1,
            KeyKind::Dataset,
            &dataset,
            &dkey,
        )?,
    );
    drop(dkey);

    // The model owner deposits its model key and submits the job.
    let mkey = new_key()?;
    let mut c = BrokerClient::connect(&addr, false)?;
    say(
        p,
        &c.deposit_key(
            policy_of(Stakeholder::ModelOwner)?,
            key_of(Stakeholder::ModelOwner)?,
            1,
            KeyKind::Model,
            &job_id,
            &mkey,
        )?,
    );
    let job = JobSpec {
        id: job_id.clone(),
        dataset: dataset.clone(),
        train: data.train_spec.clone(),
        program: data.program.clone(),
        outputs: [
            (Output::TrainedModel, Stakeholder::ModelOwner),
            (Output::Predictions, Stakeholder::DataOwner),
        ]
        .into_iter()
        .collect(),
    };
    say(
        p,
        &c.submit_job(
            policy_of(Stakeholder::ModelOwner)?,
            key_of(Stakeholder::ModelOwner)?,
            1,
            &job,
        )?,
    );

    // The host attests, trains, and stores the encrypted model.
    let mut hc = BrokerClient::connect(&addr, true)?;
    let outcome = run_host_job(&mut hc, &mut host, &job_id, &store, opts.threads, |l| {
        say(p, l)
    })?;
    let release = broker.releases().into_iter().find(|r| r.job == job_id);

    // The model owner receives the trained model.
    let mp = model_path(&store, &job_id);
    let enc_model = std::fs::read(&mp).map_err(|e| AttestedError::io("reading", &mp, e))?;
    let onnx = decrypt_model(&mkey, &job_id, &enc_model)?;
    let received = tessera_model::import::import_model(&onnx, &Default::default()).is_ok();

    // Inference in the enclave; the data owner sends its held-out rows.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| {
        AttestedError::Runtime(RuntimeError::Io(format!("binding a loopback port: {e}")))
    })?;
    let service = broker.start_inference(&job_id, &enc_model, listener)?;
    let inference_measurement = service.measurement;
    let mut pol = tessera_attest::Policy::simulated_dev();
    pol.measurements = vec![hex::encode(service.measurement)];
    pol.sim_platform_keys = vec![broker.platform_fingerprint()];
    let stream = TcpStream::connect(service.server.addr()).map_err(|e| {
        AttestedError::Runtime(RuntimeError::Io(format!(
            "connecting to the inference enclave: {e}"
        )))
    })?;
    let _ = stream.set_nodelay(true);
    let mut client = AttestedClient::connect(stream, &pol, ChannelOptions::default())?;
    let n = opts.max_test.unwrap_or(usize::MAX).min(data.test.rows());
    let (mut correct, mut lat, mut modeled, mut enclave_ns) = (0usize, Duration::ZERO, 0u64, 0u64);
    // The predictions' own traffic (the attested handshake before them is not counted).
    let (up0, down0, rounds0) = client.counters().snapshot();
    for i in 0..n {
        let row = data.test.row(i).unwrap_or_default();
        let x = Tensor::new(data.test.input_shape.clone(), row.to_vec())
            .map_err(|e| AttestedError::Data(e.to_string()))?;
        let t0 = Instant::now();
        let out = client.infer(&x)?;
        lat += t0.elapsed();
        modeled += out.tee.modeled_ns;
        enclave_ns = enclave_ns.saturating_add(out.tee.measured_ns);
        let pred = out
            .exact
            .data()
            .iter()
            .enumerate()
            .max_by_key(|(_, v)| **v)
            .map_or(0, |(k, _)| k);
        if data
            .test
            .labels
            .get(i)
            .is_some_and(|&l| usize::from(l) == pred)
        {
            correct += 1;
        }
    }
    let (up, down, rounds) = client.counters().snapshot();
    let (up, down, rounds) = (
        up.saturating_sub(up0),
        down.saturating_sub(down0),
        rounds.saturating_sub(rounds0),
    );
    drop(client);
    drop(service);
    drop(server);
    let nf = n.max(1) as f64;
    say(p, &format!("tee inference: {correct}/{n} correct"));
    let accepted = broker.accepted_job(&job_id)?;
    Ok(Report {
        dataset,
        note: data.note.clone(),
        simulated_tee: broker.simulated(),
        warning: tessera_runtime::enclave::SIMULATED_WARNING.into(),
        broker_measurement: hex::encode(measurement),
        inference_measurement: hex::encode(inference_measurement),
        stakeholders: crate::broker::stakeholder_names(&accepted),
        release,
        train_rows: outcome.rows,
        test_rows: n,
        classes: data.train.classes,
        features: data.train.features_per_row(),
        network: match &data.program {
            Some(p) => format!("the model owner's program `{}`", p.command.join(" ")),
            None => describe(&data.train_spec),
        },
        hidden: data.train_spec.hidden.clone(),
        epochs: data.train_spec.epochs,
        losses: outcome.losses,
        train_seconds: outcome.train_time.as_secs_f64(),
        threads: outcome.threads,
        encrypted_dataset_bytes: enc.len(),
        model_onnx_bytes: outcome.model_bytes,
        encrypted_model_bytes: enc_model.len(),
        model_owner_received_model: received,
        test_accuracy: correct as f64 / nf,
        inference_mean_ms: lat.as_secs_f64() * 1e3 / nf,
        modeled_sgx_mean_ms: modeled as f64 / 1e6 / nf,
        inference_bytes: (up, down),
        inference_rounds: rounds,
        inference_enclave_ns: enclave_ns,
        total_seconds: t_all.elapsed().as_secs_f64(),
    })
}

/// Splits `all` (shuffled with `seed`) into the first `train_rows` rows and the rest.
pub fn split(
    mut all: PlainDataset,
    train_rows: usize,
    seed: u64,
) -> Result<(PlainDataset, PlainDataset), AttestedError> {
    shuffle(&mut all, seed);
    let n = all.rows();
    let train = all.slice(&all.name, 0, train_rows)?;
    let test = all.slice(&format!("{}-test", all.name), train_rows, n)?;
    Ok((train, test))
}

/// The demo: the whole flow on the generated glyph images (3,000 to train, 500 held out), a
/// CNN job (conv 16, pool, conv 32, pool, dense 128, dense 10, 4 epochs), with swtpm started
/// here, printing progress. Fails with a message naming the packages when swtpm is missing.
pub fn demo_flow(dir: &Path) -> Result<Report, AttestedError> {
    demo_flow_with(dir, true)
}

/// [`demo_flow`], with or without progress lines on stderr.
pub fn demo_flow_with(dir: &Path, progress: bool) -> Result<Report, AttestedError> {
    let g = tessera_data::synth::glyphs(3_500, 7);
    let all = PlainDataset::new(
        "glyphs",
        vec![1, g.channels, g.rows, g.cols],
        10,
        g.pixels,
        g.labels,
    )?;
    let (train, test) = split(all, 3_000, 1)?;
    let data = FlowData {
        train,
        test,
        train_spec: TrainSpec {
            network: Network::Cnn,
            width: 1,
            hidden: Vec::new(),
            shift: 0,
            epochs: 4,
            batch: 32,
            lr: 0.02,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0 / 255.0,
            seed: 1,
        },
        note: "generated glyph digits: 3,000 rows to train, 500 held out to test".into(),
        program: None,
    };
    run_flow(
        dir,
        &data,
        &FlowOptions {
            progress,
            ..Default::default()
        },
    )
}

/// The network of a job in a few words.
pub fn describe(t: &TrainSpec) -> String {
    match t.network {
        Network::Mlp => format!("mlp {:?}", t.hidden),
        n if t.width > 1 => format!("{} ×{}", n.name(), t.width),
        n => n.name().to_string(),
    }
}
