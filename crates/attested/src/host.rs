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

/// Runs `job` on this host: attests through `agent` (IMA log from `ima`), obtains the keys,
/// decrypts the dataset from `store` in memory, trains with `threads` threads (0: all), and
/// writes the model, encrypted under the model key, to `store`.
pub fn run_host_job(
    broker: &mut BrokerClient,
    agent: &mut Agent,
    ima: &ImaSource,
    job_id: &str,
    store: &Path,
    threads: usize,
    mut progress: impl FnMut(&str) + Send,
) -> Result<HostOutcome, AttestedError> {
    check_name("job id", job_id)?;
    let host_key = KeyPair::generate()?;
    let challenge = match broker.call(&Request::AgentHello {
        job: job_id.into(),
        identity: agent.identity(),
    })? {
        Reply::Challenge { challenge } => challenge,
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
    let evidence = agent.respond(&challenge, &host_binding(job_id, host_key.public()), ima)?;
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
    let (onnx, losses, train_time, used) = train(&job, &data, threads, |e, l| {
        progress(&format!("epoch {}: loss {l:.4}", e + 1));
    })?;
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
