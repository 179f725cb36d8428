//! `tessera inspect`: a model's layers, costs and integer widths.

use crate::qint_cmd::{V2Layer, v2_layers};
use crate::quant_args::QuantArgs;
use crate::table::Table;
use crate::{Result, human, print_json, resolve_model};
use serde::Serialize;
use tessera_engine::Semantics;
use tessera_engine::quant::{NodeWidth, QuantModel, static_widths};
use tessera_model::stats::stats;

/// Show a model's layers: op, output shape, parameters, MACs, ReLUs and worst-case integer widths.
#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    /// An ONNX file, or the name of a built-in network (see `tessera build --list`).
    model: String,
    /// Largest |input| assumed for the worst-case integer widths.
    #[arg(long, default_value_t = 255.0)]
    input_range: f32,
    #[command(flatten)]
    quant: QuantArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(a: &InspectArgs) -> Result<()> {
    inspect(&a.model, a.input_range, &a.quant, a.json)
}

fn inspect(spec: &str, input_range: f32, quant: &QuantArgs, json: bool) -> Result<()> {
    let g = resolve_model(spec, &quant.import_options())?;
    let st = stats(&g);
    let sem = quant.semantics(&g);
    let v2_layers = match &sem {
        Ok(s @ Semantics::V2 { .. }) => Some(v2_layers(&g, s)?),
        _ => None,
    };
    let widths = QuantModel::new(&g, quant.config()).and_then(|q| static_widths(&q, input_range));
    let gc_k = match &sem {
        Ok(s) => tessera_gc::sound_primes(&g, s, input_range).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            name: &'a str,
            stats: &'a tessera_model::stats::NetStats,
            frac_bits: u32,
            worst_case_widths: Option<Vec<NodeWidth>>,
            integer_semantics_error: Option<String>,
            /// The CRT primes gc needs to hold every value for |input| ≤ the input range
            /// (under v2: for every input).
            gc_sound_primes: Option<usize>,
            gc_error: Option<String>,
            /// The integer semantics, in words.
            semantics: String,
            /// Under v2: per node, the scales, multipliers, shift and clamp bounds.
            v2_layers: Option<Vec<V2Layer>>,
        }
        let (w, e) = match widths {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let (k, ke) = match gc_k {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e.to_string())),
        };
        return print_json(&Out {
            name: &g.name,
            stats: &st,
            frac_bits: quant.frac_bits,
            worst_case_widths: w,
            integer_semantics_error: e,
            gc_sound_primes: k,
            gc_error: ke,
            semantics: sem
                .as_ref()
                .map_or_else(|e| e.to_string(), Semantics::label),
            v2_layers,
        });
    }
    println!(
        "model {} — inputs {:?}, outputs {:?}",
        g.name,
        g.inputs.iter().map(|&i| g.shape(i)).collect::<Vec<_>>(),
        g.outputs.iter().map(|&i| g.shape(i)).collect::<Vec<_>>()
    );
    let mut t = Table::new(&[
        "node",
        "op",
        "output shape",
        "params",
        "MACs",
        "ReLUs",
        "out bits",
        "acc bits",
    ]);
    let wv = widths.as_ref().ok();
    for (i, l) in st.layers.iter().enumerate() {
        let w = wv.and_then(|w| w.get(i + 1));
        t.row(vec![
            l.name.clone(),
            l.op.clone(),
            format!("{:?}", l.shape),
            human(l.params),
            human(l.macs),
            human(l.relus),
            w.map_or("-".into(), |w| w.out_bits().to_string()),
            w.map_or("-".into(), |w| w.acc_bits().to_string()),
        ]);
    }
    t.row(vec![
        "total".into(),
        String::new(),
        String::new(),
        human(st.params),
        human(st.macs),
        st.relus.to_string(),
        String::new(),
        String::new(),
    ]);
    println!("{}", t.render());
    match widths {
        Ok(_) => println!(
            "integer widths: worst case for |input| ≤ {input_range} at f = {} (signed bits; `eval` reports the widths real data reach)",
            quant.frac_bits
        ),
        // Under v2 the power-of-two widths are only a side note.
        Err(e) if v2_layers.is_some() => {
            println!("(the power-of-two semantics cannot run this model: {e})")
        }
        Err(e) => println!("integer semantics: not available for this model: {e}"),
    }
    if let Some(layers) = &v2_layers {
        let mut t = Table::new(&[
            "node",
            "v2 op",
            "out scale",
            "interval",
            "shift",
            "multipliers",
            "max |w|",
        ]);
        for l in layers {
            t.row(vec![
                l.node.clone(),
                l.op.into(),
                format!("{:.4e}", l.scale),
                format!("[{}, {}]", l.lo, l.hi),
                l.shift.map_or("-".into(), |n| n.to_string()),
                l.mult.map_or("-".into(), |[a, b]| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}..{b}")
                    }
                }),
                l.weight_max.map_or("-".into(), |w| w.to_string()),
            ]);
        }
        if let Ok(s) = &sem {
            println!("integer semantics {}:\n{}", s.label(), t.render());
        }
    }
    match (gc_k, &sem) {
        (Ok(k), Ok(Semantics::V2 { .. })) => println!(
            "gc: sound k = {k} CRT primes for every input (v2 saturates; what `--scheme gc` picks)"
        ),
        (Ok(k), _) => println!(
            "gc: sound k = {k} CRT primes for |input| ≤ {input_range} at f = {} (what `--scheme gc` picks)",
            quant.frac_bits
        ),
        (Err(e), _) => println!("{e}"),
    }
    Ok(())
}
