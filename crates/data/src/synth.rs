//! "glyphs": a generated 10-class image set (seven-segment digits, 16×16, random position, stroke
//! width, brightness and noise), so that the demo can train and evaluate a real classifier on a
//! fresh clone with nothing downloaded.

use crate::Dataset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Side of a glyph image.
pub const SIDE: usize = 16;

// Segments a..g lit for each digit 0..9 (a top, b top-right, c bottom-right, d bottom,
// e bottom-left, f top-left, g middle).
const SEGMENTS: [[bool; 7]; 10] = [
    [true, true, true, true, true, true, false],
    [false, true, true, false, false, false, false],
    [true, true, false, true, true, false, true],
    [true, true, true, true, false, false, true],
    [false, true, true, false, false, true, true],
    [true, false, true, true, false, true, true],
    [true, false, true, true, true, true, true],
    [true, true, true, false, false, false, false],
    [true, true, true, true, true, true, true],
    [true, true, true, true, false, true, true],
];

/// Generate `n` glyph images (`[1, 16, 16]`, values 0..=255) with labels, from `seed`.
pub fn glyphs(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut pixels = vec![0f32; n * SIDE * SIDE];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let digit = rng.random_range(0..10usize);
        labels.push(digit as u8);
        let img = &mut pixels[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
        let w = rng.random_range(5..=8usize);
        let h = rng.random_range(9..=13usize);
        let x0 = rng.random_range(1..=SIDE - w - 1);
        let y0 = rng.random_range(1..=SIDE - h - 1);
        let t = rng.random_range(1..=2usize);
        let ink: f32 = rng.random_range(160.0..255.0);
        let mid = y0 + h / 2;
        let mut rect = |xa: usize, ya: usize, xb: usize, yb: usize| {
            for y in ya..yb.min(SIDE) {
                for x in xa..xb.min(SIDE) {
                    img[y * SIDE + x] = ink;
                }
            }
        };
        let s = SEGMENTS[digit];
        if s[0] {
            rect(x0, y0, x0 + w, y0 + t);
        }
        if s[1] {
            rect(x0 + w - t, y0, x0 + w, mid + 1);
        }
        if s[2] {
            rect(x0 + w - t, mid, x0 + w, y0 + h);
        }
        if s[3] {
            rect(x0, y0 + h - t, x0 + w, y0 + h);
        }
        if s[4] {
            rect(x0, mid, x0 + t, y0 + h);
        }
        if s[5] {
            rect(x0, y0, x0 + t, mid + 1);
        }
        if s[6] {
            rect(x0, mid - t / 2, x0 + w, mid - t / 2 + t);
        }
        for p in img.iter_mut() {
            let noise: f32 = rng.random_range(-30.0..30.0);
            *p = (*p + noise).clamp(0.0, 255.0).round();
        }
    }
    Dataset {
        count: n,
        channels: 1,
        rows: SIDE,
        cols: SIDE,
        pixels,
        labels,
    }
}
