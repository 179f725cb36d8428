//! The training host's side (`tessera agent`): attest to the broker with the TPM, receive the
//! keys wrapped to a fresh host key bound into the quote, decrypt the dataset in memory, train,
//! and store the trained model encrypted under the model key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_engine::train::train_mlp;
use tessera_tpm::{Agent, ImaSource};

use crate::broker::{BrokerClient, KeyKind, Reply, Request, host_binding, release_context};
use crate::dataset::{PlainDataset, decrypt_dataset, encrypt_model, key_from};
use crate::error::AttestedError;
use crate::policy::{JobSpec, check_name};
use crate::wrap::KeyPair;

/// Where the untrusted store keeps the encrypted dataset of `dataset`.
pub fn dataset_path(store: &Path, dataset: &str) -> PathBuf {
    store.join(format!("{dataset}.tsds"))
}

/// Where the untrusted store keeps the encrypted trained model of `job`.
pub fn model_path(store: &Path, job: &str) -> PathBuf {
    store.join(format!("{job}.model.tsmd"))
}

/// What a host run did.
#[derive(Clone, Debug, Serialize)]
pub struct HostOutcome {
    /// Job.
    pub job: String,
    /// Rows trained on.
    pub rows: usize,
    /// Mean loss after each epoch.
    pub losses: Vec<f32>,
    /// Training wall time.
    pub train_time: Duration,
    /// Threads used.
    pub threads: usize,
    /// ONNX bytes of the trained model.
    pub model_bytes: usize,
    /// Where the encrypted model was written.
    pub model_path: PathBuf,
}

/// Trains `job`'s network on `data` with `threads` CPU threads (0: all cores); returns the
/// ONNX bytes, the per-epoch losses and the wall time of training alone.
pub fn train(
    job: &JobSpec,
    data: &PlainDataset,
    threads: usize,
    mut progress: impl FnMut(usize, f32) + Send,
) -> Result<(Vec<u8>, Vec<f32>, Duration, usize), AttestedError> {
    let cfg = job.train.config()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| AttestedError::Training(format!("starting {threads} threads: {e}")))?;
    let used = pool.current_num_threads();
    let mut losses = Vec::with_capacity(cfg.epochs);
    let t0 = Instant::now();
    let graph = pool.install(|| {
        let mut record = |e: usize, l: f32| {
            losses.push(l);
            progress(e, l);
        };
        if job.train.network.is_mlp() {
            train_mlp(
                &data.features,
                &data.labels,
                &data.input_shape,
                data.classes,
                &cfg,
                record,
            )
            .map_err(|e| AttestedError::Training(e.to_string()))
        } else {
            crate::conv_job::train_conv(&job.train, data, &mut record)
        }
    })?;
    let took = t0.elapsed();
    let onnx = tessera_model::export::export_model(&graph)
        .map_err(|e| AttestedError::Training(format!("exporting the trained model: {e}")))?;
    Ok((onnx, losses, took, used))
}

/// What the agent attests with: the TPM, the IMA log, and the measurement of the files a
/// program job runs.
pub trait Host {
    /// The TPM agent.
    fn agent(&mut self) -> &mut Agent;
    /// The IMA log as it stands.
    fn ima(&self) -> ImaSource;
    /// Record that the host is about to run `path`, whose SHA-256 the agent computed, before it
    /// quotes. On a host with IMA the kernel measured the file when the agent read it, so this
    /// does nothing; a measured test host ([`crate::MeasuredHost`]) extends PCR 10 here.
    fn measure_file(&mut self, path: &str, sha256: &[u8]) -> Result<(), AttestedError>;
}

/// A host whose kernel keeps the IMA log (or whose log is read from a file).
pub struct KernelHost<'a> {
    /// The TPM agent.
    pub agent: &'a mut Agent,
    /// Where the IMA log is read.
    pub ima: ImaSource,
}

impl Host for KernelHost<'_> {
    fn agent(&mut self) -> &mut Agent {
        self.agent
    }
    fn ima(&self) -> ImaSource {
        self.ima.clone()
    }
    fn measure_file(&mut self, _path: &str, _sha256: &[u8]) -> Result<(), AttestedError> {
        Ok(())
    }
}

/// Reads every file of a program job (on an IMA host, reading it measures it) and has `host`
/// record it. The digests are the host's own: the broker compares them with the job's.
fn measure_program(host: &mut dyn Host, job: &JobSpec) -> Result<(), AttestedError> {
    let Some(program) = &job.program else {
        return Ok(());
    };
    for path in program.files.keys() {
        let bytes =
            std::fs::read(path).map_err(|e| AttestedError::io("reading", Path::new(path), e))?;
        host.measure_file(path, &tessera_tpm::HashAlg::Sha256.digest(&bytes))?;
    }
    Ok(())
}

/// Runs `job` on this host: attests through `host` (for a program job, after measuring the
/// program's files), obtains the keys, decrypts the dataset from `store` in memory, trains with
/// `threads` threads (0: all) or runs the job's program, and writes the model, encrypted under
/// the model key, to `store`.
pub fn run_host_job(
    broker: &mut BrokerClient,
    host: &mut dyn Host,
    job_id: &str,
    store: &Path,
    threads: usize,
    mut progress: impl FnMut(&str) + Send,
) -> Result<HostOutcome, AttestedError> {
    check_name("job id", job_id)?;
    let host_key = KeyPair::generate()?;
    let challenge = match broker.call(&Request::AgentHello {
        job: job_id.into(),
        identity: host.agent().identity(),
    })? {
        Reply::Challenge { challenge, job } => {
            if job.id != job_id {
                return Err(AttestedError::Protocol(format!(
                    "the broker challenged for job {:?}, not {job_id:?}",
                    job.id
                )));
            }
            if job.program.is_some() {
                progress("measuring the job's program files");
                measure_program(host, &job)?;
            }
            challenge
        }
        Reply::Rejected { reason } => {
            return Err(AttestedError::Refused(format!(
                "the broker refused the job: {reason}"
            )));
        }
        _ => {
            return Err(AttestedError::Protocol(
                "expected a challenge from the broker".into(),
            ));
        }
    };
    progress("attesting: quoting PCRs 0–10 with the IMA log");
    let ima = host.ima();
    let evidence =
        host.agent()
            .respond(&challenge, &host_binding(job_id, host_key.public()), &ima)?;
    let (job, quote_hash, wd, wm) = match broker.call(&Request::AgentEvidence { evidence })? {
        Reply::Keys {
            job,
            quote_hash,
            dataset_key,
            model_key,
        } => (job, quote_hash, dataset_key, model_key),
        Reply::Rejected { reason } => {
            return Err(AttestedError::Refused(format!(
                "the broker rejected this host: {reason}"
            )));
        }
        _ => {
            return Err(AttestedError::Protocol(
                "expected keys from the broker".into(),
            ));
        }
    };
    if job.id != job_id {
        return Err(AttestedError::Protocol(format!(
            "the broker released keys for job {:?}, not {job_id:?}",
            job.id
        )));
    }
    job.validate()?;
    let dk = key_from(
        &host_key.unwrap_key(&release_context(KeyKind::Dataset, job_id, &quote_hash), &wd)?,
    )?;
    let mk = key_from(
        &host_key.unwrap_key(&release_context(KeyKind::Model, job_id, &quote_hash), &wm)?,
    )?;
    drop(host_key);
    progress("attested: keys released; decrypting the dataset in memory");
    let path = dataset_path(store, &job.dataset);
    let enc = std::fs::read(&path).map_err(|e| AttestedError::io("reading", &path, e))?;
    let data = decrypt_dataset(&enc, &dk)?;
    drop(dk);
    let (onnx, losses, train_time, used) = match &job.program {
        Some(program) => {
            progress(&format!("running {}", program.command.join(" ")));
            let t0 = Instant::now();
            let onnx = crate::program::run_program(&job, program, &data, &mut |l| {
                progress(&format!("program: {l}"))
            })?;
            (onnx, Vec::new(), t0.elapsed(), 0)
        }
        None => train(&job, &data, threads, |e, l| {
            progress(&format!("epoch {}: loss {l:.4}", e + 1));
        })?,
    };
    let rows = data.rows();
    drop(data);
    let sealed = encrypt_model(&mk, &job.id, &onnx)?;
    let out = model_path(store, &job.id);
    tessera_runtime::seal::write_atomic(&out, &sealed)?;
    Ok(HostOutcome {
        job: job.id,
        rows,
        losses,
        train_time,
        threads: used,
        model_bytes: onnx.len(),
        model_path: out,
    })
}
