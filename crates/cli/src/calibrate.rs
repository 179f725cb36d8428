//! `--gc-calibrated`: the opt-in, not sound, choice of the gc scheme's CRT range from widths
//! measured on a user's data (see `tessera_gc::GcOptions`).

use crate::{CliError, QuantArgs, Result, parse_dataset};
use rayon::prelude::*;
use tessera_engine::quant::{NodeWidth, QuantModel, merge_widths};
use tessera_gc::Calibration;
use tessera_model::Graph;

/// The calibration the user asked for, if any: the widths every node reaches on the data set
/// named by `--gc-calibrated`, with `--gc-margin-bits` on top. Prints that the result will not be
/// sound.
pub fn gc_calibration(g: &Graph, quant: &QuantArgs) -> Result<Option<Calibration>> {
    let Some(spec) = &quant.gc_calibrated else {
        return Ok(None);
    };
    let d = parse_dataset(spec, &quant.gc_calibration_data)?;
    if d.count == 0 {
        return Err(CliError::Usage(format!(
            "--gc-calibrated {spec}: the data set is empty; name a data set with images"
        )));
    }
    let qm = QuantModel::new(g, quant.config())?;
    let runs: Vec<Vec<NodeWidth>> = (0..d.count)
        .into_par_iter()
        .map(|i| -> Result<Vec<NodeWidth>> {
            let x = d
                .image(i)
                .ok_or_else(|| CliError::Usage(format!("image {i} of {spec} is missing")))?;
            Ok(qm.run(std::slice::from_ref(&x))?.widths)
        })
        .collect::<Result<_>>()?;
    let mut widths = Vec::new();
    for w in &runs {
        merge_widths(&mut widths, w);
    }
    eprintln!(
        "gc: CALIBRATED CRT range from {} images of {spec} + {} margin bit(s): NOT SOUND — an input \
         that drives a value past the measured range returns a wrong prediction as valid; results \
         are labelled '{}'",
        d.count,
        quant.gc_margin_bits,
        tessera_gc::CALIBRATED_LABEL
    );
    Ok(Some(Calibration {
        widths,
        margin_bits: quant.gc_margin_bits,
        source: format!("{spec} ({} images)", d.count),
    }))
}
