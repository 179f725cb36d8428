//! Loading inputs: built-ins by name and by path, and typed errors (never panics) on bad files.

use proptest::prelude::*;
use tessera_sim::{CostsFile, Deployment, Profile, SimError, load_costs};

const GOOD: &str = r#"{
  "name": "t", "client_speed": 1.0, "server_speed": 2.0,
  "uplink_bps": 1e8, "downlink_bps": 1e8
}"#;

fn dir() -> String {
    format!("{}/profiles", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn builtins_load_by_name_and_by_path() {
    let by_name = Profile::load("cryptonite").unwrap();
    let with_ext = Profile::load("cryptonite.json").unwrap();
    let by_path = Profile::load(&format!("{}/cryptonite.json", dir())).unwrap();
    assert_eq!(by_name, by_path);
    assert_eq!(by_name, with_ext);
    assert!(by_name.deployment.is_some());
    let costs = CostsFile::load("resnet18-tinyimagenet-cryptonite").unwrap();
    let path = format!("{}/resnet18-tinyimagenet-cryptonite.json", dir());
    assert_eq!(costs, CostsFile::load(&path).unwrap());
    assert!(costs.scheme("server-garbler").is_some());
    assert!(costs.scheme("client-garbler").is_some());
    assert_eq!(load_costs(&path).unwrap().len(), 2);
}

#[test]
fn defaults_apply() {
    let p = Profile::from_json(GOOD, "good.json").unwrap();
    assert_eq!((p.gpu_speedup, p.tee_slowdown, p.rtt_s), (1.0, 1.0, 0.0));
    assert_eq!(p.client_storage_bytes, None);
}

#[test]
fn missing_file_is_io_error_naming_builtins() {
    let err = Profile::load("/nonexistent/profile.json").unwrap_err();
    assert!(matches!(err, SimError::Io { .. }));
    assert!(err.to_string().contains("cryptonite"), "{err}");
    let err = Profile::load("no-such-builtin").unwrap_err();
    assert!(matches!(err, SimError::Io { .. }));
}

#[test]
fn malformed_json_is_typed_error() {
    for (text, why) in [
        ("{", "truncated"),
        ("not json", "garbage"),
        ("[]", "wrong top-level type"),
        (r#"{"name": "t"}"#, "missing fields"),
        (
            r#"{"name": "t", "client_speed": "fast", "server_speed": 1, "uplink_bps": 1, "downlink_bps": 1}"#,
            "wrong type",
        ),
        (
            r#"{"name": "t", "client_speed": 1, "server_speed": 1, "uplink_bps": 1, "downlink_bps": 1, "uplink": 3}"#,
            "unknown field",
        ),
        (
            r#"{"name": "t", "client_speed": 1e999, "server_speed": 1, "uplink_bps": 1, "downlink_bps": 1}"#,
            "overflow",
        ),
    ] {
        let err = Profile::from_json(text, "bad.json").unwrap_err();
        assert!(matches!(err, SimError::Json { .. }), "{why}: {err:?}");
        assert!(err.to_string().contains("bad.json"), "{why}: {err}");
    }
}

#[test]
fn out_of_range_factor_names_field_and_file() {
    for (field, value) in [
        ("client_speed", "0"),
        ("server_speed", "-2"),
        ("gpu_speedup", "0.0"),
        ("tee_slowdown", "-1"),
        ("uplink_bps", "0"),
        ("downlink_bps", "-5e6"),
        ("rtt_s", "-0.1"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        let err = Profile::from_json(&v.to_string(), "hw.json").unwrap_err();
        match &err {
            SimError::InvalidProfile { file, field: f, .. } => {
                assert_eq!((file.as_str(), *f), ("hw.json", field));
            }
            other => panic!("{field}: expected InvalidProfile, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(field) && msg.contains("hw.json"), "{msg}");
    }
}

#[test]
fn bad_costs_and_deployments_are_typed_errors() {
    let costs = r#"[{"scheme": "x", "offline": null,
        "online": {"client_s": -1, "server_s": 0, "up_bytes": 0, "down_bytes": 0},
        "client_stored_bytes": 0, "server_stored_bytes": 0, "offline_producer": "None"}]"#;
    let err = CostsFile::from_json(costs, "c.json").unwrap_err();
    assert!(
        matches!(&err, SimError::InvalidCosts { field, .. } if field == "online.client_s"),
        "{err:?}"
    );
    let costs = costs.replace("-1", "1").replace("\"None\"", "\"Joint\"");
    let err = CostsFile::from_json(&costs, "c.json").unwrap_err();
    assert!(
        matches!(&err, SimError::InvalidCosts { field, .. } if field == "offline_producer"),
        "{err:?}"
    );
    let dep = r#"{"arrival_rates": [0.1, 0], "requests": 10, "seed": 1}"#;
    let err = Deployment::from_json(dep, "d.json").unwrap_err();
    assert!(matches!(
        err,
        SimError::InvalidDeployment {
            field: "arrival_rates",
            ..
        }
    ));
    let dep = r#"{"arrival_rates": [0.1], "requests": 10, "warmup": 10, "seed": 1}"#;
    let err = Deployment::from_json(dep, "d.json").unwrap_err();
    assert!(matches!(
        err,
        SimError::InvalidDeployment {
            field: "requests",
            ..
        }
    ));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = Profile::from_json(&text, "fuzz.json");
        let _ = CostsFile::from_json(&text, "fuzz.json");
        let _ = Deployment::from_json(&text, "fuzz.json");
    }

    #[test]
    fn arbitrary_numbers_never_panic(
        speeds in proptest::collection::vec(prop_oneof![
            any::<f64>(), Just(0.0), Just(-1.0), Just(1e308)], 5),
    ) {
        let text = format!(
            r#"{{"name": "p", "client_speed": {}, "server_speed": {}, "gpu_speedup": {},
                "uplink_bps": {}, "downlink_bps": {}}}"#,
            speeds[0], speeds[1], speeds[2], speeds[3], speeds[4]
        );
        if let Ok(p) = Profile::from_json(&text, "fuzz.json") {
            prop_assert!(speeds.iter().all(|s| s.is_finite() && *s > 0.0));
            prop_assert!(p.client_speed > 0.0);
        }
    }
}
