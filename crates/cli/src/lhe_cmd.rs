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
    /// Scheme served: lhe (stores the encrypted model, computes linear layers on ciphertexts).
    #[arg(long, default_value = "lhe")]
    scheme: String,
    /// Address to listen on for the enclave, the model owner and data owners.
    #[arg(long, default_value = "127.0.0.1:7300")]
    listen: String,
    /// Where uploaded encrypted models are stored (one file per set-up).
    #[arg(long, default_value = "tessera-server-store")]
    store: PathBuf,
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
        if scheme == "lhe" && self.semantics == "auto" && !self.v2_for(g) {
            eprintln!(
                "lhe: --semantics auto means v2 for lhe (it needs every activation saturated to \
                 bound the plaintext modulus)"
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
    if a.scheme != "lhe" {
        return Err(usage(format!(
            "the server serves --scheme lhe, not '{}' (gc and asym use `tessera worker`)",
            a.scheme
        )));
    }
    let listener = TcpListener::bind(&a.listen)
        .map_err(|e| usage(format!("cannot listen on {}: {e}", a.listen)))?;
    let h = tessera_lhe::server::serve_server(
        listener,
        tessera_lhe::server::ServerOptions::new(a.store.clone()),
    )
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
    let x = load_input(&a.input)?;
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
