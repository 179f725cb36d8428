//! Writes a starting corpus for every target under DIR/<target>/: valid encodings made with
//! the project's own writers, plus the real samples in ../shared/data when it is present.
//! Usage: seeds DIR [SHARED_DATA]

use std::path::{Path, PathBuf};

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)
}

fn copy(dir: &Path, target: &str, src: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(src)?;
    // AFL++ works best on small inputs; skip the big ones.
    if bytes.len() <= 64 << 10 {
        let name = src.to_string_lossy().replace(['/', '.'], "_");
        put(dir, target, &name, &bytes)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: seeds DIR [SHARED_DATA]")?);
    let shared = args.next().map(PathBuf::from);

    // onnx: a literature network exported by the project.
    for (name, seed) in [("dash-a", 1u64), ("dash-b", 1)] {
        let spec = tessera_model::builders::find(name).ok_or("builder missing")?;
        let g = (spec.build)(seed)?;
        put(
            &dir,
            "onnx",
            name,
            &tessera_model::export::export_model(&g)?,
        )?;
    }

    // frame: a few frames of each kind back to back.
    let mut frames = Vec::new();
    for (seq, payload) in [(0u32, &b"hello"[..]), (1, &[0u8; 40][..]), (2, &b""[..])] {
        tessera_runtime::frame::encode_frame(
            tessera_runtime::frame::FrameKind::Message,
            seq,
            payload,
            &mut frames,
        );
    }
    put(&dir, "frame", "three-frames", &frames)?;

    // evidence: simulated evidence in its container.
    let tmp = std::env::temp_dir().join(format!("tessera-fuzz-seeds-{}", std::process::id()));
    let key = tessera_attest::sim::PlatformKey::load_or_create(&tmp.join("platform.key"))?;
    let e = key.attest(&tessera_attest::measure(&[b"seed"]), &[7; 64]);
    put(&dir, "evidence", "simulated", &e.encode())?;
    let _ = std::fs::remove_dir_all(&tmp);

    // material: a labels stream and an evaluation stream with one tables chunk.
    let m = tessera_garble::Modulus::new(3)?;
    let t = tessera_garble::LabelTensor::from_digits(m, &[2], vec![1; 2 * m.digits()])?;
    for kind in [
        tessera_garble::MaterialKind::Labels,
        tessera_garble::MaterialKind::Evaluation,
    ] {
        let header = tessera_garble::StreamHeader {
            kind,
            garbling_id: [9; 16],
            first_gate: 0,
        };
        let mut w = tessera_garble::StreamWriter::new(Vec::new(), &header)?;
        w.write_labels(&t)?;
        put(&dir, "material", &format!("{kind:?}"), &w.finish()?)?;
    }

    // ima: a tiny ASCII log; the real logs and quotes from the shared data.
    put(
        &dir,
        "ima",
        "ascii",
        b"10 0000000000000000000000000000000000000000 ima-ng sha256:0000000000000000000000000000000000000000000000000000000000000000 boot_aggregate\n",
    )?;
    if let Some(s) = shared {
        for (target, rel) in [
            ("onnx", "onnx-mnist-8/model.onnx"),
            ("onnx", "onnx-mnist-cntk-2018/model.onnx"),
            ("evidence", "amd-sev-snp/report_milan.bin"),
            ("evidence", "intel-dcap-quotes/sgx_quote"),
            ("evidence", "intel-dcap-quotes/tdx_quote"),
            ("ima", "ima-tpm/ibmtss/sha1.log"),
            ("ima", "ima-tpm/ibmtss/sha256.log"),
            ("ima", "ima-tpm/ibmtss/imatest.log"),
        ] {
            let p = s.join(rel);
            if p.exists() {
                copy(&dir, target, &p)?;
            }
        }
    }
    Ok(())
}
