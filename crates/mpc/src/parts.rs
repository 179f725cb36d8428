//! A circuit laid out in independent parts, and its evaluation on several threads.
//!
//! A segment circuit of the `2pc` scheme is many small circuits side by side: each activation
//! of a layer is reconstructed, requantized, clamped and re-masked on its own, and only pools and
//! residual adds join a few of them. Its wires fall apart into connected components (wires joined
//! through gates). [`layout`] groups the components into [`PARTS`] parts of about equal AND
//! count, in the order the components first appear, and lays the circuit out part after part:
//!
//! * each part's gates are contiguous, and keep their order within the part (a valid order, as
//!   no gate reads a wire of another part);
//! * so are its AND gates and constants, hence its tweaks and its stretch of the garbled
//!   material ([`Part::first_and`], [`Part::first_block`]);
//! * each part's wires live in a range of slots of their own ([`Part::slots`]), reused within
//!   the part as [`compact`] does for a whole circuit.
//!
//! Garbling walks the gates in order and does not change. An evaluator that has the whole
//! material ([`crate::stream::SliceMaterial`]) can give each part to a thread that starts at the
//! part's first table ([`evaluate_parallel`]); the result is the same labels as the sequential
//! evaluation, since every gate sees the same inputs, tweak and table.
//!
//! The number of parts is a constant of the layout, not the machine's core count: the garbler
//! and the evaluator must lay a circuit out the same way, and their machines may differ.

use crate::MpcError;
use crate::block::Block;
use crate::circuit::{Checked, Circuit, Gate, Wire};
use crate::garble::{eval_gates, input_labels, output_labels};
use crate::hash::Tccr;
use crate::stream::SliceMaterial;
use std::ops::Range;

/// Parts a large circuit is laid out in (enough for an 8-core evaluator).
pub const PARTS: usize = 8;

/// Circuits with fewer AND gates stay one part (threads would cost more than they save).
pub const MIN_ANDS_TO_SPLIT: usize = 1 << 15;

/// One part of a laid-out circuit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Its gates, an index range of the circuit's gates.
    pub gates: Range<usize>,
    /// The slots its wires use.
    pub slots: Range<Wire>,
    /// The circuit-wide number of its first AND gate (its first tweak is twice that).
    pub first_and: u64,
    /// The material's block at which its tables and constants begin.
    pub first_block: u64,
}

/// Blocks of garbled material a circuit has: two per AND gate, one per constant.
pub fn material_blocks(c: &Circuit) -> u64 {
    c.gates
        .iter()
        .map(|g| match g {
            Gate::And { .. } => 2,
            Gate::Const { .. } => 1,
            _ => 0,
        })
        .sum()
}

/// A gate's inputs.
fn reads(g: &Gate) -> (Option<Wire>, Option<Wire>) {
    match *g {
        Gate::Xor { a, b, .. } | Gate::And { a, b, .. } => (Some(a), Some(b)),
        Gate::Inv { a, .. } => (Some(a), None),
        Gate::Const { .. } => (None, None),
    }
}

/// Union-find root with path halving.
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[parent[x as usize] as usize];
        parent[x as usize] = p;
        x = p;
    }
    x
}

/// The part of every wire: components in order of first appearance, cut into `parts` runs of
/// about equal AND count. Wires no gate touches (unread inputs) go to part 0.
fn assign(c: &Circuit, parts: usize) -> Vec<u8> {
    let n = c.wires;
    if parts <= 1 {
        return vec![0; n];
    }
    let mut parent: Vec<u32> = (0..n as u32).collect();
    for g in &c.gates {
        let out = g.out();
        let (a, b) = reads(g);
        for w in [a, b].into_iter().flatten() {
            let (ra, rb) = (find(&mut parent, out), find(&mut parent, w));
            if ra != rb {
                parent[ra as usize] = rb;
            }
        }
    }
    // ANDs per component (at its root), then the part of each root in first-seen order.
    const ASSIGNED: u32 = 1 << 31;
    let mut ands = vec![0u32; n];
    for g in &c.gates {
        if let Gate::And { out, .. } = *g {
            let r = find(&mut parent, out);
            ands[r as usize] = ands[r as usize].saturating_add(1);
        }
    }
    let total = c.and_count().max(1) as u64;
    let mut done = 0u64;
    for g in &c.gates {
        let r = find(&mut parent, g.out()) as usize;
        if ands[r] & ASSIGNED == 0 {
            let p = ((done * parts as u64) / total).min(parts as u64 - 1) as u32;
            done += u64::from(ands[r]);
            ands[r] = ASSIGNED | p;
        }
    }
    (0..n as u32)
        .map(|w| {
            let r = find(&mut parent, w) as usize;
            if ands[r] & ASSIGNED != 0 {
                (ands[r] & !ASSIGNED) as u8
            } else {
                0
            }
        })
        .collect()
}

/// The same circuit with wires renumbered to reuse slots: a wire's slot is freed after the
/// last gate that reads it (never for outputs) and given to the next gate output. Every gate
/// reads its inputs before it writes its output, and a slot is only reused after its last
/// read, so garbling, evaluating and plaintext evaluation compute the same values — with
/// arrays as large as the widest cut of the circuit instead of all its wires, which keeps a
/// large segment's labels in cache. Takes a validated circuit.
pub fn compact(c: Circuit) -> Circuit {
    layout(c, 1).0
}

/// Lay a validated circuit out in up to `parts` parts (see the module's documentation), each
/// compacted; returns the circuit and its parts (one when `parts` ≤ 1). A circuit of more
/// than 2^32 − 2 gates is left as one part.
pub fn layout(c: Circuit, parts: usize) -> (Circuit, Vec<Part>) {
    let parts = if c.gates.len() >= (u32::MAX - 1) as usize {
        1
    } else {
        parts.clamp(1, 255)
    };
    let part_of = assign(&c, parts);
    let pt = |w: Wire| part_of[w as usize] as usize;
    // Where each part's gates go, and its first AND and block.
    let mut count = vec![0usize; parts];
    let mut part_ands = vec![0u64; parts];
    let mut part_blocks = vec![0u64; parts];
    for g in &c.gates {
        let p = pt(g.out());
        count[p] += 1;
        match g {
            Gate::And { .. } => {
                part_ands[p] += 1;
                part_blocks[p] += 2;
            }
            Gate::Const { .. } => part_blocks[p] += 1,
            _ => {}
        }
    }
    let mut starts = Vec::with_capacity(parts);
    let (mut g0, mut a0, mut b0) = (0usize, 0u64, 0u64);
    for p in 0..parts {
        starts.push((g0, a0, b0));
        g0 += count[p];
        a0 += part_ands[p];
        b0 += part_blocks[p];
    }
    // The last gate reading each wire; outputs are never freed.
    const NONE: u32 = u32::MAX;
    const NEVER: u32 = u32::MAX - 1;
    let mut last = vec![NONE; c.wires];
    for (k, g) in c.gates.iter().enumerate() {
        let (a, b) = reads(g);
        for w in [a, b].into_iter().flatten() {
            last[w as usize] = k as u32;
        }
    }
    for &w in c.outputs.iter().flatten() {
        last[w as usize] = NEVER;
    }
    // Part-local slots.
    let mut slot = vec![0 as Wire; c.wires];
    let mut free: Vec<Vec<Wire>> = vec![Vec::new(); parts];
    let mut next: Vec<Wire> = vec![0; parts];
    let take = |p: usize, free: &mut Vec<Vec<Wire>>, next: &mut Vec<Wire>| {
        free[p].pop().unwrap_or_else(|| {
            next[p] += 1;
            next[p] - 1
        })
    };
    for &w in c.inputs.iter().flatten() {
        slot[w as usize] = take(pt(w), &mut free, &mut next);
    }
    // Inputs no gate reads and no output names are dead from the start.
    for &w in c.inputs.iter().flatten() {
        if last[w as usize] == NONE {
            free[pt(w)].push(slot[w as usize]);
        }
    }
    let mut gates = vec![
        Gate::Const {
            value: false,
            out: 0
        };
        c.gates.len()
    ];
    let mut at: Vec<usize> = starts.iter().map(|s| s.0).collect();
    for (k, g) in c.gates.iter().enumerate() {
        let p = pt(g.out());
        let mut read = |w: Wire, free: &mut Vec<Vec<Wire>>| {
            let s = slot[w as usize];
            if last[w as usize] == k as u32 {
                free[p].push(s);
                // A wire read twice by this gate is freed once.
                last[w as usize] = NONE;
            }
            s
        };
        let g2 = match *g {
            Gate::Xor { a, b, .. } => {
                let (sa, sb) = (read(a, &mut free), read(b, &mut free));
                let out = take(p, &mut free, &mut next);
                Gate::Xor { a: sa, b: sb, out }
            }
            Gate::And { a, b, .. } => {
                let (sa, sb) = (read(a, &mut free), read(b, &mut free));
                let out = take(p, &mut free, &mut next);
                Gate::And { a: sa, b: sb, out }
            }
            Gate::Inv { a, .. } => {
                let sa = read(a, &mut free);
                let out = take(p, &mut free, &mut next);
                Gate::Inv { a: sa, out }
            }
            Gate::Const { value, .. } => Gate::Const {
                value,
                out: take(p, &mut free, &mut next),
            },
        };
        slot[g.out() as usize] = g2.out();
        // An output no one reads frees its slot at once.
        if last[g.out() as usize] == NONE {
            free[p].push(g2.out());
        }
        gates[at[p]] = g2;
        at[p] += 1;
    }
    drop(last);
    // Give each part its own range of slots.
    let mut base = vec![0 as Wire; parts];
    for p in 1..parts {
        base[p] = base[p - 1] + next[p - 1];
    }
    let mut out_parts = Vec::with_capacity(parts);
    for p in 0..parts {
        let (g, a, b) = starts[p];
        let range = g..g + count[p];
        let off = base[p];
        if off != 0 {
            for gate in &mut gates[range.clone()] {
                *gate = match *gate {
                    Gate::Xor { a, b, out } => Gate::Xor {
                        a: a + off,
                        b: b + off,
                        out: out + off,
                    },
                    Gate::And { a, b, out } => Gate::And {
                        a: a + off,
                        b: b + off,
                        out: out + off,
                    },
                    Gate::Inv { a, out } => Gate::Inv {
                        a: a + off,
                        out: out + off,
                    },
                    Gate::Const { value, out } => Gate::Const {
                        value,
                        out: out + off,
                    },
                };
            }
        }
        out_parts.push(Part {
            gates: range,
            slots: off..off + next[p],
            first_and: a,
            first_block: b,
        });
    }
    let global = |w: Wire| base[pt(w)] + slot[w as usize];
    let inputs = c
        .inputs
        .iter()
        .map(|ws| ws.iter().map(|&w| global(w)).collect())
        .collect();
    let outputs = c
        .outputs
        .iter()
        .map(|ws| ws.iter().map(|&w| global(w)).collect())
        .collect();
    let wires = next.iter().map(|&n| n as usize).sum();
    (
        Circuit {
            wires,
            inputs,
            outputs,
            gates,
        },
        out_parts,
    )
}

/// The evaluator's threads by default: `TESSERA_EVAL_THREADS` when it is set to a positive
/// number (1 gives the sequential evaluation, to compare), else the machine's available
/// parallelism.
pub fn default_threads() -> usize {
    std::env::var("TESSERA_EVAL_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Evaluate `c` on the active input labels (input-group order) with the whole material in
/// `material`, its parts shared among up to `threads` threads; returns the active output
/// labels (output-group order), the same as [`crate::garble::evaluate_checked`] returns.
pub fn evaluate_parallel(
    c: &Checked,
    inputs: &[Block],
    material: &[u8],
    threads: usize,
) -> Result<Vec<Block>, MpcError> {
    let mut labels = input_labels(c, inputs)?;
    let m = SliceMaterial::open(material)?;
    let want = material_blocks(c);
    if m.blocks() != want {
        return Err(MpcError::Stream(format!(
            "{} blocks of material for a circuit that reads {want}",
            m.blocks()
        )));
    }
    let hash = Tccr::new(m.hash_key());
    // Cut the label array into the parts' slot ranges (contiguous, in order).
    let parts = c.parts();
    let mut slices: Vec<(&Part, &mut [Block])> = Vec::with_capacity(parts.len());
    let mut rest: &mut [Block] = &mut labels;
    for p in parts {
        let (mine, tail) = rest.split_at_mut((p.slots.end - p.slots.start) as usize);
        slices.push((p, mine));
        rest = tail;
    }
    let threads = threads.clamp(1, parts.len().max(1));
    let per = parts.len().div_ceil(threads).max(1);
    let run = &|group: Vec<(&Part, &mut [Block])>| -> Result<(), MpcError> {
        for (p, local) in group {
            let mut src = m.reader_at(p.first_block)?;
            eval_gates(
                &c.gates[p.gates.clone()],
                local,
                p.slots.start,
                p.first_and,
                &hash,
                &mut src,
            )?;
        }
        Ok(())
    };
    let mut groups: Vec<Vec<(&Part, &mut [Block])>> = Vec::new();
    let mut it = slices.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    if groups.len() <= 1 {
        for g in groups {
            run(g)?;
        }
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| s.spawn(move || run(g)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| MpcError::Circuit("an evaluation thread panicked".into()))?
            })
        })?;
    }
    Ok(output_labels(c, &labels))
}
