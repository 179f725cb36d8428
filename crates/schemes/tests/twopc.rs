//! `2pc` through the common scheme interface: bit-exact with the v2 reference, with its offline
//! and online bytes and the client's stored garbled material in the cost report.

use std::time::Duration;
use tessera_engine::Semantics;
use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_model::builders;
use tessera_schemes::{Scheme, TwoPc};
use tessera_twopc::session::Variant;

#[test]
fn two_pc_matches_v2_through_the_scheme_interface() {
    let g = builders::dash_b(5).expect("dash-b");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 8, 1).expect("inputs");
    let calibration = Calibration::from_inputs(&g, &xs, "generated").expect("calibrates");
    let cfg = QintConfig::default();
    let reference = IntModel::new(&g, cfg, &calibration).expect("lowers");
    let sem = Semantics::V2 { cfg, calibration };
    for v in [Variant::ServerGarbler, Variant::ClientGarbler] {
        let mut s = TwoPc::with_variant(&g, &sem, v).expect("2pc");
        for x in default_calibration_inputs(&g, 0.0, 1.0, 2, 3).expect("inputs") {
            let r = s.infer(&x).expect("infers");
            assert_eq!(r.exact, reference.run(&x).expect("reference"), "{v:?}");
            let c = &r.cost;
            assert!(c.stored_client > 0 && c.stored_server > 0 && c.bytes_up > 0);
            assert!(c.offline_up > 0 && c.offline_down > 0 && c.offline > Duration::ZERO);
            assert_eq!(
                c.waited, c.offline,
                "embedded: the offline phase runs first"
            );
            assert_eq!(c.rounds, 6, "one online round per segment");
            assert_eq!(c.trusted_share(), None, "no trusted party");
            // The garbled tables sit with the evaluator: the client in server-garbler, the
            // server in client-garbler (CryptoNite's storage shift).
            match v {
                Variant::ServerGarbler => assert!(c.stored_client > c.stored_server),
                Variant::ClientGarbler => assert!(c.stored_server > c.stored_client),
            }
        }
    }
}

#[test]
fn two_pc_refuses_pow2_and_what_it_cannot_run_by_name() {
    let g = builders::dash_b(5).expect("dash-b");
    let e = TwoPc::new(&g, &Semantics::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("semantics v2"), "{e}");
    let g = builders::shuffle_int8(8, 4, 3).expect("shuffle");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 8, 1).expect("inputs");
    let calibration = Calibration::from_inputs(&g, &xs, "generated").expect("calibrates");
    let e = tessera_schemes::check(
        "2pc",
        &g,
        &Semantics::V2 {
            cfg: QintConfig::default(),
            calibration,
        },
    )
    .expect_err("concatenations and transposes are not in 2pc yet");
    assert!(e.to_string().contains("cannot run node"), "{e}");
}
