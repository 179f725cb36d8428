//! The `attested` scheme's commands: `tessera broker`, `tessera agent`, `tessera stakeholder`
//! (make a signing key, submit or withdraw a policy, upload an encrypted dataset, deposit a
//! model key, submit a job — each signed — and fetch the trained model) and the one-command
//! local flow.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_attested::broker::{Broker, BrokerClient, BrokerConfig, KeyKind, serve_broker};
use tessera_attested::dataset::{
    Key, decrypt_model, encrypt_dataset, key_from, load_breast_cancer, load_mnist, new_key,
    parse_sklearn_csv, shuffle,
};
use tessera_attested::host::{dataset_path, model_path, run_host_job};
use tessera_attested::policy::{JobSpec, StakeholderPolicy};
use tessera_attested::signed::{Pinned, StakeholderKey, revision_now};
use tessera_tpm::{Agent, ImaSource};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn load_policy(path: &Path) -> Result<StakeholderPolicy, String> {
    StakeholderPolicy::from_json(&read(path)?, &path.display().to_string()).map_err(err)
}

fn write_key(path: &Path, key: &Key) -> Result<(), String> {
    let text = zeroize::Zeroizing::new(hex::encode(key.as_ref()));
    tessera_runtime::seal::write_atomic(path, text.as_bytes()).map_err(err)
}

fn read_key(path: &Path) -> Result<Key, String> {
    let text = zeroize::Zeroizing::new(read(path)?);
    let bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim())
            .map_err(|_| format!("{}: not a hex key (64 hex digits)", path.display()))?,
    );
    key_from(&bytes).map_err(err)
}

fn load_key(path: &Path) -> Result<StakeholderKey, String> {
    StakeholderKey::load(path).map_err(err)
}

fn broker_config(state: PathBuf, config: &Path) -> Result<BrokerConfig, String> {
    Ok(BrokerConfig {
        state_dir: state,
        binary: None,
        stakeholders: Pinned::load(config).map_err(err)?,
    })
}

const CONFIG_HELP: &str = "The broker configuration (JSON): the stakeholders' pinned signing \
keys, {\"version\": 1, \"stakeholders\": {\"data_owner\": {\"name\": \"…\", \"key\": \"<hex \
ed25519 public key>\"}, \"model_owner\": {…}, \"infrastructure_provider\": {…}}} (keys from \
`tessera stakeholder keygen`). The broker's measurement covers it, so it is fixed when the \
broker is set up.";

/// `tessera broker …`: the key broker (runs in the enclave; simulated here).
#[derive(clap::Subcommand, Debug)]
pub enum BrokerCmd {
    /// Serve stakeholders and host agents until stopped. Only requests signed by a pinned
    /// stakeholder change its policy, keys or jobs; host agents may only attest.
    Serve {
        #[arg(long, help = CONFIG_HELP)]
        config: PathBuf,
        /// State directory (platform key, sealed broker key, signed requests).
        #[arg(long, default_value = "tessera-broker")]
        state: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
    },
    /// Print the broker enclave's measurement (for the stakeholders' policies).
    Measurement {
        #[arg(long, help = CONFIG_HELP)]
        config: PathBuf,
        /// State directory.
        #[arg(long, default_value = "tessera-broker")]
        state: PathBuf,
    },
    /// Serve inference with a job's trained model in the enclave (the `tee` scheme).
    Infer {
        #[arg(long, help = CONFIG_HELP)]
        config: PathBuf,
        /// State directory.
        #[arg(long, default_value = "tessera-broker")]
        state: PathBuf,
        /// The job.
        #[arg(long)]
        job: String,
        /// The untrusted store holding the encrypted model.
        #[arg(long)]
        store: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7401")]
        listen: String,
    },
}

/// Runs a `tessera broker` command.
pub fn run_broker(cmd: BrokerCmd) -> Result<(), String> {
    match cmd {
        BrokerCmd::Serve {
            config,
            state,
            listen,
        } => {
            let broker = Arc::new(Broker::open(broker_config(state, &config)?).map_err(err)?);
            let listener = std::net::TcpListener::bind(&listen)
                .map_err(|e| format!("listening on {listen}: {e}"))?;
            println!("broker measurement {}", hex::encode(broker.measurement()));
            println!("broker key {}", hex::encode(broker.public_key()));
            println!("listening on {listen} (SIMULATED TEE: no protection)");
            serve_broker(broker, listener).map_err(err)?.wait();
            Ok(())
        }
        BrokerCmd::Measurement { config, state } => {
            let b = Broker::open(broker_config(state, &config)?).map_err(err)?;
            println!("{}", hex::encode(b.measurement()));
            Ok(())
        }
        BrokerCmd::Infer {
            config,
            state,
            job,
            store,
            listen,
        } => {
            let b = Broker::open(broker_config(state, &config)?).map_err(err)?;
            let mp = model_path(&store, &job);
            let enc = std::fs::read(&mp).map_err(|e| format!("reading {}: {e}", mp.display()))?;
            let listener = std::net::TcpListener::bind(&listen)
                .map_err(|e| format!("listening on {listen}: {e}"))?;
            let svc = b.start_inference(&job, &enc, listener).map_err(err)?;
            let m = hex::encode(svc.measurement);
            println!(
                "inference enclave for job {job} on {listen}, measurement {m} (SIMULATED TEE); \
                 the data owner connects with `tessera client --connect {listen} \
                 --allow-simulated --measurement {m} --input FILE`"
            );
            svc.server.wait();
            Ok(())
        }
    }
}

/// `tessera agent …`: the training host's agent.
#[derive(clap::Subcommand, Debug)]
pub enum AgentCmd {
    /// Print this host's endorsement key and boot PCRs (for the infrastructure provider's
    /// policy).
    Identity {
        /// TCTI (default: the environment's, or swtpm on 127.0.0.1:2321).
        #[arg(long)]
        tcti: Option<String>,
    },
    /// Attest to the broker, obtain the keys, train, store the encrypted model.
    Run {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        broker: String,
        /// The job.
        #[arg(long)]
        job: String,
        /// The untrusted store (encrypted dataset in, encrypted model out).
        #[arg(long)]
        store: PathBuf,
        /// TCTI (default: the environment's, or swtpm on 127.0.0.1:2321).
        #[arg(long)]
        tcti: Option<String>,
        /// IMA log file (default: the kernel's binary_runtime_measurements).
        #[arg(long)]
        ima_log: Option<PathBuf>,
        /// Training threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// Runs a `tessera agent` command.
pub fn run_agent(cmd: AgentCmd) -> Result<(), String> {
    match cmd {
        AgentCmd::Identity { tcti } => {
            let mut agent = Agent::connect(tcti.as_deref()).map_err(err)?;
            let pcrs = agent
                .read_pcrs(&tessera_tpm::PcrSelection::new(
                    tessera_tpm::HashAlg::Sha256,
                    &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                ))
                .map_err(err)?;
            let boot: serde_json::Map<String, serde_json::Value> = (0..=9u8)
                .filter_map(|i| {
                    pcrs.get(tessera_tpm::HashAlg::Sha256, i)
                        .map(|v| (i.to_string(), serde_json::json!([hex::encode(v)])))
                })
                .collect();
            let out = serde_json::json!({
                "trusted_eks": [hex::encode(agent.ek_public().as_bytes())],
                "boot_pcrs": boot,
            });
            println!("{}", serde_json::to_string_pretty(&out).map_err(err)?);
            Ok(())
        }
        AgentCmd::Run {
            broker,
            job,
            store,
            tcti,
            ima_log,
            threads,
        } => {
            let mut agent = Agent::connect(tcti.as_deref()).map_err(err)?;
            let ima = ima_log.map_or(ImaSource::Kernel, ImaSource::File);
            let mut client = BrokerClient::connect(&broker, true).map_err(err)?;
            let mut host = tessera_attested::KernelHost {
                agent: &mut agent,
                ima,
            };
            let out = run_host_job(&mut client, &mut host, &job, &store, threads, |l| {
                let _ = writeln!(std::io::stderr(), "agent: {l}");
            })
            .map_err(err)?;
            println!(
                "job {}: trained on {} rows in {:.2} s ({} threads); encrypted model at {}",
                out.job,
                out.rows,
                out.train_time.as_secs_f64(),
                out.threads,
                out.model_path.display()
            );
            Ok(())
        }
    }
}

/// The signing key and revision every signed stakeholder command takes.
#[derive(clap::Args, Debug)]
pub struct Signing {
    /// This stakeholder's signing key (from `tessera stakeholder keygen`; its public key is
    /// pinned in the broker configuration).
    #[arg(long)]
    key: PathBuf,
    /// The revision of what this request sets; it must exceed the broker's current one for it
    /// (replays and rollbacks are refused). Default: the current time in milliseconds.
    #[arg(long)]
    revision: Option<u64>,
}

impl Signing {
    fn load(&self) -> Result<(StakeholderKey, u64), String> {
        Ok((
            load_key(&self.key)?,
            self.revision.unwrap_or_else(revision_now),
        ))
    }
}

/// `tessera stakeholder …`: what a data owner, model owner or infrastructure provider does.
/// Every request that changes the broker's state is signed with the stakeholder's key and sent
/// only after the broker's evidence satisfied the stakeholder's policy.
#[derive(clap::Subcommand, Debug)]
pub enum StakeholderCmd {
    /// Make a signing key (owner-only file; never overwrites) and print its public key for the
    /// broker configuration.
    Keygen {
        /// Where to keep the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Submit a new revision of this stakeholder's policy (signed).
    Policy {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        broker: String,
        #[command(flatten)]
        signing: Signing,
        /// The policy (JSON).
        file: PathBuf,
    },
    /// Withdraw this stakeholder's policy, and with it its consent to every job (signed).
    Withdraw {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        broker: String,
        /// This stakeholder's policy (the broker is checked against it).
        #[arg(long)]
        policy: PathBuf,
        #[command(flatten)]
        signing: Signing,
    },
    /// Data owner: encrypt a dataset into the store and deposit its key with the broker.
    Upload {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        broker: String,
        /// The data owner's policy (the broker is checked against it before the key is sent).
        #[arg(long)]
        policy: PathBuf,
        #[command(flatten)]
        signing: Signing,
        /// The dataset's name.
        #[arg(long)]
        name: String,
        /// An MNIST idx directory.
        #[arg(long, conflicts_with = "csv")]
        mnist: Option<PathBuf>,
        /// A scikit-learn style CSV (`rows,features,…` header; features then label per row).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Classes of the CSV's labels.
        #[arg(long, default_value_t = 2)]
        classes: usize,
        /// Keep only this many rows (after a seeded shuffle).
        #[arg(long)]
        rows: Option<usize>,
        /// The untrusted store.
        #[arg(long)]
        store: PathBuf,
        /// Where to keep the dataset key (owner-only file).
        #[arg(long)]
        key_out: PathBuf,
    },
    /// Model owner: create a model key, keep it, and deposit it with the broker for a job.
    ModelKey {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        broker: String,
        /// The model owner's policy.
        #[arg(long)]
        policy: PathBuf,
        #[command(flatten)]
        signing: Signing,
        /// The job.
        #[arg(long)]
        job: String,
        /// Where to keep the model key (owner-only file).
        #[arg(long)]
        key_out: PathBuf,
    },
    /// Model owner: submit a job (JSON; signed).
    Job {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        broker: String,
        /// The model owner's policy.
        #[arg(long)]
        policy: PathBuf,
        #[command(flatten)]
        signing: Signing,
        /// The job file, JSON: `id`, `dataset`, `outputs`, and `train` with `network` (`mlp`,
        /// the default, with `hidden` widths; or `cnn`, `vgg`, `resnet` over `[1, C, H, H]`
        /// images, with `width`, `shift` pixels of augmentation and `lr_final` for a linearly
        /// falling learning rate), `epochs`, `batch`, `lr`, `momentum`, `input_scale`, `seed`;
        /// optionally `program` (`command`, `files`: path → SHA-256 hex, `timeout_s`) to run
        /// the model owner's own trainer instead; every path in `command` must be listed.
        file: PathBuf,
    },
    /// Model owner: decrypt the trained model from the store.
    FetchModel {
        /// The job.
        #[arg(long)]
        job: String,
        /// The untrusted store.
        #[arg(long)]
        store: PathBuf,
        /// The model key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the ONNX model.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a `tessera stakeholder` command.
pub fn run_stakeholder(cmd: StakeholderCmd) -> Result<(), String> {
    match cmd {
        StakeholderCmd::Keygen { out } => {
            let k = StakeholderKey::generate().map_err(err)?;
            k.save(&out).map_err(err)?;
            println!("public key {}", hex::encode(k.public().as_bytes()));
            Ok(())
        }
        StakeholderCmd::Policy {
            broker,
            signing,
            file,
        } => {
            let p = load_policy(&file)?;
            let (k, rev) = signing.load()?;
            let mut c = BrokerClient::connect(&broker, false).map_err(err)?;
            println!("{}", c.submit_policy(&p, &k, rev).map_err(err)?);
            Ok(())
        }
        StakeholderCmd::Withdraw {
            broker,
            policy,
            signing,
        } => {
            let p = load_policy(&policy)?;
            let (k, rev) = signing.load()?;
            let mut c = BrokerClient::connect(&broker, false).map_err(err)?;
            println!("{}", c.withdraw_policy(&p, &k, rev).map_err(err)?);
            Ok(())
        }
        StakeholderCmd::Upload {
            broker,
            policy,
            signing,
            name,
            mnist,
            csv,
            classes,
            rows,
            store,
            key_out,
        } => {
            let p = load_policy(&policy)?;
            let (sk, rev) = signing.load()?;
            let mut data = match (mnist, csv) {
                (Some(dir), None) => load_mnist(&dir).map_err(err)?,
                (None, Some(path)) if classes == 2 => load_breast_cancer(&path).map_err(err)?,
                (None, Some(path)) => parse_sklearn_csv(&name, &read(&path)?, classes)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                _ => return Err("give the dataset with --mnist DIR or --csv FILE".into()),
            };
            data.name = name.clone();
            if let Some(n) = rows {
                shuffle(&mut data, 1);
                data = data.slice(&name, 0, n).map_err(err)?;
            }
            let key = new_key().map_err(err)?;
            let enc = encrypt_dataset(&data, &key, 512).map_err(err)?;
            std::fs::create_dir_all(&store)
                .map_err(|e| format!("creating {}: {e}", store.display()))?;
            let path = dataset_path(&store, &name);
            tessera_runtime::seal::write_atomic(&path, &enc).map_err(err)?;
            write_key(&key_out, &key)?;
            let mut c = BrokerClient::connect(&broker, false).map_err(err)?;
            let msg = c
                .deposit_key(&p, &sk, rev, KeyKind::Dataset, &name, &key)
                .map_err(err)?;
            println!(
                "{} rows encrypted to {} ({} bytes); {msg}",
                data.rows(),
                path.display(),
                enc.len()
            );
            Ok(())
        }
        StakeholderCmd::ModelKey {
            broker,
            policy,
            signing,
            job,
            key_out,
        } => {
            let p = load_policy(&policy)?;
            let (sk, rev) = signing.load()?;
            let key = new_key().map_err(err)?;
            write_key(&key_out, &key)?;
            let mut c = BrokerClient::connect(&broker, false).map_err(err)?;
            println!(
                "{}",
                c.deposit_key(&p, &sk, rev, KeyKind::Model, &job, &key)
                    .map_err(err)?
            );
            Ok(())
        }
        StakeholderCmd::Job {
            broker,
            policy,
            signing,
            file,
        } => {
            let p = load_policy(&policy)?;
            let (sk, rev) = signing.load()?;
            let j = JobSpec::from_json(&read(&file)?, &file.display().to_string()).map_err(err)?;
            let mut c = BrokerClient::connect(&broker, false).map_err(err)?;
            println!("{}", c.submit_job(&p, &sk, rev, &j).map_err(err)?);
            Ok(())
        }
        StakeholderCmd::FetchModel {
            job,
            store,
            key,
            out,
        } => {
            let k = read_key(&key)?;
            let mp = model_path(&store, &job);
            let enc = std::fs::read(&mp).map_err(|e| format!("reading {}: {e}", mp.display()))?;
            let onnx = decrypt_model(&k, &job, &enc).map_err(err)?;
            std::fs::write(&out, onnx.as_slice())
                .map_err(|e| format!("writing {}: {e}", out.display()))?;
            println!("trained model of job {job} written to {}", out.display());
            Ok(())
        }
    }
}

/// Options of the one-command local flow.
#[derive(clap::Args, Debug)]
pub struct AttestedDemoArgs {
    /// Working directory (swtpm state, broker state, store); default: a temporary folder.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the whole `attested` flow locally (swtpm, broker, stakeholders, agent, tee inference).
pub fn run_attested_demo(args: AttestedDemoArgs) -> Result<(), String> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tessera-attested-demo-{}", std::process::id()))
    });
    let report = tessera_attested::demo_flow(&dir).map_err(err)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(err)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}
