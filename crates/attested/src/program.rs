//! Running the model owner's own training program on the attested host.
//!
//! # The interface a program sees
//!
//! The agent starts the job's `command` with an empty environment except:
//!
//! - `PATH=/usr/local/bin:/usr/bin:/bin`;
//! - `TESSERA_JOB`: JSON `{"id", "rows", "features", "input_shape", "classes", "train"}` where
//!   `train` holds the job's training settings (`epochs`, `batch`, `lr`, `momentum`,
//!   `input_scale`, `seed`, …) for the program to use or ignore;
//! - `TESSERA_FEATURES`: a path to read the features from: `rows × features` little-endian
//!   `f32`, row-major (in Python: `array('f')` or `numpy.fromfile(path, '<f4')`);
//! - `TESSERA_LABELS`: a path to read the labels from: one byte per row;
//! - `TESSERA_MODEL_OUT`: a path to write the trained model to, either an ONNX file or JSON
//!   `{"format": "tessera-mlp", "input_scale": s, "layers": [{"weight": [[…], …], "bias":
//!   […]}, …]}`: dense layers (weight `[out][in]`) with ReLU between them, the first applied to
//!   the row's features times `s`.
//!
//! The three paths are `/proc/self/fd/N` of anonymous in-memory files (memfd) the program
//! inherits: the data set is never written to the host's disk by the agent, and the agent
//! overwrites all three with zeros and closes them when the program ends, however it ends.
//! They are created without close-on-exec so that the program inherits them; a process the
//! agent's other threads started meanwhile would inherit them too, so an agent runs one job
//! at a time and starts nothing else while it runs.
//! The working directory is `/`. Each line the program prints on stdout is reported as
//! progress; the end of its stderr is quoted when it fails. A program that exits non-zero, runs
//! past the job's `timeout_s` (it is killed), or writes no model fails the job.
//!
//! # What this does not protect
//!
//! The program is trusted with the plaintext data as the measured host is: the broker released
//! the keys because every file the job lists was measured with the job's digest and every
//! measured file is in every stakeholder's allow-list. Nothing here stops the program itself
//! from writing the data elsewhere; that is what the allow-lists vouch for. Files are measured
//! before the quote: a host that replaced a file between its measurement and its execution
//! would have to run software outside the allow-lists to do so (on a real IMA host a changed
//! file is measured again when it is next read).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tessera_model::ir::{Dense, Op};
use tessera_model::{BinOp, GraphBuilder, Tensor};
use zeroize::Zeroizing;

use crate::dataset::PlainDataset;
use crate::error::AttestedError;
use crate::policy::{JobSpec, ProgramSpec};

/// The largest model a program may write (bytes).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

fn fail(what: impl std::fmt::Display) -> AttestedError {
    AttestedError::Program(what.to_string())
}

/// An anonymous in-memory file the child inherits; zeroed and closed on drop.
struct MemFile {
    file: File,
    len: u64,
}

impl MemFile {
    fn new(name: &str, bytes: &[u8]) -> Result<MemFile, AttestedError> {
        // Without MFD_CLOEXEC: the program inherits it across exec.
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::empty())
            .map_err(|e| fail(format!("creating an in-memory file: {e}")))?;
        let mut file = File::from(fd);
        file.write_all(bytes)
            .map_err(|e| fail(format!("filling the in-memory {name}: {e}")))?;
        Ok(MemFile {
            file,
            len: bytes.len() as u64,
        })
    }

    fn path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }

    /// Everything the program left in it (at most `limit` bytes).
    fn read_all(&mut self, limit: u64) -> Result<Zeroizing<Vec<u8>>, AttestedError> {
        let len = self
            .file
            .metadata()
            .map_err(|e| fail(format!("reading the model file: {e}")))?
            .len();
        if len > limit {
            return Err(fail(format!(
                "the program wrote a {len}-byte model, more than the {limit}-byte limit"
            )));
        }
        self.len = self.len.max(len);
        let mut out = Zeroizing::new(Vec::with_capacity(len as usize));
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| (&self.file).take(limit).read_to_end(&mut out))
            .map_err(|e| fail(format!("reading the model file: {e}")))?;
        Ok(out)
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let len = self
            .file
            .metadata()
            .map_or(self.len, |m| m.len().max(self.len));
        if self.file.seek(SeekFrom::Start(0)).is_ok() {
            let zeros = vec![0u8; 1 << 16];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                if self.file.write_all(&zeros[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
        }
        let _ = self.file.set_len(0);
    }
}

/// Runs `program` for `job` on `data`; reports progress lines; returns the trained model as
/// ONNX bytes.
pub fn run_program(
    job: &JobSpec,
    program: &ProgramSpec,
    data: &PlainDataset,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<u8>, AttestedError> {
    let features: Zeroizing<Vec<u8>> =
        Zeroizing::new(data.features.iter().flat_map(|v| v.to_le_bytes()).collect());
    let feats = MemFile::new("tessera-features", &features)?;
    drop(features);
    let labels = MemFile::new("tessera-labels", &data.labels)?;
    let mut model = MemFile::new("tessera-model", &[])?;
    let meta = serde_json::json!({
        "id": job.id,
        "rows": data.rows(),
        "features": data.features_per_row(),
        "input_shape": data.input_shape,
        "classes": data.classes,
        "train": job.train,
    });
    let (exe, args) = program
        .command
        .split_first()
        .ok_or_else(|| fail("the job's command is empty"))?;
    let mut child = Command::new(exe)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TESSERA_JOB", meta.to_string())
        .env("TESSERA_FEATURES", feats.path())
        .env("TESSERA_LABELS", labels.path())
        .env("TESSERA_MODEL_OUT", model.path())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("starting {exe}: {e}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    // The readers are not joined: a process the program left behind may hold its pipes open,
    // and the agent must not wait on it. Once the program has ended they get a short grace to
    // deliver what it wrote.
    if let Some(o) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(o).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let (etx, erx) = mpsc::channel::<String>();
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(buf.get(..n).unwrap_or_default());
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            let _ = etx.send(String::from_utf8_lossy(&tail).trim().to_string());
        });
    }
    let t0 = Instant::now();
    let limit = Duration::from_secs(program.timeout_s);
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            progress(&line);
        }
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if t0.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(fail(format!(
                    "{exe} ran past the job's timeout of {} s and was killed",
                    program.timeout_s
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(fail(format!("waiting for {exe}: {e}"))),
        }
    };
    let grace = Instant::now() + Duration::from_secs(2);
    while let Ok(line) = rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
        progress(&line);
    }
    let stderr = erx
        .recv_timeout(grace.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    let status = status?;
    if !status.success() {
        let tail = stderr.lines().rev().take(8).collect::<Vec<_>>();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(fail(format!(
            "{exe} exited with {status}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("; its stderr ended with:\n{}", tail.join("\n"))
            }
        )));
    }
    let bytes = model.read_all(MAX_MODEL_BYTES)?;
    drop((feats, labels));
    if bytes.is_empty() {
        return Err(fail(format!(
            "{exe} exited successfully but wrote no model to TESSERA_MODEL_OUT"
        )));
    }
    let onnx = if bytes.first() == Some(&b'{') {
        mlp_to_onnx(&bytes, data)?
    } else {
        bytes.to_vec()
    };
    tessera_model::import::import_model(&onnx, &Default::default()).map_err(|e| {
        fail(format!(
            "the program's model is not a model tessera can run: {e}"
        ))
    })?;
    Ok(onnx)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpFile {
    format: String,
    #[serde(default = "one")]
    input_scale: f32,
    layers: Vec<MlpLayer>,
}

fn one() -> f32 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpLayer {
    weight: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

/// The JSON dense network as ONNX: a multiply by the input scale, then dense layers with ReLU
/// between them; every size checked against the data set.
fn mlp_to_onnx(text: &[u8], data: &PlainDataset) -> Result<Vec<u8>, AttestedError> {
    let m: MlpFile = serde_json::from_slice(text)
        .map_err(|e| fail(format!("the program's JSON model does not parse: {e}")))?;
    if m.format != "tessera-mlp" {
        return Err(fail(format!(
            "the program's JSON model has format {:?}, not \"tessera-mlp\"",
            m.format
        )));
    }
    if m.layers.is_empty() || !m.input_scale.is_finite() {
        return Err(fail(
            "the program's JSON model has no layers or a non-finite input_scale",
        ));
    }
    let bad = |what: String| fail(format!("the program's JSON model: {what}"));
    let mut b = GraphBuilder::new("program-mlp", 0);
    let inp = b
        .input("input", data.input_shape.clone())
        .map_err(|e| bad(e.to_string()))?;
    let scaled = b
        .push(
            "normalize",
            Op::Binary {
                op: BinOp::Mul,
                constant: Some(Tensor::new(vec![], vec![m.input_scale]).map_err(fail)?),
                constant_first: false,
            },
            vec![inp],
            "",
        )
        .map_err(|e| bad(e.to_string()))?;
    let mut v = b.flatten(scaled).map_err(|e| bad(e.to_string()))?;
    let mut fan_in = data.features_per_row();
    let n = m.layers.len();
    for (i, l) in m.layers.into_iter().enumerate() {
        let out = l.weight.len();
        if out == 0 || l.bias.len() != out || l.weight.iter().any(|r| r.len() != fan_in) {
            return Err(bad(format!(
                "layer {i} must have a [out][{fan_in}] weight and a bias of out values"
            )));
        }
        if i + 1 == n && out != data.classes {
            return Err(bad(format!(
                "the last layer has {out} outputs, the data set {} classes",
                data.classes
            )));
        }
        let w: Vec<f32> = l.weight.into_iter().flatten().collect();
        if w.iter().chain(&l.bias).any(|x| !x.is_finite()) {
            return Err(bad(format!("layer {i} holds a non-finite number")));
        }
        v = b
            .push(
                &format!("fc{i}"),
                Op::Dense(Dense {
                    weight: Tensor::new(vec![out, fan_in], w).map_err(fail)?,
                    bias: Some(Tensor::vector(l.bias)),
                    weight_scales: None,
                }),
                vec![v],
                "",
            )
            .map_err(|e| bad(e.to_string()))?;
        if i + 1 < n {
            v = b.relu(v).map_err(|e| bad(e.to_string()))?;
        }
        fan_in = out;
    }
    let g = b.finish(vec![v]).map_err(|e| bad(e.to_string()))?;
    tessera_model::export::export_model(&g)
        .map_err(|e| fail(format!("exporting the program's model: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Network, Output, Stakeholder, TrainSpec};

    fn job() -> JobSpec {
        JobSpec {
            id: "p".into(),
            dataset: "d".into(),
            train: TrainSpec {
                network: Network::Mlp,
                width: 1,
                hidden: Vec::new(),
                shift: 0,
                epochs: 1,
                batch: 1,
                lr: 0.1,
                lr_final: None,
                momentum: 0.0,
                input_scale: 1.0,
                seed: 0,
            },
            outputs: [
                (Output::TrainedModel, Stakeholder::ModelOwner),
                (Output::Predictions, Stakeholder::DataOwner),
            ]
            .into_iter()
            .collect(),
            program: None,
        }
    }

    fn sh(script: &str, timeout_s: u64) -> ProgramSpec {
        ProgramSpec {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            files: [("/bin/sh".to_string(), "0".repeat(64))]
                .into_iter()
                .collect(),
            timeout_s,
        }
    }

    fn data() -> PlainDataset {
        PlainDataset::new(
            "d",
            vec![1, 2],
            2,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            vec![0, 1, 0],
        )
        .unwrap()
    }

    fn run(script: &str, timeout_s: u64) -> (Result<Vec<u8>, AttestedError>, Vec<String>) {
        let mut lines = Vec::new();
        let r = run_program(&job(), &sh(script, timeout_s), &data(), &mut |l| {
            lines.push(l.to_string())
        });
        (r, lines)
    }

    fn err(script: &str, timeout_s: u64) -> String {
        match run(script, timeout_s).0 {
            Ok(_) => panic!("{script} succeeded"),
            Err(e) => e.to_string(),
        }
    }

    /// The program sees the documented interface (its sizes checked here by the shell) and a
    /// JSON dense model comes back as ONNX; its stdout lines are progress.
    #[test]
    fn a_program_reads_the_data_and_returns_a_model() {
        let script = r#"
            test "$(wc -c < "$TESSERA_FEATURES")" -eq 24 || exit 7
            test "$(wc -c < "$TESSERA_LABELS")" -eq 3 || exit 8
            case "$TESSERA_JOB" in *'"rows":3'*) ;; *) exit 9 ;; esac
            echo "epoch 1: done"
            printf '{"format":"tessera-mlp","input_scale":0.5,"layers":[{"weight":[[1,0],[0,1]],"bias":[0,0]}]}' > "$TESSERA_MODEL_OUT"
        "#;
        let (r, lines) = run(script, 30);
        let onnx = r.unwrap();
        assert_eq!(lines, vec!["epoch 1: done".to_string()]);
        let g = tessera_model::import::import_model(&onnx, &Default::default()).unwrap();
        let x = Tensor::new(vec![1, 2], vec![2.0, 4.0]).unwrap();
        let y = tessera_engine::run_f32(&g, &[x]).unwrap();
        assert_eq!(y[0].data(), &[1.0, 2.0]);
    }

    /// Every way a program can fail ends the job with what happened.
    #[test]
    fn failures_are_reported() {
        let e = err("echo 'something broke' >&2; exit 3", 30);
        assert!(
            e.contains("exited with") && e.contains("something broke"),
            "{e}"
        );
        let e = err("sleep 5", 1);
        assert!(e.contains("timeout of 1 s and was killed"), "{e}");
        let e = err("exit 0", 30);
        assert!(e.contains("wrote no model"), "{e}");
        let e = err(
            r#"printf '{"format":"other","layers":[]}' > "$TESSERA_MODEL_OUT""#,
            30,
        );
        assert!(e.contains("not \"tessera-mlp\""), "{e}");
        let e = err(
            r#"printf '{"format":"tessera-mlp","layers":[{"weight":[[1,2,3]],"bias":[0]}]}' > "$TESSERA_MODEL_OUT""#,
            30,
        );
        assert!(e.contains("layer 0 must have a [out][2] weight"), "{e}");
        let e = err(r#"printf 'not onnx' > "$TESSERA_MODEL_OUT""#, 30);
        assert!(e.contains("not a model tessera can run"), "{e}");
    }
}
