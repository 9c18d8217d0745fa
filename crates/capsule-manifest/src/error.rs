//! The one error type of this crate.

/// Why a `capsule.json` or `result.json` was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is bigger than [`crate::MAX_JSON_BYTES`].
    #[error("{file} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// `capsule.json` or `result.json`.
        file: &'static str,
        /// Size seen (at least `limit + 1`).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file could not be read.
    #[error("cannot read {file}")]
    Read {
        /// `capsule.json` or `result.json`.
        file: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, or JSON that does not fit the schema (unknown or missing field, wrong type).
    #[error("{file} does not match schema version {version}: {source}")]
    Json {
        /// `capsule.json` or `result.json`.
        file: &'static str,
        /// The schema version it was checked against.
        version: u32,
        /// serde_json's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// No `schema_version` field, or not a number.
    #[error("{file} has no numeric schema_version field (found {found}); hint: it must be written by a vm-capsule hook")]
    MissingSchemaVersion {
        /// `capsule.json` or `result.json`.
        file: &'static str,
        /// What was found instead (`nothing` or the JSON value).
        found: String,
    },
    /// A schema version this build does not understand.
    #[error("{file} has schema_version {found}, but this build understands only {supported}; hint: use a capsule-init and hooks from the same vm-capsule release")]
    UnsupportedSchemaVersion {
        /// `capsule.json` or `result.json`.
        file: &'static str,
        /// The version in the file.
        found: u64,
        /// [`crate::SCHEMA_VERSION`].
        supported: u32,
    },
    /// A field has a value the schema forbids.
    #[error("{file} field `{field}` is invalid ({value:?}): {reason}")]
    Invalid {
        /// `capsule.json` or `result.json`.
        file: &'static str,
        /// The field, with an index where it is a list (`argv[2]`).
        field: String,
        /// The offending value, shortened to 200 characters.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Build an [`Error::Invalid`], shortening the value for the message.
    pub fn invalid(
        file: &'static str,
        field: impl Into<String>,
        value: &str,
        reason: impl Into<String>,
    ) -> Self {
        let value = if value.chars().count() > 200 {
            let mut v: String = value.chars().take(200).collect();
            v.push('…');
            v
        } else {
            value.to_owned()
        };
        Error::Invalid {
            file,
            field: field.into(),
            value,
            reason: reason.into(),
        }
    }
}
