//! Building a scheme from the command line: refusing one that cannot run the model before any
//! work, and starting the one asked for (one arm per scheme).

use crate::quant_args::QuantArgs;
use crate::{CliError, Result, calibrate, human, progress};
use tessera_engine::Semantics;
use tessera_model::Graph;
use tessera_schemes::{Asym, Gc, GcOptions, Lhe, Plain, SCHEMES, Scheme, Tee, TeeOptions, TwoPc};

/// Show the background garbler's progress until the first garbling is ready.
pub(crate) fn garble_bar(b: &tessera_gc::GcBackend) {
    let pb = progress(1, "garbling");
    loop {
        let p = b.progress();
        if p.garbled > 0 {
            break;
        }
        if p.steps_total > 0 {
            pb.set_length(p.steps_total as u64);
            pb.set_position(p.steps_done as u64);
        }
        if b.wait_ready(std::time::Duration::from_millis(200)).is_err() {
            break;
        }
        if b.progress().garbled > 0 {
            break;
        }
    }
    pb.finish_and_clear();
}

/// Refuses, before any work (input, data set, enclave, worker), a scheme that cannot run `g`:
/// the message names the node and op it cannot run and the schemes that can.
pub(crate) fn require_scheme(name: &str, g: &Graph, sem: &Semantics) -> Result<()> {
    if !SCHEMES.contains(&name) {
        return Err(CliError::Usage(format!(
            "unknown scheme '{name}'; this build offers: {}",
            SCHEMES.join(", ")
        )));
    }
    match tessera_schemes::check(name, g, sem) {
        Ok(()) => Ok(()),
        Err(e) => {
            let can = tessera_schemes::schemes_for(g, sem);
            Err(CliError::Usage(format!(
                "scheme {name} cannot run this model: {e}; {}",
                if can.is_empty() {
                    "no scheme of this build can (only the float engine runs it; every \
                     scheme needs the integer semantics)"
                        .to_string()
                } else {
                    format!("schemes that can: {}", can.join(", "))
                }
            )))
        }
    }
}

pub(crate) fn make_scheme(
    name: &str,
    g: &Graph,
    quant: &QuantArgs,
    sem: &Semantics,
) -> Result<Box<dyn Scheme>> {
    match name {
        "plain" => Ok(Box::new(Plain::new(g, sem)?)),
        "tee" => {
            let t = Tee::new(g, sem, TeeOptions::default())?;
            eprintln!("tee: {}", t.describe());
            Ok(Box::new(t))
        }
        "asym" => Ok(Box::new(Asym::new(g, sem, &asym_options(g, quant)?)?)),
        "gc" => {
            let t = Gc::new(
                g,
                GcOptions {
                    semantics: sem.clone(),
                    primes: quant.gc_primes,
                    calibration: calibrate::gc_calibration(g, quant)?,
                    ..GcOptions::default()
                },
            )?;
            garble_bar(t.backend());
            let st = t.stats();
            eprintln!(
                "gc: k = {} CRT primes ({}), {} of garbled material per inference, the enclave keeps {} per garbling",
                st.primes,
                match &st.calibrated {
                    Some(src) => format!("{}: calibrated on {src}", tessera_gc::CALIBRATED_LABEL),
                    None => "sound for every input in range".into(),
                },
                human(st.material_bytes),
                human(st.kept_bytes)
            );
            Ok(Box::new(t))
        }
        "lhe" => {
            let t = Lhe::new(g, sem)?;
            let u = t.upload();
            eprintln!(
                "lhe: {}; the model owner uploaded {} ciphertexts ({})",
                t.params(),
                u.ciphertexts,
                human(u.bytes_stored)
            );
            Ok(Box::new(t))
        }
        "2pc" => {
            let variant: tessera_twopc::session::Variant = quant
                .variant
                .as_deref()
                .unwrap_or("server-garbler")
                .parse()
                .map_err(CliError::Usage)?;
            let t = TwoPc::with_variant(g, sem, variant)?;
            eprintln!(
                "2pc ({}, both parties in this process): {}",
                variant.name(),
                t.describe()
            );
            Ok(Box::new(t))
        }
        other => Err(CliError::Usage(format!(
            "unknown scheme '{other}'; this build offers: {}",
            SCHEMES.join(", ")
        ))),
    }
}

/// The asym split a user asked for: the basis, and the ranks of --trusted-share / --energy
/// chosen on --calibrate's data (or generated inputs), printed per layer.
pub(crate) fn asym_options(g: &Graph, quant: &QuantArgs) -> Result<tessera_schemes::AsymOptions> {
    let opts = tessera_schemes::AsymOptions {
        basis: if quant.basis == "batch" {
            tessera_asym::Basis::Batch
        } else {
            tessera_asym::Basis::PerSample
        },
        ..tessera_schemes::AsymOptions::default()
    };
    let target = match (quant.trusted_share, quant.energy) {
        (Some(s), _) => tessera_asym::Target::TrustedShare(s),
        (None, Some(e)) => tessera_asym::Target::Energy(e),
        (None, None) => return Ok(opts),
    };
    let (xs, source) = match &quant.calibrate {
        Some(spec) => {
            let d = crate::parse_dataset(spec, &quant.calibration_data)?;
            let xs: Vec<_> = (0..d.count.min(16)).filter_map(|i| d.image(i)).collect();
            (xs, format!("{} images of {spec}", d.count.min(16)))
        }
        None => (
            tessera_engine::qint::default_calibration_inputs(g, 0.0, quant.calibrate_range, 8, 1)?,
            format!(
                "8 generated inputs uniform in [0, {}] (pass --calibrate DATA for ranks that fit your data)",
                quant.calibrate_range
            ),
        ),
    };
    let sel = crate::train_cmd::choose_ranks(g, &xs, &opts, target)?;
    eprintln!(
        "asym: {}",
        crate::asym_figures::selection_text(&sel, &format!("estimated on {source}"))
    );
    Ok(tessera_schemes::AsymOptions {
        rank: sel.rule(),
        ..opts
    })
}
