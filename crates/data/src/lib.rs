//! Input formats tessera reads — ONNX TensorProto (`.pb`), NumPy (`.npy`), PNG, MNIST idx
//! (optionally gzip-compressed) — and a data set it generates itself so that the demo needs no
//! download.

#![warn(missing_docs)]

pub mod digits;
pub mod idx;
pub mod npy;
pub mod synth;

use std::path::Path;
use tessera_model::Tensor;
use tessera_model::import::{ConstTensor, parse_tensor};
use tessera_model::proto::TensorProto;

pub use digits::load_digits;
pub use idx::{Dataset, load_idx_images, load_idx_labels, load_mnist_dir};

/// Everything that can go wrong reading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The content is not what its format says.
    #[error("{path}: {detail}")]
    Format {
        /// Path (or description of the source).
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor inside was malformed.
    #[error("{0}")]
    Model(#[from] tessera_model::ModelError),
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn fmt_err(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Read an ONNX TensorProto file (`input_0.pb`, `output_0.pb`) as floats.
pub fn load_pb(path: &Path) -> Result<Tensor, DataError> {
    Ok(load_pb_any(path)?.to_f32())
}

/// Read an ONNX TensorProto file keeping integer tensors as integers.
pub fn load_pb_any(path: &Path) -> Result<ConstTensor, DataError> {
    use prost::Message;
    let bytes = read(path)?;
    let t = TensorProto::decode(bytes.as_slice())
        .map_err(|e| fmt_err(path, format!("not a TensorProto: {e}")))?;
    parse_tensor(&t).map_err(|e| fmt_err(path, e.to_string()))
}

/// Read a PNG as a `[1, C, H, W]` float tensor with values 0..=255 (C = 1 for grey, 3 for colour;
/// alpha is dropped, 16-bit samples are reduced to 8 bits).
pub fn load_png(path: &Path) -> Result<Tensor, DataError> {
    let bytes = read(path)?;
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec
        .read_info()
        .map_err(|e| fmt_err(path, format!("not a PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| fmt_err(path, "image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| fmt_err(path, format!("corrupt PNG: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let ch = info.color_type.samples();
    let keep = if ch >= 3 { 3 } else { 1 };
    let mut out = vec![0f32; keep * w * h];
    for y in 0..h {
        for x in 0..w {
            for c in 0..keep {
                let v = buf
                    .get(y * info.line_size + x * ch + c)
                    .copied()
                    .ok_or_else(|| fmt_err(path, "short image data"))?;
                out[c * w * h + y * w + x] = f32::from(v);
            }
        }
    }
    Ok(Tensor::new(vec![1, keep, h, w], out)?)
}

/// Load a model input from a file spec: `FILE.pb`, `FILE.npy`, `FILE.png`, or `IDXFILE:N` (image
/// N of an MNIST idx image file, 0-based, as a `[1, 1, rows, cols]` tensor of values 0..=255).
pub fn load_input(spec: &str) -> Result<Tensor, DataError> {
    if let Some((file, idx)) = spec.rsplit_once(':')
        && let Ok(i) = idx.parse::<usize>()
    {
        let images = load_idx_images(Path::new(file))?;
        return images.image(i).ok_or_else(|| {
            fmt_err(
                Path::new(file),
                format!(
                    "image index {i} is out of range (the file holds {} images)",
                    images.count
                ),
            )
        });
    }
    let path = Path::new(spec);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "pb" => load_pb(path),
        "npy" => npy::load_npy(path),
        "png" => load_png(path),
        _ => Err(fmt_err(
            path,
            "unknown input format: give a .pb (ONNX TensorProto), .npy, .png, or IDXFILE:INDEX",
        )),
    }
}

/// Locate `REL` under the team's shared test data (`../shared/data` beside the repository, or
/// `$TESSERA_SHARED_DATA`). When it is absent: with the variable `CI` set this panics (CI must
/// have the data); otherwise it prints why the caller skips and returns `None`. For tests.
pub fn shared_data(rel: &str) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("TESSERA_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let p = base.join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "shared test data {} is missing, and CI must have it",
            p.display()
        );
    }
    // Written to the stderr handle directly: the test harness captures `eprintln!` of passing
    // tests, and a skip must be visible.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: shared test data {} is absent (it lives beside the repository as ../shared/data)",
        p.display()
    );
    None
}
