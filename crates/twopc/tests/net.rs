//! 2pc over TCP and TLS with the runtime's channel: both variants bit-exact; a session that
//! sends a malformed message is ended with an error naming it while another session on the same
//! server completes; a client that pins another certificate never gets to talk.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::TcpListener;
use std::sync::Arc;
use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_model::builders;
use tessera_mpc::ot::Channel;
use tessera_runtime::ChannelOptions;
use tessera_runtime::tls::Identity;
use tessera_twopc::model::Cut;
use tessera_twopc::net::{ServeOptions, connect, serve};
use tessera_twopc::protocol::ServerModel;
use tessera_twopc::session::Variant;

#[test]
fn sessions_over_tls() {
    let g = builders::dash_b(6).expect("dash-b");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 8, 5).expect("inputs");
    let cal = Calibration::from_inputs(&g, &xs, "test").expect("calibrates");
    let m = IntModel::new(&g, QintConfig::default(), &cal).expect("lowers");
    let server = Arc::new(ServerModel::new(&Cut::new(m.clone()).expect("cut")).expect("server"));
    let id = Arc::new(Identity::generate().expect("identity"));
    let cert = id.cert().to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let h = serve(listener, server, id, ServeOptions::default()).expect("serves");
    let addr = h.addr().to_string();
    let opts = ChannelOptions::default();

    // A session that sends garbage where a control message belongs, opened first and left
    // waiting while a good session runs.
    let mut bad = connect(&addr, &cert, Variant::ServerGarbler, opts).expect("opens");
    for (k, v) in [Variant::ServerGarbler, Variant::ClientGarbler]
        .into_iter()
        .enumerate()
    {
        let mut c = connect(&addr, &cert, v, opts).expect("opens");
        let mut rng = ChaCha20Rng::seed_from_u64(k as u64);
        let x = &xs[k];
        let xq = c
            .public()
            .model
            .quantize(x.data(), x.shape())
            .expect("quantizes");
        let mut cost = c.offline(&mut rng).expect("offline");
        let (y, online) = c.online(&xq).expect("online");
        cost.add_online(&online);
        c.close().expect("bye");
        assert_eq!(y, m.run(x).expect("reference").data(), "{v:?}");
        assert!(cost.server_stored > 0 && cost.client_stored > 0);
    }
    Channel::send(bad.channel(), vec![0xee; 5]).expect("sends");
    let e = Channel::recv(bad.channel()).expect_err("the server ends the session");
    assert!(e.to_string().contains("do not decode as one"), "{e}");

    // A client pinning another certificate is refused in the TLS handshake.
    let other = Identity::generate().expect("identity");
    let e = connect(&addr, other.cert(), Variant::ServerGarbler, opts)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("not the one pinned"), "{e}");
}
