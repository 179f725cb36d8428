//! The UCI optical-recognition digits (scikit-learn's `digits.csv`, optionally gzip'd): 8×8
//! images with pixel counts 0–16 and a label in the last column; and a CIFAR-shaped view of a
//! one-channel set ([`Dataset::tinted_rgb32`]).

use crate::idx::{Dataset, payload};
use crate::{DataError, fmt_err};
use std::path::Path;

/// Load `digits.csv[.gz]`: 65 comma-separated integers per line (64 pixels 0–16, then the label
/// 0–9). Pixels are scaled to 0–255 like MNIST's. A line of another length, a pixel out of
/// range or a bad label is an error naming the line.
pub fn load_digits(path: &Path) -> Result<Dataset, DataError> {
    let raw = payload(path)?;
    let text = std::str::from_utf8(&raw).map_err(|_| fmt_err(path, "not UTF-8 text"))?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let vals: Vec<&str> = line.split(',').collect();
        if vals.len() != 65 {
            return Err(fmt_err(
                path,
                format!(
                    "line {}: {} fields, 65 expected (64 pixels and a label)",
                    i + 1,
                    vals.len()
                ),
            ));
        }
        for (j, v) in vals.iter().enumerate() {
            let x: f32 = v.trim().parse().map_err(|_| {
                fmt_err(
                    path,
                    format!("line {}: field {} '{v}' is not a number", i + 1, j + 1),
                )
            })?;
            if j < 64 {
                if !(0.0..=16.0).contains(&x) {
                    return Err(fmt_err(
                        path,
                        format!("line {}: pixel {x} outside 0–16", i + 1),
                    ));
                }
                pixels.push(x * 255.0 / 16.0);
            } else if x.fract() == 0.0 && (0.0..=9.0).contains(&x) {
                labels.push(x as u8);
            } else {
                return Err(fmt_err(
                    path,
                    format!("line {}: label {x} is not 0–9", i + 1),
                ));
            }
        }
    }
    if labels.is_empty() {
        return Err(fmt_err(path, "no images"));
    }
    Ok(Dataset {
        count: labels.len(),
        channels: 1,
        rows: 8,
        cols: 8,
        pixels,
        labels,
    })
}

impl Dataset {
    /// A CIFAR-shaped (3 × 32 × 32) view of a one-channel set of at most 32×32 images: each
    /// image is centred on a 32×32 canvas and coloured with its own foreground and background
    /// colours (drawn from `seed`), so the three channels differ as in a photograph — the
    /// network sees the CIFAR input shape and a rank-2 colour structure, on real handwriting.
    /// Errors on a set that is not one-channel or larger than 32×32.
    pub fn tinted_rgb32(&self, seed: u64) -> Result<Dataset, String> {
        if self.channels != 1 || self.rows > 32 || self.cols > 32 {
            return Err(format!(
                "a CIFAR-shaped view needs one-channel images of at most 32×32, not {}×{}×{}",
                self.channels, self.rows, self.cols
            ));
        }
        let (top, left) = ((32 - self.rows) / 2, (32 - self.cols) / 2);
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        };
        let per = self.rows * self.cols;
        let mut pixels = Vec::with_capacity(self.count * 3 * 32 * 32);
        for i in 0..self.count {
            let bg: [f32; 3] = [next() * 110.0, next() * 110.0, next() * 110.0];
            let fg: [f32; 3] = [
                145.0 + next() * 110.0,
                145.0 + next() * 110.0,
                145.0 + next() * 110.0,
            ];
            let src = self.pixels.get(i * per..(i + 1) * per).unwrap_or(&[]);
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let p = if (top..top + self.rows).contains(&y)
                            && (left..left + self.cols).contains(&x)
                        {
                            src.get((y - top) * self.cols + (x - left))
                                .copied()
                                .unwrap_or(0.0)
                        } else {
                            0.0
                        } / 255.0;
                        pixels.push(bg[c] + (fg[c] - bg[c]) * p);
                    }
                }
            }
        }
        Ok(Dataset {
            count: self.count,
            channels: 3,
            rows: 32,
            cols: 32,
            pixels,
            labels: self.labels.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_parse_and_reject_bad_lines() {
        let dir = std::env::temp_dir().join(format!("tessera-digits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.csv");
        let row: Vec<String> = (0..64)
            .map(|i| (i % 17).to_string())
            .chain(["7".into()])
            .collect();
        std::fs::write(&good, format!("{}\n", row.join(","))).unwrap();
        let d = load_digits(&good).unwrap();
        assert_eq!((d.count, d.rows, d.labels[0]), (1, 8, 7));
        assert_eq!(d.pixels[16], 255.0);
        let short = dir.join("short.csv");
        std::fs::write(&short, "1,2,3\n").unwrap();
        assert!(
            load_digits(&short)
                .unwrap_err()
                .to_string()
                .contains("65 expected")
        );
        let bad = dir.join("bad.csv");
        let mut r2 = row.clone();
        r2[3] = "99".into();
        std::fs::write(&bad, r2.join(",")).unwrap();
        assert!(
            load_digits(&bad)
                .unwrap_err()
                .to_string()
                .contains("outside 0–16")
        );
        let rgb = d.tinted_rgb32(1).unwrap();
        assert_eq!(
            (rgb.channels, rgb.rows, rgb.pixels.len()),
            (3, 32, 3 * 1024)
        );
        assert_ne!(rgb.pixels[0], rgb.pixels[1024], "channels differ");
        std::fs::remove_dir_all(&dir).ok();
    }
}
