//! MNIST idx files (images `idx3-ubyte`, labels `idx1-ubyte`), raw or gzip-compressed.

use crate::{DataError, fmt_err, read};
use std::io::Read;
use std::path::Path;
use tessera_model::Tensor;

/// Images (u8 pixels) with optional labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Number of images.
    pub count: usize,
    /// Channels.
    pub channels: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// Pixels, image-major, each `channels·rows·cols`, values 0..=255 (as f32 for generated sets).
    pub pixels: Vec<f32>,
    /// Labels, one per image (empty when unknown).
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Image `i` as a `[1, C, rows, cols]` tensor.
    pub fn image(&self, i: usize) -> Option<Tensor> {
        let sz = self.channels * self.rows * self.cols;
        let px = self
            .pixels
            .get(i.checked_mul(sz)?..(i + 1).checked_mul(sz)?)?;
        Tensor::new(vec![1, self.channels, self.rows, self.cols], px.to_vec()).ok()
    }
    /// Keep the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        if n < self.count {
            self.count = n;
            self.pixels
                .truncate(n * self.channels * self.rows * self.cols);
            self.labels.truncate(n);
        }
    }
}

pub(crate) fn payload(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| fmt_err(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Read an idx3 image file.
pub fn load_idx_images(path: &Path) -> Result<Dataset, DataError> {
    let b = payload(path)?;
    if be32(&b, 0) != Some(0x0803) {
        return Err(fmt_err(path, "not an idx3 (unsigned byte images) file"));
    }
    let (n, r, c) = match (be32(&b, 4), be32(&b, 8), be32(&b, 12)) {
        (Some(n), Some(r), Some(c)) => (n, r, c),
        _ => return Err(fmt_err(path, "truncated header")),
    };
    let need = n
        .checked_mul(r)
        .and_then(|x| x.checked_mul(c))
        .ok_or_else(|| fmt_err(path, "header sizes overflow"))?;
    let px = b.get(16..16 + need).ok_or_else(|| {
        fmt_err(
            path,
            format!("holds fewer than the {n} images its header announces"),
        )
    })?;
    Ok(Dataset {
        count: n,
        channels: 1,
        rows: r,
        cols: c,
        pixels: px.iter().map(|&p| f32::from(p)).collect(),
        labels: vec![],
    })
}

/// Read an idx1 label file.
pub fn load_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let b = payload(path)?;
    if be32(&b, 0) != Some(0x0801) {
        return Err(fmt_err(path, "not an idx1 (unsigned byte labels) file"));
    }
    let n = be32(&b, 4).ok_or_else(|| fmt_err(path, "truncated header"))?;
    Ok(b.get(8..8 + n)
        .ok_or_else(|| fmt_err(path, "fewer labels than announced"))?
        .to_vec())
}

/// Load MNIST test images and labels from a directory holding `t10k-images-idx3-ubyte[.gz]` and
/// `t10k-labels-idx1-ubyte[.gz]`.
pub fn load_mnist_dir(dir: &Path) -> Result<Dataset, DataError> {
    let pick = |stem: &str| {
        let gz = dir.join(format!("{stem}.gz"));
        if gz.exists() { gz } else { dir.join(stem) }
    };
    let mut d = load_idx_images(&pick("t10k-images-idx3-ubyte"))?;
    let labels = load_idx_labels(&pick("t10k-labels-idx1-ubyte"))?;
    if labels.len() != d.count {
        return Err(fmt_err(
            dir,
            format!("{} images but {} labels", d.count, labels.len()),
        ));
    }
    d.labels = labels;
    Ok(d)
}
