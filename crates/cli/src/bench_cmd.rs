//! `tessera bench`: the reference engines' speed against the GEMM ceiling, and per scheme
//! (`--gc`, `--lhe`, `--2pc`) the costs of private inference on literature networks.

use crate::table::Table;
use crate::{CliError, Result, human, print_json, resolve_model};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera_engine::gemm::{View, dgemm, sgemm};
use tessera_engine::quant::{QuantConfig, QuantModel};
use tessera_engine::{FloatModel, Semantics};
use tessera_model::stats::stats;
use tessera_model::{Graph, ImportOptions, load_model};
use tessera_schemes::{Gc, GcOptions, Scheme};

/// Time the reference engines (release builds only give meaningful figures).
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// mnist-8 ONNX file (skipped when absent).
    #[arg(long, default_value = "../shared/data/onnx-mnist-8/model.onnx")]
    mnist8: PathBuf,
    /// An int8 ONNX model timed under v2 with its own scales (skipped when absent).
    #[arg(
        long,
        default_value = "../shared/data/onnx-shufflenet-v2-12-int8/model.onnx"
    )]
    int8: PathBuf,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Benchmark the gc scheme on these networks instead (comma-separated: mnist-8 or an
    /// ONNX path, dash-a..dash-d, f-small, f): garbling time, garbled bytes, online
    /// latency and bytes.
    #[arg(long, value_delimiter = ',')]
    gc: Vec<String>,
    /// Benchmark the lhe scheme on these networks instead (comma-separated: mnist-8,
    /// dash-a..dash-d, f-small, …): end to end and per layer — server and enclave time,
    /// bytes, stored bytes, HE operation counts — with tee and gc on the same input.
    #[arg(long, value_delimiter = ',')]
    lhe: Vec<String>,
    /// Benchmark the 2pc scheme on these networks instead (comma-separated: mnist-8,
    /// dash-a..dash-d, resnet32-32, …): both variants' offline and online time and bytes,
    /// stored bytes on each side, per activation, with tee, lhe and gc on the same input.
    #[arg(long = "2pc", value_delimiter = ',')]
    two_pc: Vec<String>,
    /// Fractional bits for --gc (pow2).
    #[arg(long, default_value_t = 4)]
    gc_frac_bits: u32,
    /// Integer semantics for --gc: pow2 (one scale 2^f, --gc-frac-bits) or v2 (w8a8, the
    /// default multiplier bits, calibrated on 16 generated inputs over the input range, as
    /// `run` does without --calibrate).
    #[arg(long, default_value = "pow2", value_parser = ["pow2", "v2"])]
    gc_semantics: String,
    /// --gc, NOT SOUND (rows are labelled "calibrated, not sound"): choose k from the widths
    /// the benchmark input actually reaches plus this many bits of margin, instead of the
    /// worst case for every input in range.
    #[arg(long)]
    gc_measured_margin: Option<u32>,
    /// Also time onnxruntime (the Python wheel, CPU, 2 intra-op threads; `pip install
    /// onnxruntime numpy`) on the same three networks in the same run, right after tessera,
    /// and give each engine's ratio to it (the engine-speed targets are within 1.5×).
    #[arg(long)]
    onnxruntime: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// gc on the same input as another scheme's benchmark: the median online latency over up to
/// three inferences (one garbling each, none overlapped) and the median garbling time, in ms.
pub(crate) fn gc_beside(
    g: &Graph,
    sem: &Semantics,
    x: &tessera_model::Tensor,
    reps: usize,
) -> std::result::Result<(f64, f64), tessera_schemes::SchemeError> {
    let mut gc = Gc::new(
        g,
        GcOptions {
            semantics: sem.clone(),
            pool: 1,
            overlap: false,
            ..GcOptions::default()
        },
    )?;
    let mut on = Vec::new();
    for _ in 0..reps.clamp(1, 3) {
        gc.wait_ready(std::time::Duration::from_secs(7200))?;
        on.push(gc.infer(x)?.cost.latency.as_secs_f64() * 1e3);
    }
    Ok((tessera_schemes::median(&mut on), gc.stats().garble_ms))
}

pub(crate) fn main(a: &BenchArgs) -> Result<()> {
    if !a.two_pc.is_empty() {
        crate::twopc_cmd::bench_2pc(&a.two_pc, &a.mnist8, a.reps, a.json)
    } else if !a.lhe.is_empty() {
        crate::lhe_cmd::bench_lhe(&a.lhe, &a.mnist8, a.reps, a.json)
    } else if a.gc.is_empty() {
        bench(&a.mnist8, &a.int8, a.reps, a.onnxruntime, a.json)
    } else {
        bench_gc(
            &a.gc,
            &a.mnist8,
            a.reps,
            a.gc_frac_bits,
            a.gc_semantics == "v2",
            a.gc_measured_margin,
            a.json,
        )
    }
}

#[derive(Serialize)]
pub(crate) struct BenchRow {
    what: String,
    engine: String,
    median_ms: f64,
    per_second: f64,
    /// Multiply-accumulates per second (billions).
    gmacs: f64,
    /// gmacs over the raw GEMM ceiling of the same precision measured in the same run.
    ratio_to_gemm: f64,
    /// The median over onnxruntime's on the same workload in the same run (`--onnxruntime`).
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_onnxruntime: Option<f64>,
}

/// The onnxruntime timing script (`scripts/refs/ort_bench.py`), run by `--onnxruntime`.
const ORT_SCRIPT: &str = include_str!("../../../scripts/refs/ort_bench.py");

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_at(path: &Path, source: std::io::Error) -> CliError {
    CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs [`ORT_SCRIPT`] on the ONNX files in `dir`: per file stem, onnxruntime's version and
/// median ms of `reps` runs.
fn time_onnxruntime(dir: &Path, reps: usize) -> Result<Vec<(String, String, f64)>> {
    let script = dir.join("ort_bench.py");
    std::fs::write(&script, ORT_SCRIPT).map_err(|source| io_at(&script, source))?;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir)
        .arg(reps.max(1).to_string())
        .output()
        .map_err(|e| {
            CliError::Usage(format!(
                "--onnxruntime runs python3, which could not start ({e}); install Python 3 \
                 and `pip install onnxruntime numpy`, or leave --onnxruntime out"
            ))
        })?;
    if !out.status.success() {
        return Err(CliError::Usage(format!(
            "--onnxruntime: the timing script failed (is the onnxruntime wheel installed? \
             `pip install onnxruntime numpy`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Lines "NAME: onnxruntime VERSION float, median MS ms of N".
    let timed: Vec<(String, String, f64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": onnxruntime ")?;
            let (version, rest) = rest.split_once(' ')?;
            let ms = rest.split_once("median ")?.1.split_once(" ms")?.0;
            Some((name.to_string(), version.to_string(), ms.parse().ok()?))
        })
        .collect();
    if timed.is_empty() {
        return Err(CliError::Usage(format!(
            "--onnxruntime: the timing script printed no timing line; its output was: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(timed)
}

pub(crate) fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(tessera_schemes::median(&mut v))
}

#[derive(Serialize)]
pub(crate) struct GcBenchRow {
    network: String,
    primes: usize,
    /// "sound", or "calibrated, not sound" when k came from measured widths.
    range: String,
    relus: u64,
    garble_ms: f64,
    garbled_bytes: u64,
    online_ms: f64,
    /// Of the online time, the worker's evaluation (median).
    worker_eval_ms: f64,
    online_bytes_up: u64,
    online_bytes_down: u64,
    /// (inputs + outputs) × k × 16 B, DESIGN §2.1's estimate of online bytes.
    online_bytes_formula: u64,
    enclave_bytes_kept: u64,
    rounds: u64,
    exact: bool,
    threads: usize,
}

pub(crate) fn bench_gc(
    nets: &[String],
    mnist8: &Path,
    reps: usize,
    f: u32,
    v2: bool,
    measured_margin: Option<u32>,
    json: bool,
) -> Result<()> {
    if v2 && measured_margin.is_some() {
        return Err(CliError::Usage(
            "--gc-measured-margin is a pow2 calibration; v2's k is sound from its saturated \
             intervals, so leave it out with --gc-semantics v2"
                .into(),
        ));
    }
    let threads = rayon::current_num_threads();
    let cfg = QuantConfig {
        frac_bits: f,
        max_bits: None,
    };
    let mut rows = Vec::new();
    for name in nets {
        let (g, x, range) = if name == "mnist-8" {
            if !mnist8.exists() {
                eprintln!("skipping mnist-8: {} not found", mnist8.display());
                continue;
            }
            let g = load_model(mnist8, &ImportOptions::default())?;
            let dir = mnist8.parent().unwrap_or(Path::new("."));
            let x = tessera_data::load_pb(&dir.join("test_data_set_0/input_0.pb"))?;
            (g, x, 255.0)
        } else {
            let g = resolve_model(name, &ImportOptions::default())?;
            let shape = g
                .inputs
                .first()
                .map(|&v| g.shape(v).to_vec())
                .ok_or_else(|| CliError::Usage(format!("{name} has no input")))?;
            let n: usize = shape.iter().product();
            let x = tessera_model::Tensor::new(
                shape,
                (0..n)
                    .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                    .collect(),
            )?;
            (g, x, 1.0)
        };
        if !json {
            eprintln!("gc bench: {name}: compiling and garbling…");
        }
        let calibration = match measured_margin {
            Some(m) => Some(tessera_gc::Calibration {
                widths: QuantModel::new(&g, cfg)?
                    .run(std::slice::from_ref(&x))?
                    .widths,
                margin_bits: m,
                source: "the benchmark input".into(),
            }),
            None => None,
        };
        let semantics = if v2 {
            let xs = tessera_engine::qint::default_calibration_inputs(&g, 0.0, range, 16, 1)?;
            let source = format!("16 generated inputs uniform in [0, {range}]");
            Semantics::V2 {
                cfg: tessera_engine::qint::QintConfig::default(),
                calibration: tessera_engine::qint::Calibration::from_inputs(&g, &xs, source)?,
            }
        } else {
            Semantics::Pow2(cfg)
        };
        let reference = tessera_engine::ExactModel::new(&g, &semantics)?.run(&x)?;
        let mut s = Gc::new(
            &g,
            GcOptions {
                semantics,
                input_range: range,
                calibration,
                pool: 1,
                overlap: false,
                ..GcOptions::default()
            },
        )?;
        let mut online = Vec::new();
        let mut worker = Vec::new();
        let mut last = None;
        let mut exact = true;
        for _ in 0..reps.max(1) {
            s.wait_ready(std::time::Duration::from_secs(7200))?;
            let r = s.infer(&x)?;
            exact &= reference.data() == r.exact.data();
            online.push(r.cost.latency.as_secs_f64() * 1e3);
            worker.push(r.cost.untrusted_ns as f64 / 1e6);
            last = Some(r.cost);
        }
        let st = s.stats();
        let c = last.unwrap_or_default();
        let inputs = x.len() as u64;
        let outputs = reference.len() as u64;
        let row = GcBenchRow {
            network: name.clone(),
            primes: st.primes,
            range: st
                .calibrated
                .as_ref()
                .map_or("sound".into(), |_| tessera_gc::CALIBRATED_LABEL.into()),
            relus: stats(&g).relus,
            garble_ms: st.garble_ms,
            garbled_bytes: st.material_bytes,
            online_ms: tessera_schemes::median(&mut online),
            worker_eval_ms: tessera_schemes::median(&mut worker),
            online_bytes_up: c.bytes_up,
            online_bytes_down: c.bytes_down,
            online_bytes_formula: (inputs + outputs) * st.primes as u64 * 16,
            enclave_bytes_kept: st.kept_bytes,
            rounds: c.rounds,
            exact,
            threads,
        };
        eprintln!(
            "gc bench: {}: k = {} ({}), garble {:.0} ms, {} B garbled, online {:.0} ms (worker evaluation {:.0} ms), {} B up / {} B down, {} round(s), bit-exact {}",
            row.network,
            row.primes,
            row.range,
            row.garble_ms,
            row.garbled_bytes,
            row.online_ms,
            row.worker_eval_ms,
            row.online_bytes_up,
            row.online_bytes_down,
            row.rounds,
            row.exact
        );
        rows.push(row);
    }
    if json {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "network",
        "k",
        "CRT range",
        "garble ms",
        "garbled B",
        "online ms",
        "worker eval ms",
        "online B up/down",
        "vs formula",
        "enclave keeps",
        "rounds",
        "bit-exact",
    ]);
    for r in &rows {
        t.row(vec![
            r.network.clone(),
            r.primes.to_string(),
            r.range.clone(),
            format!("{:.0}", r.garble_ms),
            human(r.garbled_bytes),
            format!("{:.0}", r.online_ms),
            format!("{:.0}", r.worker_eval_ms),
            format!(
                "{} / {}",
                human(r.online_bytes_up),
                human(r.online_bytes_down)
            ),
            format!(
                "{:.2}×",
                (r.online_bytes_up + r.online_bytes_down) as f64
                    / r.online_bytes_formula.max(1) as f64
            ),
            human(r.enclave_bytes_kept),
            r.rounds.to_string(),
            r.exact.to_string(),
        ]);
    }
    println!("{}", t.render());
    println!(
        "{threads} threads; online = input labels to the worker, evaluation, output labels back, decode"
    );
    Ok(())
}

pub(crate) fn bench(
    mnist8: &Path,
    int8: &Path,
    reps: usize,
    onnxruntime: bool,
    json: bool,
) -> Result<()> {
    use rayon::prelude::*;
    let mut rows = Vec::new();
    let batch = 256usize;
    // Ceiling: the blocked GEMM alone on a large square product, f32 (float engine) and f64
    // (the integer engine's exact path).
    let n = 1024usize;
    let a32: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32).collect();
    let mut c32 = vec![0f32; n * n];
    let ms32 = time_median(reps, || {
        sgemm(
            n,
            n,
            n,
            1.0,
            View::rows(&a32, n),
            View::rows(&a32, n),
            0.0,
            &mut c32,
        );
        Ok(())
    })?;
    let a64: Vec<f64> = a32.iter().map(|&v| f64::from(v)).collect();
    let mut c64 = vec![0f64; n * n];
    let ms64 = time_median(reps, || {
        dgemm(
            n,
            n,
            n,
            1.0,
            View::rows(&a64, n),
            View::rows(&a64, n),
            0.0,
            &mut c64,
        );
        Ok(())
    })?;
    let a8: Vec<i8> = (0..n * n).map(|i| (i % 255) as i8).collect();
    let b8: Vec<u8> = (0..n * n).map(|i| (i % 251) as u8).collect();
    let mut c8 = vec![0i32; n * n];
    let kernel = tessera_engine::gemm_i8::Kernel::best();
    let ms8 = time_median(reps, || {
        tessera_engine::gemm_i8::gemm_u8i8(kernel, n, n, n, &a8, &b8, &mut c8);
        Ok(())
    })?;
    let macs = (n * n * n) as f64;
    let ceil32 = macs / ms32 / 1e6;
    let ceil64 = macs / ms64 / 1e6;
    let ceil8 = macs / ms8 / 1e6;
    let mut row = |what: String, engine: &str, ms: f64, items: f64, macs_per_item: f64| {
        let gmacs = macs_per_item * items / ms / 1e6;
        let ceil = match engine {
            "float" => ceil32,
            "integer v2" => ceil8,
            _ => ceil64,
        };
        rows.push(BenchRow {
            what,
            engine: engine.into(),
            median_ms: ms,
            per_second: items / ms * 1e3,
            gmacs,
            ratio_to_gemm: gmacs / ceil,
            vs_onnxruntime: None,
        });
    };
    // The networks onnxruntime times afterwards (`--onnxruntime`), written as ONNX here; the
    // guard removes them (ResNet-50 alone is 100 MB) on every way out, errors included.
    let ort_dir =
        TempDir(std::env::temp_dir().join(format!("tessera-bench-ort-{}", std::process::id())));
    let ort_dir = &ort_dir.0;
    if onnxruntime {
        std::fs::create_dir_all(ort_dir).map_err(|source| io_at(ort_dir, source))?;
    }
    row(format!("GEMM {n}³ f32 (ceiling)"), "float", ms32, 1.0, macs);
    row(
        format!("GEMM {n}³ f64 (ceiling)"),
        "integer",
        ms64,
        1.0,
        macs,
    );
    row(
        format!("GEMM {n}³ u8·i8 {kernel:?} (ceiling)"),
        "integer v2",
        ms8,
        1.0,
        macs,
    );
    if mnist8.exists() {
        let g = load_model(mnist8, &ImportOptions::default())?;
        let qm = QuantModel::new(&g, QuantConfig::default())?;
        let imgs: Vec<_> = synth_images(&g, batch);
        let fm = FloatModel::new(&g)?;
        let ms = time_median(reps, || {
            imgs.par_iter()
                .try_for_each(|x| fm.run(std::slice::from_ref(x)).map(|_| ()))?;
            Ok(())
        })?;
        let m8 = stats(&g).macs as f64;
        row(
            format!("mnist-8, {batch} images"),
            "float",
            ms,
            batch as f64,
            m8,
        );
        let ms = time_median(reps, || {
            imgs.par_iter()
                .try_for_each(|x| qm.run(std::slice::from_ref(x)).map(|_| ()))?;
            Ok(())
        })?;
        row(
            format!("mnist-8, {batch} images"),
            "integer",
            ms,
            batch as f64,
            m8,
        );
    } else if !json {
        println!(
            "mnist-8 skipped: {} not found (pass --mnist8 FILE)",
            mnist8.display()
        );
    }
    for name in ["resnet18-32", "vgg16-32", "resnet50-224"] {
        let g = resolve_model(name, &ImportOptions::default())?;
        let qm = QuantModel::new(&g, QuantConfig::default())?;
        let mut xs = synth_images(&g, 5);
        let x = xs.pop().ok_or_else(|| CliError::Usage("no input".into()))?;
        // v2, calibrated on four other pseudo-images.
        let calibration = tessera_engine::qint::Calibration::from_inputs(&g, &xs, "4 images")?;
        let v2 = tessera_engine::qint::IntModel::new(
            &g,
            tessera_engine::qint::QintConfig::default(),
            &calibration,
        )?;
        // Prepared once, as onnxruntime prepares its session (packed weights).
        let fm = FloatModel::new(&g)?;
        let ms = time_median(reps, || {
            fm.run(std::slice::from_ref(&x))
                .map(|_| ())
                .map_err(Into::into)
        })?;
        let mm = stats(&g).macs as f64;
        if onnxruntime {
            let bytes = tessera_model::export::export_model(&g)?;
            let file = ort_dir.join(format!("{name}.onnx"));
            std::fs::write(&file, bytes).map_err(|source| io_at(&file, source))?;
        }
        row(format!("{name}, 1 image"), "float", ms, 1.0, mm);
        let ms = time_median(reps, || {
            qm.run(std::slice::from_ref(&x))
                .map(|_| ())
                .map_err(Into::into)
        })?;
        row(format!("{name}, 1 image"), "integer", ms, 1.0, mm);
        let ms = time_median(reps, || v2.run(&x).map(|_| ()).map_err(Into::into))?;
        row(format!("{name}, 1 image"), "integer v2", ms, 1.0, mm);
    }
    if int8.exists() {
        let g = load_model(int8, &ImportOptions::default())?;
        let calibration = tessera_engine::qint::Calibration::given("the model's own int8 scales");
        let m = tessera_engine::qint::IntModel::new(
            &g,
            tessera_engine::qint::QintConfig::default(),
            &calibration,
        )?;
        let x = synth_images(&g, 1)
            .pop()
            .ok_or_else(|| CliError::Usage("no input".into()))?
            .map(|v| v / 255.0);
        let mm = stats(&g).macs as f64;
        let name = g.name.clone();
        let fm = FloatModel::new(&g)?;
        let ms = time_median(reps, || {
            fm.run(std::slice::from_ref(&x))
                .map(|_| ())
                .map_err(Into::into)
        })?;
        row(format!("{name} (int8 file), 1 image"), "float", ms, 1.0, mm);
        let ms = time_median(reps, || m.run(&x).map(|_| ()).map_err(Into::into))?;
        row(
            format!("{name} (int8 file), 1 image"),
            "integer v2",
            ms,
            1.0,
            mm,
        );
    } else if !json {
        println!(
            "int8 model skipped: {} not found (pass --int8 FILE)",
            int8.display()
        );
    }
    if onnxruntime {
        for (name, version, ms) in time_onnxruntime(ort_dir, reps)? {
            let what = format!("{name}, 1 image");
            for r in rows.iter_mut().filter(|r| r.what == what) {
                r.vs_onnxruntime = Some(r.median_ms / ms);
            }
            let mm = rows
                .iter()
                .find(|r| r.what == what)
                .map_or(0.0, |r| r.gmacs * r.median_ms * 1e6);
            rows.push(BenchRow {
                what,
                engine: format!("onnxruntime {version} (2 threads)"),
                median_ms: ms,
                per_second: 1e3 / ms,
                gmacs: mm / ms / 1e6,
                ratio_to_gemm: mm / ms / 1e6 / ceil32,
                vs_onnxruntime: Some(1.0),
            });
        }
    }
    if json {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "workload",
        "engine",
        "median ms",
        "per second",
        "GMAC/s",
        "of GEMM ceiling",
        "× onnxruntime",
    ]);
    for r in &rows {
        t.row(vec![
            r.what.clone(),
            r.engine.clone(),
            format!("{:.2}", r.median_ms),
            format!("{:.1}", r.per_second),
            format!("{:.2}", r.gmacs),
            format!("{:.0}%", 100.0 * r.ratio_to_gemm),
            r.vs_onnxruntime
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        ]);
    }
    println!(
        "{}\n({} threads, median of {reps} runs)",
        t.render(),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Deterministic pseudo-images (values 0..255) shaped like the model's input.
pub(crate) fn synth_images(g: &Graph, n: usize) -> Vec<tessera_model::Tensor> {
    let shape = g
        .inputs
        .first()
        .map(|&i| g.shape(i).to_vec())
        .unwrap_or_default();
    let len: usize = shape.iter().product();
    (0..n)
        .filter_map(|k| {
            let data = (0..len)
                .map(|i| ((i * 7919 + k * 104_729) % 256) as f32)
                .collect();
            tessera_model::Tensor::new(shape.clone(), data).ok()
        })
        .collect()
}
