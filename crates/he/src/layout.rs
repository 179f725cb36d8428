//! Coefficient encodings (Cheetah-style): a layer's input and weights laid out in polynomials so
//! that one negacyclic product holds the layer's sums in known coefficients — no rotations.
//!
//! # Conv
//!
//! The input, padded (`Hp × Wp`), is cut into blocks of `cb` channels and tiles of `hb` rows
//! (consecutive tiles overlap by the dilated kernel height − 1) with `cb·hb·Wp ≤ N`; the
//! element (channel `j` of the block, row `y` of the tile, column `x`) is coefficient
//! `j·hb·Wp + y·Wp + x`. The kernel of output channel `o` over block `b` puts weight
//! `w[o, c, l, m]` at coefficient `O − (j·hb·Wp + l·d_h·Wp + m·d_w)` with
//! `O = (cb−1)·hb·Wp + (kh_e−1)·Wp + (kw_e−1)` (`kh_e`, `kw_e` the dilated kernel extents, `c`
//! the block's channel `j`, zero where `c` is outside `o`'s group). The product's coefficient
//! `O + y·Wp + x` is then exactly the stride-1 sum for output row `y` of the tile and column `x`
//! (`0 ≤ x ≤ Wp − kw_e`):
//!
//! * another pair of terms landing there would need a row offset of `Wp` made up from column
//!   differences in `(−kw_e, Wp)` or a channel offset of `hb·Wp` from row and column differences
//!   in `(−(kh_e−1)·Wp − kw_e, hb·Wp)` — both impossible;
//! * a term that wraps past `N` (negated) lands below `O`: its exponent is at most
//!   `cb·hb·Wp − 1 + O − N < O` because `cb·hb·Wp ≤ N`.
//!
//! Strided outputs are the stride-1 sums at rows `oy·s_h` and columns `ox·s_w`; the sums of one
//! output channel over every block add up in one ciphertext. Average pooling is a depthwise conv
//! with unit weights ([`ConvPlan::unit_weights`]); the integer semantics then divides.
//!
//! # Dense
//!
//! `x` (length `K`, in chunks of `kc ≤ N`) is `Σ x_j ζ^j`; `mb = ⌊N/kc⌋` rows go in one weight
//! polynomial, row `i` at `Σ_j w_ij ζ^(i·kc + kc−1−j)`; the product's coefficient `i·kc + kc − 1`
//! is `Σ_j w_ij x_j` (terms of other rows differ by a multiple of `kc` that column differences
//! cannot make; wrapped terms land below `kc − 1` because `mb·kc ≤ N`).

use crate::HeError;

/// A conv layer's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvShape {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel (h, w).
    pub k: [usize; 2],
    /// Strides (h, w).
    pub stride: [usize; 2],
    /// Pads (top, left, bottom, right).
    pub pads: [usize; 4],
    /// Dilations (h, w).
    pub dil: [usize; 2],
    /// Groups.
    pub groups: usize,
}

impl ConvShape {
    /// Padded input height and width.
    pub fn padded(&self) -> (usize, usize) {
        (
            self.h + self.pads[0] + self.pads[2],
            self.w + self.pads[1] + self.pads[3],
        )
    }

    /// Dilated kernel extents.
    pub fn extent(&self) -> (usize, usize) {
        (
            (self.k[0] - 1) * self.dil[0] + 1,
            (self.k[1] - 1) * self.dil[1] + 1,
        )
    }

    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let (hp, wp) = self.padded();
        let (kh, kw) = self.extent();
        (
            (hp - kh) / self.stride[0] + 1,
            (wp - kw) / self.stride[1] + 1,
        )
    }

    fn check(&self) -> Result<(), HeError> {
        let bad = |m: String| Err(HeError::Shape(m));
        if self.c_in == 0 || self.c_out == 0 || self.h == 0 || self.w == 0 {
            return bad(format!("empty conv {self:?}"));
        }
        if self.k.contains(&0) || self.stride.contains(&0) || self.dil.contains(&0) {
            return bad(format!("zero kernel, stride or dilation in {self:?}"));
        }
        if self.groups == 0
            || !self.c_in.is_multiple_of(self.groups)
            || !self.c_out.is_multiple_of(self.groups)
        {
            return bad(format!(
                "{} groups do not divide {} input and {} output channels",
                self.groups, self.c_in, self.c_out
            ));
        }
        let (hp, wp) = self.padded();
        let (kh, kw) = self.extent();
        if kh > hp || kw > wp {
            return bad(format!(
                "a {kh}×{kw} kernel is larger than the padded {hp}×{wp} input"
            ));
        }
        Ok(())
    }
}

/// The coefficient layout of one conv layer at ring degree `N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    /// The geometry.
    pub shape: ConvShape,
    n: usize,
    hp: usize,
    wp: usize,
    kh: usize,
    kw: usize,
    /// Channels per block.
    cb: usize,
    /// Rows per tile.
    hb: usize,
    /// Stride-1 output rows per tile.
    rows: usize,
    /// Channel blocks.
    blocks: usize,
    /// Row tiles.
    tiles: usize,
    /// The first target coefficient `O`.
    origin: usize,
}

impl ConvPlan {
    /// Lay out `shape` in polynomials of degree `n`.
    pub fn new(shape: ConvShape, n: usize) -> Result<Self, HeError> {
        shape.check()?;
        let (hp, wp) = shape.padded();
        let (kh, kw) = shape.extent();
        if kh * wp > n {
            return Err(HeError::Shape(format!(
                "{kh} padded rows of width {wp} do not fit a ring of degree {n}; a larger ring degree is needed"
            )));
        }
        let (cb, hb) = if hp * wp <= n {
            ((n / (hp * wp)).min(shape.c_in).max(1), hp)
        } else {
            (1, n / wp)
        };
        let rows = hb - kh + 1;
        let tiles = (hp - kh + 1).div_ceil(rows);
        let blocks = shape.c_in.div_ceil(cb);
        let origin = (cb - 1) * hb * wp + (kh - 1) * wp + (kw - 1);
        Ok(Self {
            shape,
            n,
            hp,
            wp,
            kh,
            kw,
            cb,
            hb,
            rows,
            blocks,
            tiles,
            origin,
        })
    }

    /// Input polynomials (blocks × tiles).
    pub fn n_inputs(&self) -> usize {
        self.blocks * self.tiles
    }

    /// Output ciphertexts (output channels × tiles).
    pub fn n_outputs(&self) -> usize {
        self.shape.c_out * self.tiles
    }

    /// Weight polynomials (output channels × blocks).
    pub fn n_weights(&self) -> usize {
        self.shape.c_out * self.blocks
    }

    /// The channel range of output channel `o`'s group.
    fn group_channels(&self, o: usize) -> std::ops::Range<usize> {
        let cg = self.shape.c_in / self.shape.groups;
        let g = o / (self.shape.c_out / self.shape.groups);
        g * cg..(g + 1) * cg
    }

    fn block_hits(&self, o: usize, b: usize) -> bool {
        let r = self.group_channels(o);
        let lo = b * self.cb;
        let hi = ((b + 1) * self.cb).min(self.shape.c_in);
        lo < r.end && r.start < hi
    }

    /// `(input, weight)` polynomial pairs whose products sum into output `out`
    /// (`out = o·tiles + tile`).
    pub fn products(&self, out: usize) -> Vec<(usize, usize)> {
        let (o, tile) = (out / self.tiles, out % self.tiles);
        (0..self.blocks)
            .filter(|&b| self.block_hits(o, b))
            .map(|b| (b * self.tiles + tile, o * self.blocks + b))
            .collect()
    }

    /// The bias polynomial output `out` adds (one per output channel).
    pub fn bias_of(&self, out: usize) -> usize {
        out / self.tiles
    }

    /// Encode an input `[c_in, h, w]` (row-major) as `n_inputs` polynomials.
    pub fn encode_input(&self, x: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        let s = &self.shape;
        if x.len() != s.c_in * s.h * s.w {
            return Err(HeError::Operand(format!(
                "conv input has {} values, expected {}×{}×{}",
                x.len(),
                s.c_in,
                s.h,
                s.w
            )));
        }
        let mut out = Vec::with_capacity(self.n_inputs());
        for b in 0..self.blocks {
            for tile in 0..self.tiles {
                let mut p = vec![0i64; self.n];
                for j in 0..self.cb {
                    let c = b * self.cb + j;
                    if c >= s.c_in {
                        break;
                    }
                    for y in 0..self.hb {
                        let py = tile * self.rows + y;
                        let Some(iy) = py.checked_sub(s.pads[0]).filter(|&iy| iy < s.h) else {
                            continue;
                        };
                        let src = &x[(c * s.h + iy) * s.w..(c * s.h + iy + 1) * s.w];
                        let dst = j * self.hb * self.wp + y * self.wp + s.pads[1];
                        p[dst..dst + s.w].copy_from_slice(src);
                    }
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Encode weights `[c_out, c_in/groups, kh, kw]` as `n_weights` polynomials.
    pub fn encode_weights(&self, w: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        let s = &self.shape;
        let cg = s.c_in / s.groups;
        let per = cg * s.k[0] * s.k[1];
        if w.len() != s.c_out * per {
            return Err(HeError::Operand(format!(
                "conv weights have {} values, expected {}×{}×{}×{}",
                w.len(),
                s.c_out,
                cg,
                s.k[0],
                s.k[1]
            )));
        }
        let mut out = Vec::with_capacity(self.n_weights());
        for o in 0..s.c_out {
            let group = self.group_channels(o);
            for b in 0..self.blocks {
                let mut p = vec![0i64; self.n];
                for j in 0..self.cb {
                    let c = b * self.cb + j;
                    if !group.contains(&c) {
                        continue;
                    }
                    let ci = c - group.start;
                    for l in 0..s.k[0] {
                        for m in 0..s.k[1] {
                            let pos = j * self.hb * self.wp + l * s.dil[0] * self.wp + m * s.dil[1];
                            p[self.origin - pos] = w[o * per + (ci * s.k[0] + l) * s.k[1] + m];
                        }
                    }
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Unit weights (all 1): with `groups = c_in = c_out`, the window sums of average pooling.
    pub fn unit_weights(&self) -> Vec<i64> {
        let s = &self.shape;
        vec![1; s.c_out * (s.c_in / s.groups) * s.k[0] * s.k[1]]
    }

    /// Encode biases `[c_out]`: one polynomial per output channel with the bias at every target.
    pub fn encode_bias(&self, b: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        if b.len() != self.shape.c_out {
            return Err(HeError::Operand(format!(
                "conv bias has {} values, expected {}",
                b.len(),
                self.shape.c_out
            )));
        }
        Ok(b.iter()
            .map(|&v| {
                let mut p = vec![0i64; self.n];
                for y in 0..self.rows {
                    for x in 0..=self.wp - self.kw {
                        p[self.origin + y * self.wp + x] = v;
                    }
                }
                p
            })
            .collect())
    }

    /// The accumulators `[c_out, oh, ow]` from the decrypted outputs (`n_outputs` coefficient
    /// vectors), with their positions for error messages.
    pub fn decode(&self, outs: &[&[i64]]) -> Result<Vec<i64>, HeError> {
        if outs.len() != self.n_outputs() || outs.iter().any(|o| o.len() != self.n) {
            return Err(HeError::Operand(format!(
                "{} decrypted outputs for a conv with {}",
                outs.len(),
                self.n_outputs()
            )));
        }
        let s = &self.shape;
        let (oh, ow) = s.out_hw();
        let mut acc = Vec::with_capacity(s.c_out * oh * ow);
        for o in 0..s.c_out {
            for oy in 0..oh {
                let y1 = oy * s.stride[0];
                let (tile, y) = (y1 / self.rows, y1 % self.rows);
                let row = outs[o * self.tiles + tile];
                for ox in 0..ow {
                    acc.push(row[self.origin + y * self.wp + ox * s.stride[1]]);
                }
            }
        }
        Ok(acc)
    }

    /// Place values `[c_out, oh, ow]` at the outputs' target coefficients (zeros elsewhere):
    /// the inverse of [`ConvPlan::decode`], for masking a result in its own layout.
    pub fn encode_output(&self, v: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        let s = &self.shape;
        let (oh, ow) = s.out_hw();
        if v.len() != s.c_out * oh * ow {
            return Err(HeError::Operand(format!(
                "{} output values for a conv with {}×{}×{}",
                v.len(),
                s.c_out,
                oh,
                ow
            )));
        }
        let mut polys = vec![vec![0i64; self.n]; self.n_outputs()];
        let mut it = v.iter();
        for o in 0..s.c_out {
            for oy in 0..oh {
                let y1 = oy * s.stride[0];
                let (tile, y) = (y1 / self.rows, y1 % self.rows);
                for ox in 0..ow {
                    if let Some(&x) = it.next() {
                        polys[o * self.tiles + tile]
                            [self.origin + y * self.wp + ox * s.stride[1]] = x;
                    }
                }
            }
        }
        Ok(polys)
    }

    /// Nonzero weights in one kernel polynomial (for the noise rule).
    pub fn terms(&self) -> usize {
        let s = &self.shape;
        (s.c_in / s.groups).min(self.cb) * s.k[0] * s.k[1]
    }

    /// Products summed into one output (for the noise rule).
    pub fn max_products(&self) -> usize {
        (0..self.shape.c_out.min(self.shape.groups.max(1) * 2))
            .map(|o| self.products(o * self.tiles).len())
            .max()
            .unwrap_or(1)
    }
}

/// The coefficient layout of one dense layer `y = W·x + b` (`W`: `[m, k]`) at ring degree `N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DensePlan {
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub m: usize,
    n: usize,
    /// Chunk length.
    kc: usize,
    chunks: usize,
    /// Rows per weight polynomial.
    mb: usize,
    row_blocks: usize,
}

impl DensePlan {
    /// Lay out a `[m, k]` dense layer in polynomials of degree `n`.
    pub fn new(k: usize, m: usize, n: usize) -> Result<Self, HeError> {
        if k == 0 || m == 0 {
            return Err(HeError::Shape(format!("empty dense layer {m}×{k}")));
        }
        let kc = k.min(n);
        let chunks = k.div_ceil(kc);
        let mb = (n / kc).min(m).max(1);
        Ok(Self {
            k,
            m,
            n,
            kc,
            chunks,
            mb,
            row_blocks: m.div_ceil(mb),
        })
    }

    /// Input polynomials.
    pub fn n_inputs(&self) -> usize {
        self.chunks
    }

    /// Output ciphertexts.
    pub fn n_outputs(&self) -> usize {
        self.row_blocks
    }

    /// Weight polynomials.
    pub fn n_weights(&self) -> usize {
        self.row_blocks * self.chunks
    }

    /// `(input, weight)` pairs summed into output `out`.
    pub fn products(&self, out: usize) -> Vec<(usize, usize)> {
        (0..self.chunks)
            .map(|c| (c, out * self.chunks + c))
            .collect()
    }

    /// Encode `x` (length `k`).
    pub fn encode_input(&self, x: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        if x.len() != self.k {
            return Err(HeError::Operand(format!(
                "dense input has {} values, expected {}",
                x.len(),
                self.k
            )));
        }
        Ok(x.chunks(self.kc)
            .map(|c| {
                let mut p = vec![0i64; self.n];
                p[..c.len()].copy_from_slice(c);
                p
            })
            .collect())
    }

    /// Encode `W` (`[m, k]`, row-major).
    pub fn encode_weights(&self, w: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        if w.len() != self.m * self.k {
            return Err(HeError::Operand(format!(
                "dense weights have {} values, expected {}×{}",
                w.len(),
                self.m,
                self.k
            )));
        }
        let mut out = Vec::with_capacity(self.n_weights());
        for rb in 0..self.row_blocks {
            for c in 0..self.chunks {
                let mut p = vec![0i64; self.n];
                for i in 0..self.mb {
                    let row = rb * self.mb + i;
                    if row >= self.m {
                        break;
                    }
                    for j in 0..self.kc {
                        let col = c * self.kc + j;
                        if col >= self.k {
                            break;
                        }
                        p[i * self.kc + self.kc - 1 - j] = w[row * self.k + col];
                    }
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Encode `b` (length `m`): one polynomial per output.
    pub fn encode_bias(&self, b: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        if b.len() != self.m {
            return Err(HeError::Operand(format!(
                "dense bias has {} values, expected {}",
                b.len(),
                self.m
            )));
        }
        Ok(b.chunks(self.mb)
            .map(|rows| {
                let mut p = vec![0i64; self.n];
                for (i, &v) in rows.iter().enumerate() {
                    p[i * self.kc + self.kc - 1] = v;
                }
                p
            })
            .collect())
    }

    /// Place `m` values at the outputs' target coefficients (the inverse of
    /// [`DensePlan::decode`]).
    pub fn encode_output(&self, v: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        if v.len() != self.m {
            return Err(HeError::Operand(format!(
                "{} output values for a dense layer with {}",
                v.len(),
                self.m
            )));
        }
        let mut polys = vec![vec![0i64; self.n]; self.row_blocks];
        for (r, &x) in v.iter().enumerate() {
            polys[r / self.mb][(r % self.mb) * self.kc + self.kc - 1] = x;
        }
        Ok(polys)
    }

    /// The `m` accumulators from the decrypted outputs.
    pub fn decode(&self, outs: &[&[i64]]) -> Result<Vec<i64>, HeError> {
        if outs.len() != self.row_blocks || outs.iter().any(|o| o.len() != self.n) {
            return Err(HeError::Operand(format!(
                "{} decrypted outputs for a dense layer with {}",
                outs.len(),
                self.row_blocks
            )));
        }
        Ok((0..self.m)
            .map(|r| outs[r / self.mb][(r % self.mb) * self.kc + self.kc - 1])
            .collect())
    }
}

/// Either layout, behind one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinearPlan {
    /// A conv (or an average pool's window sums).
    Conv(ConvPlan),
    /// A dense layer.
    Dense(DensePlan),
}

impl LinearPlan {
    /// Input polynomials.
    pub fn n_inputs(&self) -> usize {
        match self {
            Self::Conv(p) => p.n_inputs(),
            Self::Dense(p) => p.n_inputs(),
        }
    }

    /// Weight polynomials.
    pub fn n_weights(&self) -> usize {
        match self {
            Self::Conv(p) => p.n_weights(),
            Self::Dense(p) => p.n_weights(),
        }
    }

    /// Output ciphertexts.
    pub fn n_outputs(&self) -> usize {
        match self {
            Self::Conv(p) => p.n_outputs(),
            Self::Dense(p) => p.n_outputs(),
        }
    }

    /// Bias polynomials.
    pub fn n_biases(&self) -> usize {
        match self {
            Self::Conv(p) => p.shape.c_out,
            Self::Dense(p) => p.n_outputs(),
        }
    }

    /// `(input, weight)` pairs summed into output `out`.
    pub fn products(&self, out: usize) -> Vec<(usize, usize)> {
        match self {
            Self::Conv(p) => p.products(out),
            Self::Dense(p) => p.products(out),
        }
    }

    /// The bias polynomial of output `out`.
    pub fn bias_of(&self, out: usize) -> usize {
        match self {
            Self::Conv(p) => p.bias_of(out),
            Self::Dense(_) => out,
        }
    }

    /// Encode the layer's input.
    pub fn encode_input(&self, x: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        match self {
            Self::Conv(p) => p.encode_input(x),
            Self::Dense(p) => p.encode_input(x),
        }
    }

    /// Encode the layer's weights.
    pub fn encode_weights(&self, w: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        match self {
            Self::Conv(p) => p.encode_weights(w),
            Self::Dense(p) => p.encode_weights(w),
        }
    }

    /// Encode the layer's bias.
    pub fn encode_bias(&self, b: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        match self {
            Self::Conv(p) => p.encode_bias(b),
            Self::Dense(p) => p.encode_bias(b),
        }
    }

    /// Place output values at the target coefficients (the inverse of decoding).
    pub fn encode_output(&self, v: &[i64]) -> Result<Vec<Vec<i64>>, HeError> {
        match self {
            Self::Conv(p) => p.encode_output(v),
            Self::Dense(p) => p.encode_output(v),
        }
    }

    /// Read the accumulators out of the decrypted outputs.
    pub fn decode(&self, outs: &[&[i64]]) -> Result<Vec<i64>, HeError> {
        match self {
            Self::Conv(p) => p.decode(outs),
            Self::Dense(p) => p.decode(outs),
        }
    }

    /// Nonzero weights in one weight polynomial.
    pub fn terms(&self) -> usize {
        match self {
            Self::Conv(p) => p.terms(),
            Self::Dense(p) => p.kc * p.mb,
        }
    }

    /// Products summed into one output.
    pub fn max_products(&self) -> usize {
        match self {
            Self::Conv(p) => p.max_products(),
            Self::Dense(p) => p.chunks,
        }
    }
}
