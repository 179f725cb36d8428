//! Sessions under attack, both parties in this process over in-memory channels: a session's
//! preprocessing serves one inference; a returned output label that is neither of its wire's
//! labels is caught by the garbler's hashed-label check in both variants; a message that is not
//! the expected one ends the session with an error naming it.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_model::builders;
use tessera_mpc::MpcError;
use tessera_mpc::ot::{Channel, MemChannel, duplex};
use tessera_twopc::protocol::{ServerModel, TwoPcError};
use tessera_twopc::session::{self, Client, Control, ServeConfig, Variant, send_ctl};

fn model() -> (Vec<i64>, Vec<i64>, Arc<ServerModel>) {
    let g = builders::dash_a(4).expect("dash-a");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 8, 2).expect("inputs");
    let cal = Calibration::from_inputs(&g, &xs, "test").expect("calibrates");
    let m = IntModel::new(&g, QintConfig::default(), &cal).expect("lowers");
    let cut = tessera_twopc::model::Cut::new(m.clone()).expect("cut");
    assert!(
        cut.prefix.is_empty(),
        "dash-a's first layer reads the input"
    );
    let server = Arc::new(ServerModel::new(&cut).expect("server model"));
    let x = m.quantize_input(&xs[0]).expect("quantizes").data().to_vec();
    let want = m.run(&xs[0]).expect("reference").data().to_vec();
    (want, x, server)
}

/// A channel that, once armed, flips the lowest bit of the `nth` message it sends from then on.
struct Tamper {
    inner: MemChannel,
    armed: Arc<AtomicUsize>,
}

impl Channel for Tamper {
    fn send(&mut self, mut msg: Vec<u8>) -> Result<(), MpcError> {
        match self.armed.load(Ordering::SeqCst) {
            0 => {}
            1 => {
                if let Some(b) = msg.first_mut() {
                    *b ^= 1;
                }
                self.armed.store(0, Ordering::SeqCst);
            }
            n => self.armed.store(n - 1, Ordering::SeqCst),
        }
        self.inner.send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>, MpcError> {
        self.inner.recv()
    }
}

fn serve_thread<C: Channel + Send + 'static>(
    server: Arc<ServerModel>,
    mut ch: C,
) -> std::thread::JoinHandle<Result<u64, TwoPcError>> {
    std::thread::spawn(move || {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        session::serve(
            &server,
            &mut ch,
            &mut rng,
            &ServeConfig {
                max_pending: 2,
                ..ServeConfig::default()
            },
        )
    })
}

#[test]
fn preprocessing_serves_one_inference() {
    let (want, x, server) = model();
    for v in [Variant::ServerGarbler, Variant::ClientGarbler] {
        let (s, c) = duplex();
        let h = serve_thread(server.clone(), s);
        let mut client = Client::open(c, v).expect("opens");
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        client.offline(&mut rng).expect("offline");
        let (y, _) = client.online(&x).expect("online");
        assert_eq!(y, want, "{v:?}");
        // The client's own queue is empty now.
        assert!(matches!(
            client.online(&x),
            Err(TwoPcError::NoPreprocessing)
        ));
        // A client that asks the server for a second online phase anyway is refused.
        send_ctl(client.channel(), &Control::Online).expect("sends");
        drop(client);
        let e = h.join().expect("joins").expect_err("refused");
        assert!(matches!(e, TwoPcError::NoPreprocessing), "{v:?}: {e}");
    }
}

#[test]
fn two_preprocessings_serve_two_inferences_in_order() {
    let (want, x, server) = model();
    let (s, c) = duplex();
    let h = serve_thread(server, s);
    let mut client = Client::open(c, Variant::ClientGarbler).expect("opens");
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    client.offline(&mut rng).expect("offline 1");
    client.offline(&mut rng).expect("offline 2");
    for _ in 0..2 {
        assert_eq!(client.online(&x).expect("online").0, want);
    }
    client.close().expect("bye");
    assert_eq!(h.join().expect("joins").expect("served"), 2);
}

#[test]
fn server_garbler_catches_a_wrong_output_label() {
    let (_, x, server) = model();
    let (s, c) = duplex();
    let h = serve_thread(server, s);
    let armed = Arc::new(AtomicUsize::new(0));
    let mut client = Client::open(
        Tamper {
            inner: c,
            armed: armed.clone(),
        },
        Variant::ServerGarbler,
    )
    .expect("opens");
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    client.offline(&mut rng).expect("offline");
    // Online the client sends: the Online request, its masked input, then the first
    // segment's output labels — the right number of labels, one bit off.
    armed.store(3, Ordering::SeqCst);
    let _ = client.online(&x);
    drop(client);
    let e = h.join().expect("joins").expect_err("caught");
    assert!(
        e.to_string().contains("neither of its wire's labels"),
        "{e}"
    );
}

#[test]
fn client_garbler_catches_a_wrong_output_label() {
    let (_, x, server) = model();
    let (s, c) = duplex();
    let armed = Arc::new(AtomicUsize::new(0));
    let h = serve_thread(
        server.clone(),
        Tamper {
            inner: s,
            armed: armed.clone(),
        },
    );
    let mut client = Client::open(c, Variant::ClientGarbler).expect("opens");
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    client.offline(&mut rng).expect("offline");
    // Online the server sends one choice-difference message per segment, then the output
    // labels: flip a bit in those.
    armed.store(client.public().segments.len() + 1, Ordering::SeqCst);
    let e = client.online(&x).expect_err("caught");
    assert!(
        e.to_string().contains("neither of its wire's labels"),
        "{e}"
    );
    drop(client);
    let _ = h.join();
}

#[test]
fn an_unexpected_message_ends_the_session_with_its_name() {
    let (_, _, server) = model();
    let (s, mut c) = duplex();
    let h = serve_thread(server, s);
    // Not a hello.
    send_ctl(&mut c, &Control::Online).expect("sends");
    let e = h.join().expect("joins").expect_err("refused");
    assert!(e.to_string().contains("expected the client's hello"), "{e}");
    // Garbage where a control message belongs.
    let (_, _, server) = model();
    let (s, c) = duplex();
    let h = serve_thread(server, s);
    let mut client = Client::open(c, Variant::ServerGarbler).expect("opens");
    client.channel().send(vec![0xff; 9]).expect("sends");
    let e = h.join().expect("joins").expect_err("refused");
    assert!(e.to_string().contains("do not decode as one"), "{e}");
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-2pc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Preprocessing kept on disk on both sides: used once by a later online phase in another
/// session; asking the server for it again is refused because its file is gone; a file whose
/// bytes changed is refused by its checksum and stays for inspection.
#[test]
fn stored_preprocessing_serves_one_later_inference() {
    use tessera_twopc::store::Store;
    let (want, x, server) = model();
    let sdir = temp_dir("server-store");
    let cdir = temp_dir("client-store");
    let sstore = Store::open(&sdir, 1 << 30).expect("store");
    let cstore = Store::open(&cdir, 1 << 30).expect("store");
    for v in [Variant::ServerGarbler, Variant::ClientGarbler] {
        // Session 1: two offline phases, stored.
        let (s, c) = duplex();
        let srv = server.clone();
        let st = sstore.clone();
        let h = std::thread::spawn(move || {
            let mut ch = s;
            let mut rng = ChaCha20Rng::seed_from_u64(9);
            session::serve(
                &srv,
                &mut ch,
                &mut rng,
                &ServeConfig {
                    max_pending: 1,
                    store: Some(st),
                    only: None,
                },
            )
        });
        let mut client = Client::open(c, v).expect("opens");
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let (id1, cost) = client.offline_stored(&cstore, &mut rng).expect("stored 1");
        assert!(cost.client_stored > 0 && cost.server_stored > 0);
        client.offline_stored(&cstore, &mut rng).expect("stored 2");
        assert_eq!(client.stored(&cstore).expect("count"), 2);
        client.close().expect("bye");
        h.join().expect("joins").expect("served");
        // Session 2: both used, oldest first; then none is left.
        let (s, c) = duplex();
        let srv = server.clone();
        let st = sstore.clone();
        let h = std::thread::spawn(move || {
            let mut ch = s;
            let mut rng = ChaCha20Rng::seed_from_u64(11);
            session::serve(
                &srv,
                &mut ch,
                &mut rng,
                &ServeConfig {
                    max_pending: 1,
                    store: Some(st),
                    only: None,
                },
            )
        });
        let mut client = Client::open(c, v).expect("opens");
        let (y, _, used) = client.online_stored(&cstore, &x).expect("online 1");
        assert_eq!(y, want, "{v:?}");
        assert_eq!(used, id1, "the oldest goes first");
        let (y, _, _) = client.online_stored(&cstore, &x).expect("online 2");
        assert_eq!(y, want, "{v:?}");
        assert!(matches!(
            client.online_stored(&cstore, &x),
            Err(TwoPcError::NoPreprocessing)
        ));
        // The server's copy of id1 is gone too: asking for it again is refused.
        send_ctl(client.channel(), &Control::OnlineStored { id: id1 }).expect("sends");
        drop(client);
        let e = h.join().expect("joins").expect_err("refused");
        assert!(
            e.to_string().contains("no stored preprocessing"),
            "{v:?}: {e}"
        );
    }
    // A corrupted file is refused by its checksum, and stays.
    let (s, c) = duplex();
    let srv = server.clone();
    let st = sstore.clone();
    let h = std::thread::spawn(move || {
        let mut ch = s;
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        session::serve(
            &srv,
            &mut ch,
            &mut rng,
            &ServeConfig {
                max_pending: 1,
                store: Some(st),
                only: None,
            },
        )
    });
    let mut client = Client::open(c, Variant::ServerGarbler).expect("opens");
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    client.offline_stored(&cstore, &mut rng).expect("stored");
    let file = std::fs::read_dir(&cdir)
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".pre"))
        .expect("a stored file")
        .path();
    let mut bytes = std::fs::read(&file).expect("reads");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).expect("writes");
    let e = client.online_stored(&cstore, &x).expect_err("refused");
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(file.exists(), "a refused file is not removed");
    drop(client);
    let _ = h.join();
    let _ = std::fs::remove_dir_all(&sdir);
    let _ = std::fs::remove_dir_all(&cdir);
}

/// A server that runs one variant only refuses a client that asks for the other, by name.
#[test]
fn a_server_with_one_variant_refuses_the_other() {
    let (_, _, server) = model();
    let (s, c) = duplex();
    let h = std::thread::spawn(move || {
        let mut ch = s;
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        session::serve(
            &server,
            &mut ch,
            &mut rng,
            &ServeConfig {
                max_pending: 1,
                store: None,
                only: Some(Variant::ClientGarbler),
            },
        )
    });
    assert!(Client::open(c, Variant::ServerGarbler).is_err());
    let e = h.join().expect("joins").expect_err("refused");
    assert!(e.to_string().contains("client-garbler variant only"), "{e}");
}
