//! The 2pc scheme's two parties on the command line: `server --scheme 2pc MODEL` (holds the
//! model) and `client --scheme 2pc` (holds the input). No enclave: the client pins the server's
//! certificate, which the server writes to a file on start.

use crate::lhe_cmd::ServerArgs;
use crate::remote::ClientArgs;
use crate::{CliError, Result, human, print_json};
use rand::SeedableRng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use tessera_data::load_input;
use tessera_engine::{ExactModel, argmax};
use tessera_runtime::ChannelOptions;
use tessera_runtime::tls::Identity;
use tessera_twopc::net::{ServeOptions, connect, serve};
use tessera_twopc::protocol::TwoPc;
use tessera_twopc::session::{ServeConfig, Variant};
use tessera_twopc::store::Store;

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn io_err(path: &Path, e: std::io::Error) -> CliError {
    CliError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// The server's TLS identity: read from `path`, or made and written there (owner-only) on the
/// first start.
fn identity(path: &Path) -> Result<Identity> {
    match std::fs::read(path) {
        Ok(b) => Identity::from_bytes(&b).map_err(|e| {
            usage(format!(
                "{} is not a tessera identity ({e}); move it away to make a new one (clients must then pin the new certificate)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity::generate().map_err(usage)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(|e| io_err(path, e))?;
            f.write_all(&id.to_bytes()).map_err(|e| io_err(path, e))?;
            f.sync_all().map_err(|e| io_err(path, e))?;
            Ok(id)
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// A preprocessing store at `loc`: a directory, or s3://bucket/prefix for a store the
/// machines of a cluster share.
fn open_store(loc: &Path, limit: u64) -> Result<Store> {
    let loc: tessera_objstore::Location = loc.to_string_lossy().parse().map_err(usage)?;
    Store::open_at(&loc, limit).map_err(usage)
}

/// Serve the model until killed.
pub fn server(a: &ServerArgs) -> Result<()> {
    let spec = a
        .model
        .as_deref()
        .ok_or_else(|| usage("--scheme 2pc serves a model: tessera server --scheme 2pc MODEL"))?;
    let g = crate::resolve_model(spec, &a.quant.import_options())?;
    let sem = a.quant.semantics_for(&g, "2pc")?;
    let int = match ExactModel::new(&g, &sem)? {
        ExactModel::V2(m) => m,
        ExactModel::Pow2(_) => {
            return Err(usage(
                "2pc reproduces the integer semantics v2; run with --semantics v2 or --calibrate DATA",
            ));
        }
    };
    let t = TwoPc::new(int).map_err(usage)?;
    if let Some(op) = t.client_prefix().first() {
        return Err(usage(format!(
            "'{op}' comes before the model's first conv or dense layer: a remote client would have to run it on its input, and the public description carries only linear layers and their segments (run this model with `tessera run --scheme 2pc`, where both parties are local)"
        )));
    }
    let id = identity(&a.identity)?;
    crate::write_atomic(&a.cert, id.cert())?;
    let listen = a.listen.as_deref().unwrap_or("127.0.0.1:7400");
    let listener =
        TcpListener::bind(listen).map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    let h = serve(
        listener,
        t.server(),
        Arc::new(id),
        ServeOptions {
            max_sessions: a.max_sessions.max(1),
            session: ServeConfig {
                max_pending: 4,
                store: Some(open_store(&a.store, a.storage)?),
                only: a
                    .quant
                    .variant
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(usage)?,
            },
            ..ServeOptions::default()
        },
    )
    .map_err(usage)?;
    let cert = std::fs::read(&a.cert).map_err(|e| io_err(&a.cert, e))?;
    println!(
        "2pc server listening on {} for {} ({}); certificate {} (SHA-256 {}) — clients pin it with --server-cert",
        h.addr(),
        g.name,
        t.describe(),
        a.cert.display(),
        hex::encode(Sha256::digest(&cert))
    );
    h.wait();
    Ok(())
}

/// One private inference with a 2pc server.
pub fn client(a: &ClientArgs) -> Result<()> {
    let cert_path = a.server_cert.as_deref().ok_or_else(|| {
        usage("--scheme 2pc needs --server-cert FILE (the certificate `tessera server --scheme 2pc` wrote)")
    })?;
    let cert = std::fs::read(cert_path).map_err(|e| io_err(cert_path, e))?;
    let variant: Variant = a.variant.parse().map_err(usage)?;
    if a.input.is_none() && a.precompute.is_none() {
        return Err(usage(
            "give --input X, or --precompute N to prepare inferences",
        ));
    }
    let mut c = connect(&a.connect, &cert, variant, ChannelOptions::default()).map_err(usage)?;
    let store = open_store(&a.store, a.storage)?;
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    if let Some(n) = a.precompute {
        let pb = if a.json {
            indicatif::ProgressBar::hidden()
        } else {
            crate::progress(n as u64, "2pc offline phases")
        };
        let (mut client_b, mut server_b, mut up, mut down, mut ms) = (0u64, 0u64, 0u64, 0u64, 0f64);
        for _ in 0..n {
            let (_, cost) = c.offline_stored(&store, &mut rng).map_err(usage)?;
            client_b += cost.client_stored;
            server_b += cost.server_stored;
            up += cost.offline_up;
            down += cost.offline_down;
            ms += cost.offline_ms;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let ready = c.stored(&store).map_err(usage)?;
        if a.json && a.input.is_none() {
            #[derive(Serialize)]
            struct Pre {
                precomputed: usize,
                ready: usize,
                offline_ms: f64,
                offline_bytes_up: u64,
                offline_bytes_down: u64,
                client_stored_bytes: u64,
                server_stored_bytes: u64,
            }
            return print_json(&Pre {
                precomputed: n,
                ready,
                offline_ms: ms,
                offline_bytes_up: up,
                offline_bytes_down: down,
                client_stored_bytes: client_b,
                server_stored_bytes: server_b,
            });
        }
        if !a.json {
            println!(
                "precomputed {n} inferences in {:.1} s ({} up / {} down); stored: client {} in {}, server {}; {ready} ready",
                ms / 1e3,
                human(up),
                human(down),
                human(client_b),
                a.store.display(),
                human(server_b)
            );
        }
    }
    let Some(input) = a.input.as_deref() else {
        return c.close().map_err(usage);
    };
    let x = load_input(input)?;
    let xq = c
        .public()
        .model
        .quantize(x.data(), x.shape())
        .map_err(usage)?;
    let scale = c.public().model.output_scale;
    let stored = c.stored(&store).map_err(usage)?;
    let (y, cost, from_store) = if stored > 0 {
        let (y, online, _) = c.online_stored(&store, &xq).map_err(usage)?;
        (y, online, true)
    } else {
        if !a.json {
            eprintln!(
                "2pc ({}): {} segments, {} AND gates; offline phase…",
                variant.name(),
                c.public().segments.len(),
                c.public().and_gates()
            );
        }
        let mut cost = c.offline(&mut rng).map_err(usage)?;
        let (y, online) = c.online(&xq).map_err(usage)?;
        cost.add_online(&online);
        (y, cost, false)
    };
    c.close().map_err(usage)?;
    let output: Vec<f32> = y.iter().map(|&v| (v as f64 * scale) as f32).collect();
    let class = argmax(&output);
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            class: usize,
            output: &'a [f32],
            exact_output: &'a [i64],
            scale: f64,
            variant: &'a str,
            offline_ms: f64,
            online_ms: f64,
            /// Of online_ms, the time waiting for the server (its work and the transfer).
            online_wait_ms: f64,
            offline_bytes_up: u64,
            offline_bytes_down: u64,
            online_bytes_up: u64,
            online_bytes_down: u64,
            online_messages: u64,
            garbled_bytes: u64,
            and_gates: u64,
            client_stored_bytes: u64,
            server_stored_bytes: u64,
            /// The offline phase ran earlier (--precompute); its figures are not in this output.
            preprocessing_from_store: bool,
        }
        return print_json(&Out {
            class,
            output: &output,
            exact_output: &y,
            scale,
            variant: variant.name(),
            offline_ms: cost.offline_ms,
            online_ms: cost.online_ms,
            online_wait_ms: cost.online_wait_ms,
            offline_bytes_up: cost.offline_up,
            offline_bytes_down: cost.offline_down,
            online_bytes_up: cost.online_up,
            online_bytes_down: cost.online_down,
            online_messages: cost.online_messages,
            garbled_bytes: cost.garbled_bytes,
            and_gates: cost.and_gates,
            client_stored_bytes: cost.client_stored,
            server_stored_bytes: cost.server_stored,
            preprocessing_from_store: from_store,
        });
    }
    println!("class {class}");
    println!("output {output:?}");
    if from_store {
        println!(
            "online {:.0} ms, {} up / {} down in {} messages (preprocessing made earlier with --precompute)",
            cost.online_ms,
            human(cost.online_up),
            human(cost.online_down),
            cost.online_messages
        );
        return Ok(());
    }
    println!(
        "offline {:.0} ms, {} up / {} down ({} garbled, {} AND gates); online {:.0} ms, {} up / {} down in {} messages",
        cost.offline_ms,
        human(cost.offline_up),
        human(cost.offline_down),
        human(cost.garbled_bytes),
        cost.and_gates,
        cost.online_ms,
        human(cost.online_up),
        human(cost.online_down),
        cost.online_messages
    );
    println!(
        "stored between the phases: client {}, server {}",
        human(cost.client_stored),
        human(cost.server_stored)
    );
    Ok(())
}

/// One network and variant's 2pc figures, with tee and lhe on the same input in the same run.
#[derive(Serialize)]
struct TwoPcBenchRow {
    network: String,
    variant: &'static str,
    activations: u64,
    and_gates: u64,
    segments: usize,
    /// Medians, ms.
    offline_ms: f64,
    online_ms: f64,
    /// Of online_ms, the client's wait for the server (its work and the transfer).
    online_wait_ms: f64,
    offline_up: u64,
    offline_down: u64,
    online_up: u64,
    online_down: u64,
    online_messages: u64,
    garbled_bytes: u64,
    client_stored: u64,
    server_stored: u64,
    exact: bool,
    tee_ms: f64,
    lhe_ms: Option<f64>,
    gc_online_ms: Option<f64>,
    gc_garble_ms: Option<f64>,
}

/// `tessera bench --2pc NETS`: both variants end to end (offline and online, bytes each way,
/// stored bytes on each side), per activation, with tee, lhe and gc on the same input.
pub fn bench_2pc(nets: &[String], mnist8: &Path, reps: usize, json: bool) -> Result<()> {
    use tessera_schemes::{Lhe, Scheme, Tee, TeeOptions};
    let mnist_dir = mnist8
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("mnist-t10k"))
        .unwrap_or_default();
    let mut rows = Vec::new();
    for name in nets {
        let Some((g, x, sem)) = crate::lhe_cmd::bench_network(name, mnist8, &mnist_dir)? else {
            continue;
        };
        let int = match ExactModel::new(&g, &sem)? {
            ExactModel::V2(m) => m,
            ExactModel::Pow2(_) => return Err(usage("2pc benchmarks run v2")),
        };
        let reference = int.run(&x)?;
        let t = TwoPc::new(int).map_err(usage)?;
        let p = t.server().public.clone();
        if !json {
            eprintln!("2pc bench: {name}: {}", t.describe());
        }
        let mut tee = Tee::new(&g, &sem, TeeOptions::default())?;
        let mut tee_ms = Vec::new();
        for _ in 0..reps.max(1) {
            tee_ms.push(tee.infer(&x)?.cost.latency.as_secs_f64() * 1e3);
        }
        let tee_ms = tessera_schemes::median(&mut tee_ms);
        // lhe keeps the whole encrypted model in memory: only beside small networks.
        let lhe_ms = (p.activations() <= 50_000)
            .then(|| Lhe::new(&g, &sem).ok())
            .flatten()
            .and_then(|mut l| {
                let mut v = Vec::new();
                for _ in 0..reps.max(1) {
                    v.push(l.infer(&x).ok()?.cost.latency.as_secs_f64() * 1e3);
                }
                Some(tessera_schemes::median(&mut v))
            });
        // gc garbles the whole network per inference in the enclave: beside small networks.
        let gc_run = || crate::bench_cmd::gc_beside(&g, &sem, &x, reps);
        let (gc_online_ms, gc_garble_ms) = if p.activations() <= 50_000 {
            match gc_run() {
                Ok((on, garble)) => (Some(on), Some(garble)),
                Err(e) => {
                    eprintln!("gc did not run {name}: {e}");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        for variant in [Variant::ServerGarbler, Variant::ClientGarbler] {
            let (mut off, mut on, mut wait) = (Vec::new(), Vec::new(), Vec::new());
            let mut exact = true;
            let mut last = None;
            for k in 0..reps.max(1) {
                let (y, c) = t.infer(&x, k as u64, variant).map_err(usage)?;
                exact &= y == reference;
                off.push(c.offline_ms);
                on.push(c.online_ms);
                wait.push(c.online_wait_ms);
                last = Some(c);
            }
            let c = last.unwrap_or_default();
            rows.push(TwoPcBenchRow {
                network: name.clone(),
                variant: variant.name(),
                activations: p.activations(),
                and_gates: p.and_gates(),
                segments: p.segments.len(),
                offline_ms: tessera_schemes::median(&mut off),
                online_ms: tessera_schemes::median(&mut on),
                online_wait_ms: tessera_schemes::median(&mut wait),
                offline_up: c.offline_up,
                offline_down: c.offline_down,
                online_up: c.online_up,
                online_down: c.online_down,
                online_messages: c.online_messages,
                garbled_bytes: c.garbled_bytes,
                client_stored: c.client_stored,
                server_stored: c.server_stored,
                exact,
                tee_ms,
                lhe_ms,
                gc_online_ms,
                gc_garble_ms,
            });
        }
    }
    if json {
        return print_json(&rows);
    }
    let mut t = crate::table::Table::new(&[
        "network",
        "variant",
        "offline ms",
        "offline up/down",
        "online ms",
        "client waits ms",
        "online up/down",
        "msgs",
        "stored client/server",
        "exact",
        "tee ms",
        "lhe ms",
        "gc online / garble ms",
    ]);
    for r in &rows {
        t.row(vec![
            r.network.clone(),
            r.variant.into(),
            format!("{:.0}", r.offline_ms),
            format!("{} / {}", human(r.offline_up), human(r.offline_down)),
            format!("{:.1}", r.online_ms),
            format!("{:.1}", r.online_wait_ms),
            format!("{} / {}", human(r.online_up), human(r.online_down)),
            r.online_messages.to_string(),
            format!("{} / {}", human(r.client_stored), human(r.server_stored)),
            if r.exact { "yes" } else { "NO" }.into(),
            format!("{:.2}", r.tee_ms),
            r.lhe_ms.map_or("—".into(), |v| format!("{v:.1}")),
            match (r.gc_online_ms, r.gc_garble_ms) {
                (Some(on), Some(garble)) => format!("{on:.1} / {garble:.0}"),
                _ => "—".into(),
            },
        ]);
    }
    println!("{}", t.render());
    let mut t = crate::table::Table::new(&[
        "network",
        "variant",
        "activations",
        "ANDs/act",
        "garbled B/act",
        "online B/act",
        "client stored B/act",
        "server stored B/act",
    ]);
    for r in &rows {
        let per = |v: u64| format!("{:.0}", v as f64 / r.activations.max(1) as f64);
        t.row(vec![
            r.network.clone(),
            r.variant.into(),
            r.activations.to_string(),
            per(r.and_gates),
            per(r.garbled_bytes),
            per(r.online_up + r.online_down),
            per(r.client_stored),
            per(r.server_stored),
        ]);
    }
    println!("{}", t.render());
    println!(
        "activations: accumulators of conv and dense layers, each requantized and clamped in a garbled circuit (pools and residual adds add their gates to the same count)"
    );
    Ok(())
}
