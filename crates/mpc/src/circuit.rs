//! Boolean circuits: the representation every garbler and evaluator walks, a builder with
//! word-level integer operations and constant folding, and a plaintext evaluator (the oracle).

use crate::MpcError;

/// A wire number.
pub type Wire = u32;

/// One gate. XOR and INV are free under free-XOR; AND costs two ciphertexts (half-gates);
/// a constant costs one label in the garbled material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `out = a ⊕ b`.
    Xor {
        /// Input.
        a: Wire,
        /// Input.
        b: Wire,
        /// Output.
        out: Wire,
    },
    /// `out = a ∧ b`.
    And {
        /// Input.
        a: Wire,
        /// Input.
        b: Wire,
        /// Output.
        out: Wire,
    },
    /// `out = ¬a`.
    Inv {
        /// Input.
        a: Wire,
        /// Output.
        out: Wire,
    },
    /// `out = value`.
    Const {
        /// The constant.
        value: bool,
        /// Output.
        out: Wire,
    },
}

impl Gate {
    /// The output wire.
    pub fn out(&self) -> Wire {
        match *self {
            Gate::Xor { out, .. }
            | Gate::And { out, .. }
            | Gate::Inv { out, .. }
            | Gate::Const { out, .. } => out,
        }
    }
}

/// A circuit: inputs in groups (one per value, in order), gates in an order where every input
/// of a gate is defined before it, outputs in groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Circuit {
    /// Number of wires.
    pub wires: usize,
    /// Input groups (wire numbers, least significant bit first).
    pub inputs: Vec<Vec<Wire>>,
    /// Output groups.
    pub outputs: Vec<Vec<Wire>>,
    /// Gates in evaluation order.
    pub gates: Vec<Gate>,
}

impl Circuit {
    /// Check that every wire is in range, defined exactly once (by an input or a gate) before
    /// it is read, and that every output is defined: a circuit that passes cannot make a
    /// garbler or evaluator read an undefined label.
    pub fn validate(&self) -> Result<(), MpcError> {
        let bad = |m: String| Err(MpcError::Circuit(m));
        let mut defined = vec![false; self.wires];
        let wires = self.wires;
        let define = |defined: &mut Vec<bool>, w: Wire, what: &str| -> Result<(), MpcError> {
            match defined.get_mut(w as usize) {
                None => Err(MpcError::Circuit(format!(
                    "{what} wire {w} is beyond the {wires} wires"
                ))),
                Some(d) if *d => Err(MpcError::Circuit(format!(
                    "wire {w} is defined twice ({what})"
                ))),
                Some(d) => {
                    *d = true;
                    Ok(())
                }
            }
        };
        for w in self.inputs.iter().flatten() {
            define(&mut defined, *w, "input")?;
        }
        for (i, g) in self.gates.iter().enumerate() {
            let ins: &[Wire] = match g {
                Gate::Xor { a, b, .. } | Gate::And { a, b, .. } => &[*a, *b],
                Gate::Inv { a, .. } => &[*a],
                Gate::Const { .. } => &[],
            };
            for &w in ins {
                if !defined.get(w as usize).copied().unwrap_or(false) {
                    return bad(format!("gate {i} reads wire {w} before it is defined"));
                }
            }
            define(&mut defined, g.out(), "gate output")?;
        }
        for w in self.outputs.iter().flatten() {
            if !defined.get(*w as usize).copied().unwrap_or(false) {
                return bad(format!("output wire {w} is never defined"));
            }
        }
        Ok(())
    }

    /// Number of AND gates (the garbling's cost).
    pub fn and_count(&self) -> usize {
        self.gates
            .iter()
            .filter(|g| matches!(g, Gate::And { .. }))
            .count()
    }

    /// Number of input bits.
    pub fn input_bits(&self) -> usize {
        self.inputs.iter().map(Vec::len).sum()
    }

    /// Evaluate in plaintext: `inputs` in the input groups' order and widths.
    pub fn eval(&self, inputs: &[Vec<bool>]) -> Result<Vec<Vec<bool>>, MpcError> {
        if inputs.len() != self.inputs.len()
            || inputs
                .iter()
                .zip(&self.inputs)
                .any(|(v, w)| v.len() != w.len())
        {
            return Err(MpcError::Input(format!(
                "the circuit takes inputs of widths {:?}",
                self.inputs.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let mut v = vec![false; self.wires];
        for (ws, bits) in self.inputs.iter().zip(inputs) {
            for (&w, &b) in ws.iter().zip(bits) {
                v[w as usize] = b;
            }
        }
        for g in &self.gates {
            match *g {
                Gate::Xor { a, b, out } => v[out as usize] = v[a as usize] ^ v[b as usize],
                Gate::And { a, b, out } => v[out as usize] = v[a as usize] & v[b as usize],
                Gate::Inv { a, out } => v[out as usize] = !v[a as usize],
                Gate::Const { value, out } => v[out as usize] = value,
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|ws| ws.iter().map(|&w| v[w as usize]).collect())
            .collect())
    }
}

/// A circuit that passed [`Circuit::validate`] and can no longer change: garbling and
/// evaluating it many times checks it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    circuit: Circuit,
    parts: Vec<Part>,
}

impl Checked {
    /// Validate `c` once, then lay it out: in [`crate::parts::PARTS`] independent parts when
    /// it has at least [`crate::parts::MIN_ANDS_TO_SPLIT`] AND gates, else one, each part's
    /// wires renumbered to reuse slots ([`compact`]).
    pub fn new(c: Circuit) -> Result<Self, MpcError> {
        let parts = if c.and_count() >= crate::parts::MIN_ANDS_TO_SPLIT {
            crate::parts::PARTS
        } else {
            1
        };
        Self::with_parts(c, parts)
    }

    /// Validate `c` and lay it out in up to `parts` parts whatever its size (both parties must
    /// use the same number; [`Checked::new`] is what the schemes use).
    pub fn with_parts(c: Circuit, parts: usize) -> Result<Self, MpcError> {
        c.validate()?;
        let (circuit, parts) = crate::parts::layout(c, parts);
        Ok(Self { circuit, parts })
    }

    /// Its parts, in gate order (see [`crate::parts`]).
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }
}

use crate::parts::Part;
pub use crate::parts::compact;

impl std::ops::Deref for Checked {
    type Target = Circuit;
    fn deref(&self) -> &Circuit {
        &self.circuit
    }
}

/// A wire of a circuit under construction, or a constant the builder folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bit {
    /// A constant.
    Const(bool),
    /// A wire.
    Wire(Wire),
}

/// Builds a [`Circuit`], folding constants: XOR and AND with a constant cost nothing and
/// produce no gate, so word operations on public operands shrink to what depends on inputs.
#[derive(Debug, Default)]
pub struct Builder {
    wires: u32,
    gates: Vec<Gate>,
    inputs: Vec<Vec<Wire>>,
    outputs: Vec<Vec<Wire>>,
}

/// An integer of ℓ bits, least significant first.
pub type Word = Vec<Bit>;

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self) -> Wire {
        let w = self.wires;
        self.wires += 1;
        w
    }

    /// A new input group of `width` bits.
    pub fn input(&mut self, width: usize) -> Word {
        let ws: Vec<Wire> = (0..width).map(|_| self.fresh()).collect();
        self.inputs.push(ws.clone());
        ws.into_iter().map(Bit::Wire).collect()
    }

    /// A constant word of `width` bits (two's complement).
    pub fn constant(&self, value: i128, width: usize) -> Word {
        (0..width)
            .map(|i| Bit::Const((value >> i.min(127)) & 1 == 1))
            .collect()
    }

    /// `a ⊕ b`.
    pub fn xor(&mut self, a: Bit, b: Bit) -> Bit {
        match (a, b) {
            (Bit::Const(x), Bit::Const(y)) => Bit::Const(x ^ y),
            (Bit::Const(false), w) | (w, Bit::Const(false)) => w,
            (Bit::Const(true), w) | (w, Bit::Const(true)) => self.not(w),
            (Bit::Wire(x), Bit::Wire(y)) if x == y => Bit::Const(false),
            (Bit::Wire(x), Bit::Wire(y)) => {
                let out = self.fresh();
                self.gates.push(Gate::Xor { a: x, b: y, out });
                Bit::Wire(out)
            }
        }
    }

    /// `a ∧ b`.
    pub fn and(&mut self, a: Bit, b: Bit) -> Bit {
        match (a, b) {
            (Bit::Const(x), Bit::Const(y)) => Bit::Const(x & y),
            (Bit::Const(false), _) | (_, Bit::Const(false)) => Bit::Const(false),
            (Bit::Const(true), w) | (w, Bit::Const(true)) => w,
            (Bit::Wire(x), Bit::Wire(y)) if x == y => Bit::Wire(x),
            (Bit::Wire(x), Bit::Wire(y)) => {
                let out = self.fresh();
                self.gates.push(Gate::And { a: x, b: y, out });
                Bit::Wire(out)
            }
        }
    }

    /// `¬a`.
    pub fn not(&mut self, a: Bit) -> Bit {
        match a {
            Bit::Const(x) => Bit::Const(!x),
            Bit::Wire(x) => {
                let out = self.fresh();
                self.gates.push(Gate::Inv { a: x, out });
                Bit::Wire(out)
            }
        }
    }

    /// `a ∨ b` (one AND).
    pub fn or(&mut self, a: Bit, b: Bit) -> Bit {
        let x = self.xor(a, b);
        let y = self.and(a, b);
        self.xor(x, y)
    }

    /// `s ? a : b` (one AND).
    pub fn mux(&mut self, s: Bit, a: Bit, b: Bit) -> Bit {
        let d = self.xor(a, b);
        let m = self.and(s, d);
        self.xor(b, m)
    }

    fn check_widths(a: &Word, b: &Word) {
        debug_assert_eq!(a.len(), b.len(), "word widths differ");
    }

    /// `a + b + carry_in` mod 2^ℓ and the carry out (one AND per bit).
    fn add_carry(&mut self, a: &Word, b: &Word, mut carry: Bit) -> (Word, Bit) {
        Self::check_widths(a, b);
        let mut out = Vec::with_capacity(a.len());
        for (&x, &y) in a.iter().zip(b) {
            let xc = self.xor(x, carry);
            let yc = self.xor(y, carry);
            let s = self.xor(xc, y);
            let t = self.and(xc, yc);
            carry = self.xor(carry, t);
            out.push(s);
        }
        (out, carry)
    }

    /// `a + b` mod 2^ℓ.
    pub fn add(&mut self, a: &Word, b: &Word) -> Word {
        self.add_carry(a, b, Bit::Const(false)).0
    }

    /// `a − b` mod 2^ℓ.
    pub fn sub(&mut self, a: &Word, b: &Word) -> Word {
        let nb: Word = b.iter().map(|&x| self.not(x)).collect();
        self.add_carry(a, &nb, Bit::Const(true)).0
    }

    /// `a < b` as unsigned ℓ-bit integers (the borrow of `a − b`).
    pub fn lt_unsigned(&mut self, a: &Word, b: &Word) -> Bit {
        let nb: Word = b.iter().map(|&x| self.not(x)).collect();
        let (_, carry) = self.add_carry(a, &nb, Bit::Const(true));
        self.not(carry)
    }

    /// `a < b` as signed (two's complement) ℓ-bit integers.
    pub fn lt_signed(&mut self, a: &Word, b: &Word) -> Bit {
        // Flip the sign bits and compare unsigned.
        let mut a2 = a.clone();
        let mut b2 = b.clone();
        if let (Some(x), Some(y)) = (a2.last_mut(), b2.last_mut()) {
            *x = self.not(*x);
            *y = self.not(*y);
        }
        self.lt_unsigned(&a2, &b2)
    }

    /// `s ? a : b`, word-wise.
    pub fn mux_word(&mut self, s: Bit, a: &Word, b: &Word) -> Word {
        Self::check_widths(a, b);
        a.iter().zip(b).map(|(&x, &y)| self.mux(s, x, y)).collect()
    }

    /// `a << k` (free: wiring).
    pub fn shl(&self, a: &Word, k: usize) -> Word {
        (0..a.len())
            .map(|i| if i < k { Bit::Const(false) } else { a[i - k] })
            .collect()
    }

    /// `a >> k`, arithmetic (sign-extending) if `signed` (free: wiring).
    pub fn shr(&self, a: &Word, k: usize, signed: bool) -> Word {
        let fill = if signed {
            a.last().copied().unwrap_or(Bit::Const(false))
        } else {
            Bit::Const(false)
        };
        (0..a.len())
            .map(|i| a.get(i + k).copied().unwrap_or(fill))
            .collect()
    }

    /// Mark a word as an output group (constants are materialized as constant gates).
    pub fn output(&mut self, w: &Word) {
        let ws = w
            .iter()
            .map(|&b| match b {
                Bit::Wire(x) => x,
                Bit::Const(value) => {
                    let out = self.fresh();
                    self.gates.push(Gate::Const { value, out });
                    out
                }
            })
            .collect();
        self.outputs.push(ws);
    }

    /// The circuit.
    pub fn finish(self) -> Result<Circuit, MpcError> {
        let c = Circuit {
            wires: self.wires as usize,
            inputs: self.inputs,
            outputs: self.outputs,
            gates: self.gates,
        };
        c.validate()?;
        Ok(c)
    }
}

/// Bits of `v` (least significant first), `width` of them.
pub fn to_bits(v: u128, width: usize) -> Vec<bool> {
    (0..width).map(|i| i < 128 && (v >> i) & 1 == 1).collect()
}

/// The integer of `bits` (least significant first; at most 128).
pub fn from_bits(bits: &[bool]) -> u128 {
    bits.iter()
        .take(128)
        .enumerate()
        .fold(0, |acc, (i, &b)| acc | (u128::from(b) << i))
}
