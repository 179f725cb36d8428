//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong while loading inputs or simulating. Every message says what was
/// wrong and what to do about it; none of these is ever a panic.
#[derive(Debug, Error)]
pub enum SimError {
    /// A file could not be read.
    #[error(
        "cannot read {path}: {source}; pass the path of an existing JSON file or one of the \
         built-in names ({builtins})"
    )]
    Io {
        /// The path as given.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
        /// The built-in names that could have been given instead, comma-separated.
        builtins: String,
    },

    /// A file is not valid JSON or does not have the expected fields and types.
    #[error(
        "{file} is not a valid {what} file: {source}; fix the JSON (every field is documented \
         on tessera_sim::{what})"
    )]
    Json {
        /// The file (or built-in name) being parsed.
        file: String,
        /// Which type was expected: `Profile`, `CostsFile` or `Deployment`.
        what: &'static str,
        /// serde_json's error, with line and column.
        source: serde_json::Error,
    },

    /// A hardware profile parsed but one of its values is out of range.
    #[error("{file}: profile field `{field}` is {value}, but {rule}; correct it in the file")]
    InvalidProfile {
        /// The file (or built-in name) the profile came from.
        file: String,
        /// The offending field.
        field: &'static str,
        /// The value found, as text.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },

    /// A scheme's cost record is out of range or inconsistent.
    #[error("{file}: scheme `{scheme}`: `{field}` {problem}; correct it in the file")]
    InvalidCosts {
        /// The file (or built-in name) the costs came from.
        file: String,
        /// The scheme's name.
        scheme: String,
        /// The offending field (dotted path for nested fields, e.g. `online.client_s`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A deployment description is out of range.
    #[error("{file}: deployment field `{field}` {problem}; correct it in the file")]
    InvalidDeployment {
        /// The file (or built-in name) the deployment came from.
        file: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// An argument passed to a simulation function is out of range.
    #[error("invalid argument `{arg}`: {problem}")]
    InvalidArgument {
        /// The argument's name.
        arg: &'static str,
        /// What is wrong with it and what to pass instead.
        problem: String,
    },
}
