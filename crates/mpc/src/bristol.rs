//! The Bristol Fashion circuit format: line 1 `gates wires`; line 2 the number of input values
//! and each one's width; line 3 the same for outputs; then one gate per line,
//! `in out wires… OP` with OP in XOR, AND, INV, EQ (constant), EQW (copy) and MAND (several ANDs).
//! Input values take the first wires in order, outputs the last; within a value, wire `k` is
//! bit `k` counted from the least significant — the order the FIPS test vectors of the AES-128
//! and SHA-256 circuits confirm (`tests/bristol.rs`).
//!
//! Everything read is checked: counts, wire ranges, definition before use, the number of gates.
//! A malformed file is an error naming the line, never a panic or an allocation the file alone
//! decides.

use crate::MpcError;
use crate::circuit::{Circuit, Gate, Wire};

/// Most wires a file may declare.
pub const MAX_WIRES: usize = 1 << 28;

fn err(line: usize, m: impl Into<String>) -> MpcError {
    MpcError::Circuit(format!("Bristol line {line}: {}", m.into()))
}

fn numbers(line: usize, s: &str) -> Result<Vec<usize>, MpcError> {
    s.split_whitespace()
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| err(line, format!("'{t}' is not a number")))
        })
        .collect()
}

/// Parse a Bristol Fashion circuit.
pub fn parse(text: &str) -> Result<Circuit, MpcError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let mut header = |what: &str| {
        lines
            .next()
            .ok_or_else(|| err(0, format!("missing the {what} line")))
    };
    let (l1, first) = header("gates/wires")?;
    let gw = numbers(l1, first)?;
    let [ngates, nwires] = gw[..] else {
        return Err(err(l1, "expected 'gates wires'"));
    };
    if nwires > MAX_WIRES {
        return Err(err(
            l1,
            format!("{nwires} wires is over the limit of {MAX_WIRES}"),
        ));
    }
    let widths = |l: usize, s: &str| -> Result<Vec<usize>, MpcError> {
        let v = numbers(l, s)?;
        let (&n, rest) = v.split_first().ok_or_else(|| err(l, "empty line"))?;
        if rest.len() != n {
            return Err(err(
                l,
                format!("says {n} values but lists {} widths", rest.len()),
            ));
        }
        Ok(rest.to_vec())
    };
    let (l2, s2) = header("inputs")?;
    let ins = widths(l2, s2)?;
    let (l3, s3) = header("outputs")?;
    let outs = widths(l3, s3)?;
    let n_in: usize = ins.iter().sum();
    let n_out: usize = outs.iter().sum();
    if n_in > nwires || n_out > nwires {
        return Err(err(l2, "more input or output bits than wires"));
    }
    let mut next = 0u32;
    let inputs = ins
        .iter()
        .map(|&w| {
            let g = (next..next + w as u32).collect();
            next += w as u32;
            g
        })
        .collect();
    let mut next = (nwires - n_out) as u32;
    let outputs: Vec<Vec<Wire>> = outs
        .iter()
        .map(|&w| {
            let g = (next..next + w as u32).collect();
            next += w as u32;
            g
        })
        .collect();
    let mut gates = Vec::with_capacity(ngates.min(1 << 22));
    let mut listed = 0usize;
    // EQW copies a wire: later reads of the copy read the original (a copy is free).
    let mut alias: std::collections::HashMap<Wire, Wire> = std::collections::HashMap::new();
    let out_wire = |l: usize, v: usize| -> Result<Wire, MpcError> {
        if v >= nwires {
            return Err(err(l, format!("wire {v} is beyond the {nwires} wires")));
        }
        Ok(v as Wire)
    };
    for (l, s) in lines {
        listed += 1;
        if listed > ngates {
            return Err(err(l, format!("more gates than the {ngates} declared")));
        }
        let toks: Vec<&str> = s.split_whitespace().collect();
        let (op, rest) = toks.split_last().ok_or_else(|| err(l, "empty gate"))?;
        let nums = numbers(l, &rest.join(" "))?;
        let (&nin, tail) = nums.split_first().ok_or_else(|| err(l, "no input count"))?;
        let (&nout, ws) = tail
            .split_first()
            .ok_or_else(|| err(l, "no output count"))?;
        if ws.len() != nin + nout {
            return Err(err(
                l,
                format!("{nin} inputs and {nout} outputs but {} wires", ws.len()),
            ));
        }
        let wire = |l: usize, v: usize| -> Result<Wire, MpcError> {
            let w = out_wire(l, v)?;
            Ok(alias.get(&w).copied().unwrap_or(w))
        };
        match (*op, nin, nout) {
            ("XOR", 2, 1) => gates.push(Gate::Xor {
                a: wire(l, ws[0])?,
                b: wire(l, ws[1])?,
                out: out_wire(l, ws[2])?,
            }),
            ("AND", 2, 1) => gates.push(Gate::And {
                a: wire(l, ws[0])?,
                b: wire(l, ws[1])?,
                out: out_wire(l, ws[2])?,
            }),
            ("INV", 1, 1) => gates.push(Gate::Inv {
                a: wire(l, ws[0])?,
                out: out_wire(l, ws[1])?,
            }),
            ("EQ", 1, 1) => {
                let value = match ws[0] {
                    0 => false,
                    1 => true,
                    v => return Err(err(l, format!("EQ takes a constant 0 or 1, not {v}"))),
                };
                gates.push(Gate::Const {
                    value,
                    out: out_wire(l, ws[1])?,
                });
            }
            ("EQW", 1, 1) => {
                let (a, out) = (wire(l, ws[0])?, out_wire(l, ws[1])?);
                alias.insert(out, a);
            }
            ("MAND", n, m) if n == 2 * m => {
                for k in 0..m {
                    gates.push(Gate::And {
                        a: wire(l, ws[k])?,
                        b: wire(l, ws[m + k])?,
                        out: out_wire(l, ws[n + k])?,
                    });
                }
            }
            (op, nin, nout) => {
                return Err(err(
                    l,
                    format!("unknown gate {op} with {nin} inputs and {nout} outputs"),
                ));
            }
        }
    }
    if listed != ngates {
        return Err(err(0, format!("{listed} gates listed, {ngates} declared")));
    }
    let outputs = outputs
        .into_iter()
        .map(|g: Vec<Wire>| {
            g.into_iter()
                .map(|w| alias.get(&w).copied().unwrap_or(w))
                .collect()
        })
        .collect();
    let c = Circuit {
        wires: nwires,
        inputs,
        outputs,
        gates,
    };
    c.validate()?;
    Ok(c)
}
