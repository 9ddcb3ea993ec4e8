//! Why a spec was refused. Each error names the field (as a path such as
//! `python.packages[1]`) and what was expected there.

use std::path::PathBuf;

/// Errors of [`super::Spec`] parsing and validation.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The document is not TOML (or JSON) at all.
    #[error("spec is not valid: {0}")]
    Syntax(String),
    /// A field is unknown, missing, of the wrong type, or has a value the
    /// builder cannot use.
    #[error("spec field `{field}`: {detail}")]
    Field {
        /// Path of the field (`.` between names, `[i]` for list items;
        /// `.` for the document itself).
        field: String,
        /// What was wrong and what was expected.
        detail: String,
    },
    /// The document exceeds [`super::MAX_SPEC_BYTES`].
    #[error("spec of {0} bytes exceeds the limit of {limit} bytes", limit = super::MAX_SPEC_BYTES)]
    TooLarge(usize),
    /// The spec file could not be read.
    #[error("cannot read spec {path}: {detail}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

impl SpecError {
    /// A field error.
    pub(crate) fn field(field: impl Into<String>, detail: impl Into<String>) -> SpecError {
        SpecError::Field {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// A serde error with the path where it happened.
    pub(crate) fn from_path<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> SpecError {
        SpecError::Field {
            field: e.path().to_string(),
            detail: e.inner().to_string(),
        }
    }
}
