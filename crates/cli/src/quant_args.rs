//! The options every model-running command shares: integer semantics, calibration, gc's CRT
//! range, the 2pc variant, and the import budgets.

use std::path::PathBuf;
use tessera_engine::quant::QuantConfig;
use tessera_model::ImportOptions;

#[derive(clap::Args, Clone)]
pub(crate) struct QuantArgs {
    /// Integer semantics every scheme reproduces: `pow2` (one global scale 2^f, --frac-bits) or
    /// `v2` (per-channel --weight-bits weights, calibrated per-tensor --act-bits activations,
    /// requantization by a --mult-bits multiplier and a shift, saturation after every layer).
    /// `auto`: v2 with the model's own scales for an int8 model (QuantizeLinear, QLinearConv…),
    /// v2 calibrated on the data when --calibrate is given, pow2 otherwise (v2 without
    /// calibration data would calibrate on generated inputs, which is coarse).
    #[arg(long, default_value = "auto", value_parser = ["auto", "pow2", "v2"])]
    pub(crate) semantics: String,
    /// pow2: fractional bits f of the fixed-point format (values are integers at scale 2^f).
    #[arg(long, default_value_t = tessera_engine::quant::DEFAULT_FRAC_BITS)]
    pub(crate) frac_bits: u32,
    /// v2: calibrate the activation scales on this data set (mnist[:N] from --calibration-data,
    /// or glyphs[:N]). Default: 16 seeded generated inputs uniform in [0, --calibrate-range],
    /// which gives coarser scales than real data.
    #[arg(long, value_name = "DATA")]
    pub(crate) calibrate: Option<String>,
    /// v2: the MNIST directory --calibrate mnist reads.
    #[arg(long, default_value = "../shared/data/mnist-t10k", value_name = "DIR")]
    pub(crate) calibration_data: PathBuf,
    /// v2: largest input value of the generated calibration inputs (when --calibrate is absent).
    #[arg(long, default_value_t = 255.0, value_name = "R")]
    pub(crate) calibrate_range: f32,
    /// v2: weight bits (signed, per output channel).
    #[arg(long, default_value_t = 8)]
    pub(crate) weight_bits: u32,
    /// v2: activation bits (unsigned after ReLU, else signed).
    #[arg(long, default_value_t = 8)]
    pub(crate) act_bits: u32,
    /// v2: bits of the output logits.
    #[arg(long, default_value_t = 16)]
    pub(crate) out_bits: u32,
    /// v2: multiplier bits B of every requantization (smaller: a smaller gc CRT range; larger:
    /// finer per-channel weight scales).
    #[arg(long, default_value_t = tessera_engine::qint::DEFAULT_MULT_BITS)]
    pub(crate) mult_bits: u32,
    /// Reject any integer (activation or accumulator) wider than this many signed bits.
    #[arg(long)]
    pub(crate) max_bits: Option<u32>,
    /// gc: number of CRT primes k (default: the smallest that holds the worst case of every value
    /// for inputs up to the input range, 255; a k below that is refused unless --gc-calibrated).
    #[arg(long)]
    pub(crate) gc_primes: Option<usize>,
    /// gc, opt-in and NOT SOUND: choose k from the widths the model reaches on this data set
    /// (mnist[:N] from --gc-calibration-data, or glyphs[:N]) plus --gc-margin-bits; every result
    /// is labelled "calibrated, not sound", and inputs wider than the data's are refused.
    #[arg(long, value_name = "DATA")]
    pub(crate) gc_calibrated: Option<String>,
    /// gc: the MNIST directory --gc-calibrated mnist reads.
    #[arg(long, default_value = "../shared/data/mnist-t10k", value_name = "DIR")]
    pub(crate) gc_calibration_data: PathBuf,
    /// gc: bits of range added above the calibrated widths.
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub(crate) gc_margin_bits: u32,
    /// 2pc: which party garbles — server-garbler (Delphi: the server garbles offline, the
    /// client evaluates) or client-garbler (CryptoNite: the client garbles, the server
    /// evaluates, less online traffic and client storage). Default for run/eval/demo:
    /// server-garbler; `server --scheme 2pc` without it serves whichever a client asks for.
    #[arg(long, value_parser = ["server-garbler", "client-garbler"])]
    pub(crate) variant: Option<String>,
    /// asym: keep at most this fraction of the network's multiply-adds in the enclave (e.g.
    /// 0.09): per-layer ranks, and which layers stay whole, chosen on --calibrate's data (or 8
    /// generated inputs) with the least residual energy; the choice is printed per layer.
    /// Default: AsymML's rank schedule 2, 4, … 32.
    #[arg(long, value_name = "S", conflicts_with = "energy")]
    pub(crate) trusted_share: Option<f64>,
    /// asym: the other way round — per-layer ranks whose estimated residual energy ‖R‖²/‖X‖²
    /// is at most E (e.g. 0.1), at the least trusted work.
    #[arg(long, value_name = "E")]
    pub(crate) energy: Option<f64>,
    /// asym: one low-rank basis per sample (AsymML's form) or per batch (the fold W·U paid once
    /// per batch; the energy bound then holds for the batch, not each sample).
    #[arg(long, default_value = "sample", value_parser = ["sample", "batch"])]
    pub(crate) basis: String,
    /// Memory a model may need when it is loaded, in bytes (K, M, G suffixes: powers of 1024),
    /// per layer and in all. A model over it is refused at import, naming the layer. Default:
    /// 2 GiB per layer, 4 GiB in all.
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) max_memory: Option<u64>,
    /// Work (multiply-accumulates and window reads per inference) a loaded model may need, per
    /// layer and in all. Default: 2^36 per layer, 2^38 in all.
    #[arg(long)]
    pub(crate) max_macs: Option<u64>,
}

/// Bytes with an optional K, M or G (powers of 1024) suffix.
pub(crate) fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(1 << shift))
        .ok_or_else(|| format!("'{s}' is not a byte count (e.g. 8G, 512M, 1073741824)"))
}

impl QuantArgs {
    /// Import options with the budgets of --max-memory and --max-macs.
    pub(crate) fn import_options(&self) -> ImportOptions {
        let mut limits = tessera_model::ImportLimits::default();
        if let Some(b) = self.max_memory {
            limits = limits.with_max_memory(b);
        }
        if let Some(m) = self.max_macs {
            limits = limits.with_max_macs(m);
        }
        ImportOptions {
            limits,
            ..Default::default()
        }
    }

    pub(crate) fn config(&self) -> QuantConfig {
        QuantConfig {
            frac_bits: self.frac_bits,
            max_bits: self.max_bits,
        }
    }
}
