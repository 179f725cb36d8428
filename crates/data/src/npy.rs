//! NumPy `.npy` files (format versions 1–3): little-endian f4, f8, u1, i4, i8; C order only.

use crate::{DataError, fmt_err, read};
use std::path::Path;
use tessera_model::Tensor;

/// Read a `.npy` file as a float tensor.
pub fn load_npy(path: &Path) -> Result<Tensor, DataError> {
    parse_npy(&read(path)?).map_err(|d| fmt_err(path, d))
}

fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let i = header.find(&format!("'{key}'"))?;
    let rest = header.get(i + key.len() + 2..)?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

/// Parse `.npy` bytes.
pub fn parse_npy(b: &[u8]) -> Result<Tensor, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start): (usize, usize) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 => {
            let h = b.get(8..12).ok_or("truncated header")?;
            (u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b
        .get(start..start.saturating_add(hlen))
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = field(header, "descr").ok_or("header has no 'descr'")?;
    // 'descr' is a quoted byte-order character followed by the type code, e.g. '<f4' or '|u1'.
    let _order = descr.get(1..2).ok_or("bad 'descr'")?;
    let descr = descr.get(2..4).ok_or("bad 'descr'")?;
    let fortran = field(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran.starts_with("True") {
        return Err("Fortran-order arrays are not supported; save with C order".into());
    }
    let shape_s = field(header, "shape").ok_or("header has no 'shape'")?;
    let shape_s = shape_s.strip_prefix('(').ok_or("bad 'shape'")?;
    let shape_s = &shape_s[..shape_s.find(')').ok_or("bad 'shape'")?];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension '{s}'"))
        })
        .collect::<Result<_, _>>()?;
    let n = tessera_model::tensor::numel(&shape).map_err(|e| e.to_string())?;
    let data = b.get(start + hlen..).ok_or("truncated header")?;
    let size = match descr {
        "f4" | "i4" => 4,
        "f8" | "i8" => 8,
        "u1" | "i1" | "b1" => 1,
        _ => {
            return Err(format!(
                "unsupported dtype '{descr}'; use float32, float64, uint8, int32 or int64"
            ));
        }
    };
    let order = header
        .get(header.find("'descr'").unwrap_or(0) + 7..)
        .unwrap_or("");
    if size > 1 && order.contains("'>") {
        return Err("big-endian arrays are not supported".into());
    }
    if data.len() != n * size {
        return Err(format!(
            "shape {shape:?} needs {} data bytes, the file has {}",
            n * size,
            data.len()
        ));
    }
    let v: Vec<f32> = match descr {
        "f4" => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "f8" => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        "i4" => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        "i8" => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        "i1" => data.iter().map(|&x| f32::from(x as i8)).collect(),
        _ => data.iter().map(|&x| f32::from(x)).collect(),
    };
    Tensor::new(shape, v).map_err(|e| e.to_string())
}

/// Encode a float tensor as `.npy` (version 1, `<f4`).
pub fn to_npy(t: &Tensor) -> Vec<u8> {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    for v in t.data() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
