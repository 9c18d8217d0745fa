//! Versioned JSON reading and writing shared by both files.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, MAX_JSON_BYTES, SCHEMA_VERSION};

/// Only the version field, so an unknown version is reported as such rather than as an
/// unknown-field error from the strict schema.
#[derive(Deserialize)]
struct VersionProbe {
    schema_version: Option<serde_json::Value>,
}

/// Parse `bytes` as schema [`SCHEMA_VERSION`] of `file`, after checking size and version.
pub(crate) fn from_slice<T: DeserializeOwned>(
    file: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    let version = schema_version(file, bytes, &[SCHEMA_VERSION])?;
    parse(file, version, bytes)
}

/// Parse `bytes` as schema `version` of `file` (its version already checked).
pub(crate) fn parse<T: DeserializeOwned>(
    file: &'static str,
    version: u32,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        file,
        version,
        source,
    })
}

/// Check the size of `bytes` and return its `schema_version`, one of `supported` (the last
/// is the newest, named in the error).
pub(crate) fn schema_version(
    file: &'static str,
    bytes: &[u8],
    supported: &[u32],
) -> Result<u32, Error> {
    let newest = supported.last().copied().unwrap_or(SCHEMA_VERSION);
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > MAX_JSON_BYTES {
        return Err(Error::TooLarge {
            file,
            size,
            limit: MAX_JSON_BYTES,
        });
    }
    let json_err = |source| Error::Json {
        file,
        version: newest,
        source,
    };
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(json_err)?;
    match probe.schema_version {
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(v) => match supported.iter().find(|s| u64::from(**s) == v) {
                Some(version) => Ok(*version),
                None => Err(Error::UnsupportedSchemaVersion {
                    file,
                    found: v,
                    supported: newest,
                }),
            },
            None => Err(Error::MissingSchemaVersion {
                file,
                found: n.to_string(),
            }),
        },
        Some(other) => Err(Error::MissingSchemaVersion {
            file,
            found: other.to_string(),
        }),
        None => Err(Error::MissingSchemaVersion {
            file,
            found: "nothing".into(),
        }),
    }
}

/// Read at most [`MAX_JSON_BYTES`] + 1 bytes from `reader`.
pub(crate) fn read_bounded(file: &'static str, reader: impl Read) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    reader
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| Error::Read { file, source })?;
    Ok(buf)
}

/// Read at most [`MAX_JSON_BYTES`] + 1 bytes from `reader`, then parse as [`from_slice`].
pub(crate) fn from_reader<T: DeserializeOwned>(
    file: &'static str,
    reader: impl Read,
) -> Result<T, Error> {
    from_slice(file, &read_bounded(file, reader)?)
}

/// Pretty JSON with a trailing newline (easy to read with `mtype`).
pub(crate) fn to_vec<T: Serialize>(
    file: &'static str,
    version: u32,
    value: &T,
) -> Result<Vec<u8>, Error> {
    let mut out = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        file,
        version,
        source,
    })?;
    out.push(b'\n');
    Ok(out)
}
