//! The fuzz targets' bodies: each takes untrusted bytes exactly as tessera receives them and
//! must return, never panic, allocate without bound or loop for long. `scripts/fuzz.sh` builds
//! one AFL++ binary per target (`src/bin/*.rs`) and runs it. A finding is fixed in the crate it
//! concerns, with a regression test there (so CI, which never builds this crate, keeps it fixed).

use std::time::{Duration, UNIX_EPOCH};

/// ONNX import under a small budget, then both engines on a small input.
pub fn onnx(data: &[u8]) {
    let opts = tessera_model::ImportOptions {
        limits: tessera_model::ImportLimits::default()
            .with_max_memory(64 << 20)
            .with_max_macs(20_000_000),
        ..Default::default()
    };
    let Ok(g) = tessera_model::import_model(data, &opts) else {
        return;
    };
    let inputs: Vec<tessera_model::Tensor> = g
        .inputs
        .iter()
        .filter_map(|&i| {
            let shape = g.shape(i).to_vec();
            let n: usize = shape.iter().product();
            let v = (0..n).map(|j| ((j % 17) as f32 - 8.0) / 8.0).collect();
            tessera_model::Tensor::new(shape, v).ok()
        })
        .collect();
    let _ = tessera_engine::run_f32(&g, &inputs);
    if let Ok(q) = tessera_engine::QuantModel::new(&g, tessera_engine::QuantConfig::default()) {
        let _ = q.run(&inputs);
    }
    if let [x] = inputs.as_slice()
        && let Ok(c) =
            tessera_engine::qint::Calibration::from_inputs(&g, std::slice::from_ref(x), "fuzz")
        && let Ok(m) = tessera_engine::qint::IntModel::new(&g, Default::default(), &c)
    {
        let _ = m.run(x);
    }
}

/// The frame decoder, frame after frame, as a peer's byte stream arrives.
pub fn frame(data: &[u8]) {
    let mut r = data;
    for _ in 0..64 {
        if tessera_runtime::frame::read_frame(&mut r, 1 << 20).is_err() {
            return;
        }
    }
}

/// Evidence: the container, raw reports/quotes (detected by shape) and their verification
/// against a permissive policy at the samples' pinned time.
pub fn evidence(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(1_795_132_800); // 2026-11-20
    let mut policy = tessera_attest::Policy {
        accepted_tcb_statuses: tessera_attest::KNOWN_TCB_STATUSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..tessera_attest::Policy::default()
    };
    policy.allow_simulated = true;
    if let Ok(e) = tessera_attest::Evidence::decode(data) {
        let _ = tessera_attest::verify(&e, &policy, now);
    }
    if let Ok(e) = tessera_attest::cli::detect(data) {
        let _ = tessera_attest::verify(&e, &policy, now);
    }
}

/// IMA measurement logs (binary or ASCII) and Keylime runtime policies.
pub fn ima(data: &[u8]) {
    let _ = tessera_tpm::ima::ImaLog::parse_any(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tessera_tpm::ima::ImaLog::parse_ascii(text);
        let _ = tessera_tpm::policy::RuntimePolicy::from_keylime_json(text);
    }
}

/// The garbled-material stream reader, chunk after chunk, and the label messages.
pub fn material(data: &[u8]) {
    if let Ok(mut r) = tessera_garble::StreamReader::new(data) {
        while let Ok(Some(_)) = r.next_chunk() {}
    }
    let _ = tessera_garble::InputLabels::from_bytes(data);
    let _ = tessera_garble::OutputLabels::from_bytes(data);
}

/// Every target by name, for the binaries and the regression test.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("onnx", onnx),
    ("frame", frame),
    ("evidence", evidence),
    ("ima", ima),
    ("material", material),
];
