//! The lhe scheme's parties on the command line: `server` (untrusted), `upload` (the model
//! owner), `client --scheme lhe` (the data owner); `enclave --scheme lhe` is in [`crate::remote`].

use crate::remote::{ClientArgs, PolicyArgs};
use crate::{CliError, QuantArgs, Result, print_json, progress};
use clap::Args;
use serde::Serialize;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;
use tessera_data::load_input;
use tessera_engine::{Semantics, argmax};
use tessera_model::Graph;
use tessera_runtime::ChannelOptions;

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// `tessera server`.
#[derive(Args)]
pub struct ServerArgs {
    /// Scheme served: lhe (stores the encrypted model, computes linear layers on ciphertexts
    /// for the enclave) or 2pc (holds MODEL in the clear and runs Delphi's protocol, either
    /// variant, with each client that connects).
    #[arg(long, default_value = "lhe", value_parser = ["lhe", "2pc"])]
    pub(crate) scheme: String,
    /// 2pc: the model served (ONNX file or built-in network); its weights never leave this
    /// process, its architecture and requantization constants are sent to each client.
    pub(crate) model: Option<String>,
    /// Address to listen on (lhe: the enclave, the model owner and data owners; 2pc: clients).
    /// Default: 127.0.0.1:7300 for lhe, 127.0.0.1:7400 for 2pc.
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// Where the server keeps what it stores — lhe's uploaded encrypted models (one object per
    /// set-up), 2pc's preprocessing made for clients that precompute: a directory, or
    /// s3://bucket/prefix (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY;
    /// `?endpoint=URL&allow_http=true` for a store other than AWS).
    #[arg(long, default_value = "tessera-server-store")]
    pub(crate) store: PathBuf,
    /// 2pc: the most bytes stored preprocessing may take in --store (K, M, G suffixes).
    #[arg(long, default_value = "64G", value_parser = crate::parse_bytes)]
    pub(crate) storage: u64,
    /// 2pc: the server's TLS key (PKCS#8), made on first start and reused after, so clients
    /// that pinned the certificate keep trusting this server.
    #[arg(long, default_value = "tessera-2pc-identity.key")]
    pub(crate) identity: PathBuf,
    /// 2pc: where to write the server's certificate (DER) for clients to pin (`tessera client
    /// --scheme 2pc --server-cert FILE`).
    #[arg(long, default_value = "tessera-2pc-server.crt")]
    pub(crate) cert: PathBuf,
    /// 2pc: sessions served at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_sessions: usize,
    #[command(flatten)]
    pub(crate) quant: QuantArgs,
}

/// `tessera upload`.
#[derive(Args)]
pub struct UploadArgs {
    /// The ONNX model (or built-in network) whose weights are encrypted and uploaded; the
    /// enclave must run the same model under the same semantics.
    model: String,
    /// The enclave's address (attested; it gives the HE public key).
    #[arg(long, default_value = "127.0.0.1:7100")]
    enclave: String,
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7300")]
    server: String,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl QuantArgs {
    /// The semantics for `scheme`: lhe reproduces v2 only, so `auto` means v2 for it (with a
    /// note), where the other schemes would take pow2.
    pub(crate) fn semantics_for(&self, g: &Graph, scheme: &str) -> Result<Semantics> {
        if matches!(scheme, "lhe" | "2pc") && self.semantics == "auto" && !self.v2_for(g) {
            eprintln!(
                "{scheme}: --semantics auto means v2 for {scheme} (it needs every activation \
                 saturated to bound the plaintext modulus)"
            );
            let mut q = self.clone();
            q.semantics = "v2".into();
            return q.semantics(g);
        }
        self.semantics(g)
    }
}

/// Run the untrusted server until killed.
pub fn server(a: &ServerArgs) -> Result<()> {
    if a.scheme == "2pc" {
        return crate::twopc_cmd::server(a);
    }
    if a.model.is_some() {
        return Err(usage(
            "an lhe server takes no MODEL: the model owner uploads it encrypted (`tessera upload`)",
        ));
    }
    let listen = a.listen.as_deref().unwrap_or("127.0.0.1:7300");
    let listener =
        TcpListener::bind(listen).map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    let store: tessera_objstore::Location = a.store.to_string_lossy().parse().map_err(usage)?;
    let h =
        tessera_lhe::server::serve_server(listener, tessera_lhe::server::ServerOptions::new(store))
            .map_err(usage)?;
    println!(
        "lhe server listening on {} (store {}); waiting for the enclave, uploads and requests",
        h.addr(),
        a.store.display()
    );
    h.wait();
    Ok(())
}

fn connect_server(addr: &str) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .map_err(|e| usage(format!("cannot connect to the server at {addr}: {e}")))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The model owner: encrypt the weights for the attested enclave and upload them.
pub fn upload(a: &UploadArgs) -> Result<()> {
    let g = crate::resolve_model(&a.model, &a.quant.import_options())?;
    let sem = a.quant.semantics_for(&g, "lhe")?;
    let mut enclave = a.policy.connect(&a.enclave)?;
    let claims = tessera_attest::describe(enclave.claims());
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        progress(1, "encrypting")
    };
    let t0 = Instant::now();
    let r = tessera_lhe::owner::upload(
        &mut enclave,
        &g,
        &sem,
        connect_server(&a.server)?,
        ChannelOptions::default(),
        &mut |i, n| {
            pb.set_length(n as u64);
            pb.set_position(i as u64);
        },
    )
    .map_err(usage)?;
    pb.finish_and_clear();
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            attestation: &'a str,
            layers: usize,
            ciphertexts: usize,
            bytes_sent: u64,
            bytes_stored: u64,
            encrypt_ms: f64,
            total_ms: f64,
        }
        return print_json(&Out {
            attestation: &claims,
            layers: r.layers,
            ciphertexts: r.ciphertexts,
            bytes_sent: r.bytes_sent,
            bytes_stored: r.bytes_stored,
            encrypt_ms: r.encrypt_ns as f64 / 1e6,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        });
    }
    println!("{claims}");
    println!(
        "uploaded {} layers ({} ciphertexts, encrypted in {:.1} ms): {} B sent, {} B stored on the server",
        r.layers,
        r.ciphertexts,
        r.encrypt_ns as f64 / 1e6,
        r.bytes_sent,
        r.bytes_stored
    );
    Ok(())
}

/// The data owner: a session with the enclave, the encrypted input to the server.
pub fn client(a: &ClientArgs) -> Result<()> {
    let server = a
        .server
        .as_deref()
        .ok_or_else(|| usage("--scheme lhe needs --server ADDR (a running `tessera server`)"))?;
    let x = load_input(
        a.input
            .as_deref()
            .ok_or_else(|| usage("--input X is required"))?,
    )?;
    let t0 = Instant::now();
    let mut enclave = a.policy.connect(&a.connect)?;
    let claims = tessera_attest::describe(enclave.claims());
    let mut d = tessera_lhe::client::DataOwner::connect(
        &mut enclave,
        connect_server(server)?,
        ChannelOptions::default(),
    )
    .map_err(usage)?;
    let setup = t0.elapsed();
    let t1 = Instant::now();
    let (r, c) = d.infer(&x).map_err(usage)?;
    let latency = t1.elapsed();
    let output: Vec<f32> = r
        .exact
        .iter()
        .map(|&v| (v as f64 * r.scale) as f32)
        .collect();
    let class = argmax(&output);
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            class: usize,
            output: &'a [f32],
            exact_output: &'a [i64],
            scale: f64,
            attestation: &'a str,
            params: String,
            setup_ms: f64,
            latency_ms: f64,
            encrypt_ms: f64,
            enclave_ms: f64,
            server_ms: f64,
            bytes_to_server: u64,
            bytes_from_server: u64,
            enclave_server_bytes: u64,
            enclave_server_rounds: u64,
            products: u64,
            encryptions: u64,
            decryptions: u64,
        }
        return print_json(&Out {
            class,
            output: &output,
            exact_output: &r.exact,
            scale: r.scale,
            attestation: &claims,
            params: d.params().describe(),
            setup_ms: setup.as_secs_f64() * 1e3,
            latency_ms: latency.as_secs_f64() * 1e3,
            encrypt_ms: c.encrypt_ns as f64 / 1e6,
            enclave_ms: r.enclave_ns as f64 / 1e6,
            server_ms: r.server_ns as f64 / 1e6,
            bytes_to_server: c.bytes_up,
            bytes_from_server: c.bytes_down,
            enclave_server_bytes: r.bytes_to_server + r.bytes_from_server,
            enclave_server_rounds: r.rounds,
            products: r.products,
            encryptions: r.encryptions,
            decryptions: r.decryptions,
        });
    }
    println!("{claims}");
    println!("class {class}");
    println!(
        "lhe ({}): inference {:.1} ms — input encrypted in {:.1} ms, server {:.1} ms ({} ct×ct products), enclave {:.1} ms ({} decryptions, {} encryptions); {} B to the server, {} B back; enclave<->server {} B in {} rounds",
        d.params().describe(),
        latency.as_secs_f64() * 1e3,
        c.encrypt_ns as f64 / 1e6,
        r.server_ns as f64 / 1e6,
        r.products,
        r.enclave_ns as f64 / 1e6,
        r.decryptions,
        r.encryptions,
        c.bytes_up,
        c.bytes_down,
        r.bytes_to_server + r.bytes_from_server,
        r.rounds
    );
    Ok(())
}

/// One network's lhe figures, with tee and gc on the same input in the same run.
#[derive(Serialize)]
struct LheBenchRow {
    network: String,
    params: String,
    /// Median end-to-end latency seen by the data owner, ms.
    latency_ms: f64,
    /// Median server time, ms.
    server_ms: f64,
    /// Median enclave time (decrypt, check, requantize, non-linear layers, encrypt), ms.
    enclave_ms: f64,
    /// Enclave time over latency.
    enclave_share: f64,
    /// Data owner ↔ server and enclave ↔ server bytes per inference.
    bytes: u64,
    rounds: u64,
    /// The encrypted model on the server's disk.
    stored_bytes: u64,
    /// The model owner's encryption time, ms.
    upload_encrypt_ms: f64,
    products: u64,
    decryptions: u64,
    encryptions: u64,
    exact: bool,
    tee_ms: f64,
    gc_online_ms: Option<f64>,
    gc_garble_ms: Option<f64>,
    layers: Vec<tessera_lhe::LayerCost>,
}

/// A network for the benchmarks with v2 calibrated on its inputs: mnist-8 (on MNIST images when
/// `mnist_dir` has them) or a built-in network (on generated inputs in [0, 1]).
pub(crate) fn bench_network(
    name: &str,
    mnist8: &std::path::Path,
    mnist_dir: &std::path::Path,
) -> Result<Option<(Graph, tessera_model::Tensor, Semantics)>> {
    use tessera_engine::qint::{Calibration, QintConfig, default_calibration_inputs};
    let (g, x, cal) = if name == "mnist-8" {
        if !mnist8.exists() {
            eprintln!("skipping mnist-8: {} not found", mnist8.display());
            return Ok(None);
        }
        let g = tessera_model::load_model(mnist8, &tessera_model::ImportOptions::default())?;
        let dir = mnist8.parent().unwrap_or(std::path::Path::new("."));
        let x = tessera_data::load_pb(&dir.join("test_data_set_0/input_0.pb"))?;
        let cal = match tessera_data::load_mnist_dir(mnist_dir) {
            Ok(d) => {
                let xs: Vec<_> = (0..32).filter_map(|i| d.image(i)).collect();
                Calibration::from_inputs(&g, &xs, "mnist:32")?
            }
            Err(_) => Calibration::from_inputs(
                &g,
                &default_calibration_inputs(&g, 0.0, 255.0, 16, 1)?,
                "generated",
            )?,
        };
        (g, x, cal)
    } else {
        let g = crate::resolve_model(name, &tessera_model::ImportOptions::default())?;
        let x = default_calibration_inputs(&g, 0.0, 1.0, 1, 99)?.remove(0);
        let cal = Calibration::from_inputs(
            &g,
            &default_calibration_inputs(&g, 0.0, 1.0, 16, 1)?,
            "generated",
        )?;
        (g, x, cal)
    };
    let sem = Semantics::V2 {
        cfg: QintConfig::default(),
        calibration: cal,
    };
    Ok(Some((g, x, sem)))
}

fn median_ms(v: &mut [f64]) -> f64 {
    tessera_schemes::median(v)
}

/// `tessera bench --lhe NETS`: lhe end to end and per layer, tee and gc beside it.
pub fn bench_lhe(nets: &[String], mnist8: &std::path::Path, reps: usize, json: bool) -> Result<()> {
    use tessera_schemes::{Lhe, Scheme, Tee, TeeOptions};
    let mnist_dir = mnist8
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("mnist-t10k"))
        .unwrap_or_default();
    let mut rows = Vec::new();
    for name in nets {
        let Some((g, x, sem)) = bench_network(name, mnist8, &mnist_dir)? else {
            continue;
        };
        if !json {
            eprintln!("lhe bench: {name}: keys, upload, {reps} inferences; then tee and gc…");
        }
        let reference = tessera_engine::ExactModel::new(&g, &sem)?.run(&x)?;
        let mut s = Lhe::new(&g, &sem)?;
        let (mut lat, mut srv, mut enc) = (Vec::new(), Vec::new(), Vec::new());
        let mut exact = true;
        let mut last = None;
        for _ in 0..reps.max(1) {
            let r = s.infer(&x)?;
            exact &= r.exact == reference;
            lat.push(r.cost.latency.as_secs_f64() * 1e3);
            let d = s.last_detail().ok_or_else(|| usage("no lhe result"))?;
            srv.push(d.server_ns as f64 / 1e6);
            enc.push(d.enclave_ns as f64 / 1e6);
            last = Some(r);
        }
        let lr = s
            .last_detail()
            .ok_or_else(|| usage("no lhe result"))?
            .clone();
        let cost = last.map(|r| r.cost).unwrap_or_default();
        let mut tee = Tee::new(&g, &sem, TeeOptions::default())?;
        let mut tee_ms = Vec::new();
        for _ in 0..reps.max(1) {
            tee_ms.push(tee.infer(&x)?.cost.latency.as_secs_f64() * 1e3);
        }
        let gc_run = || crate::bench_cmd::gc_beside(&g, &sem, &x, reps);
        let (gc_online, gc_garble) = match gc_run() {
            Ok((on, garble)) => (Some(on), Some(garble)),
            Err(e) => {
                eprintln!("gc did not run {name}: {e}");
                (None, None)
            }
        };
        let latency_ms = median_ms(&mut lat);
        let enclave_ms = median_ms(&mut enc);
        rows.push(LheBenchRow {
            network: name.clone(),
            params: s.params(),
            latency_ms,
            server_ms: median_ms(&mut srv),
            enclave_ms,
            enclave_share: enclave_ms / latency_ms.max(1e-9),
            bytes: cost.bytes_up + cost.bytes_down,
            rounds: cost.rounds,
            stored_bytes: cost.stored_server,
            upload_encrypt_ms: s.upload().encrypt_ns as f64 / 1e6,
            products: lr.products,
            decryptions: lr.decryptions,
            encryptions: lr.encryptions,
            exact,
            tee_ms: median_ms(&mut tee_ms),
            gc_online_ms: gc_online,
            gc_garble_ms: gc_garble,
            layers: lr.layers.clone(),
        });
    }
    if json {
        return print_json(&rows);
    }
    let mut t = crate::table::Table::new(&[
        "network",
        "lhe ms",
        "server ms",
        "enclave ms",
        "enclave share",
        "bytes",
        "rounds",
        "stored",
        "ct×ct",
        "dec/enc",
        "exact",
        "tee ms",
        "gc online ms",
        "gc garble ms",
    ]);
    for r in &rows {
        t.row(vec![
            r.network.clone(),
            format!("{:.1}", r.latency_ms),
            format!("{:.1}", r.server_ms),
            format!("{:.1}", r.enclave_ms),
            format!("{:.0}%", 100.0 * r.enclave_share),
            crate::human(r.bytes),
            r.rounds.to_string(),
            crate::human(r.stored_bytes),
            r.products.to_string(),
            format!("{}/{}", r.decryptions, r.encryptions),
            if r.exact { "yes" } else { "NO" }.into(),
            format!("{:.2}", r.tee_ms),
            r.gc_online_ms.map_or("—".into(), |v| format!("{v:.1}")),
            r.gc_garble_ms.map_or("—".into(), |v| format!("{v:.0}")),
        ]);
    }
    println!("{}", t.render());
    for r in &rows {
        println!("{} ({}):", r.network, r.params);
        let mut t = crate::table::Table::new(&[
            "layer",
            "server ms",
            "enclave ms",
            "to server",
            "from server",
            "ct×ct",
            "dec",
            "enc",
        ]);
        for l in &r.layers {
            t.row(vec![
                l.name.clone(),
                format!("{:.2}", l.server_ns as f64 / 1e6),
                format!("{:.2}", l.enclave_ns as f64 / 1e6),
                crate::human(l.bytes_to_server),
                crate::human(l.bytes_from_server),
                l.products.to_string(),
                l.decryptions.to_string(),
                l.encryptions.to_string(),
            ]);
        }
        println!("{}", t.render());
    }
    Ok(())
}
