//! The per-VM config: parsing, defaults and validation.
//!
//! `load` turns the text of one YAML file into a `VmConfig`, or into a
//! `ConfigError` that lists every problem as `FILE:LINE:COL: FIELD: message`.
//! Nothing here changes the system; it only checks that named files exist
//! and that secret files parse (their contents never reach a message).

mod input;
mod locate;
mod model;
mod types;
mod units;
mod validate;

#[cfg(test)]
mod fuzz_tests;

use std::fmt;
use std::path::Path;

use crate::host::HostLimits;

pub use input::MAX_CONFIG_BYTES;
pub use locate::{FieldLocations, Position};
pub use model::*;
pub use types::{Fwmark, IFNAME_MAX_BYTES, ISTIO_MARKS, IfName, MacAddr};
pub use units::{ByteSize, HumanDuration};
pub use validate::{FileChecks, ISTIO_RESERVED_PORTS, Issue, Severity};

/// The example VM, compiled in: what `vmpod` uses when no file is given.
pub const EMBEDDED_EXAMPLE: &str = include_str!("../../domains/example.yaml");
/// The name under which the embedded example is reported.
pub const EMBEDDED_EXAMPLE_NAME: &str = "<embedded domains/example.yaml>";

/// One problem, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub position: Option<Position>,
    /// Field path such as `network.ingress[1].port`; empty for a syntax
    /// error that belongs to no field.
    pub field: String,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if self.severity == Severity::Warning {
            write!(f, ": warning")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The config could not be used. Holds every error found (and warnings).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A config that passed validation, with any warnings about it.
///
/// There is no separate `ValidConfig` struct: the values renderers need
/// typed ([`IfName`], [`MacAddr`], [`Fwmark`], [`ByteSize`], ...) are typed
/// in [`VmConfig`] itself and checked while serde reads them, and the
/// cross-field rules run in `validate` before a `Loaded` exists. A second
/// struct would repeat every field; [`ValidConfig`] names the result.
#[derive(Debug)]
pub struct Loaded {
    pub config: VmConfig,
    pub warnings: Vec<Diagnostic>,
}

/// A config that `load` accepted. An alias, not a newtype: see [`Loaded`].
pub type ValidConfig = VmConfig;

/// Read and validate the file at `path`, without host limits (see
/// [`load_file_on_host`]).
pub fn load_file(path: &Path, files: FileChecks) -> Result<Loaded, ConfigError> {
    load_file_on_host(path, files, &HostLimits::default())
}

/// Read and validate the file at `path`; memory and cpus must also fit
/// `limits` (what `check`, `render` and `run` detect on the host). The file
/// must be a regular file of at most [`MAX_CONFIG_BYTES`], refused before
/// reading otherwise.
pub fn load_file_on_host(
    path: &Path,
    files: FileChecks,
    limits: &HostLimits,
) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = input::read_bounded(path).map_err(|message| ConfigError {
        diagnostics: vec![Diagnostic {
            file: file.clone(),
            position: None,
            field: String::new(),
            message,
            severity: Severity::Error,
        }],
    })?;
    load_on_host(&file, &text, files, limits)
}

/// Parse and validate `text`, reporting problems against `file`, without
/// host limits: what tests and renderers of fixed configs use.
pub fn load(file: &str, text: &str, files: FileChecks) -> Result<Loaded, ConfigError> {
    load_on_host(file, text, files, &HostLimits::default())
}

/// Parse and validate `text`; memory and cpus must also fit `limits`.
pub fn load_on_host(
    file: &str,
    text: &str,
    files: FileChecks,
    limits: &HostLimits,
) -> Result<Loaded, ConfigError> {
    let locations = FieldLocations::index(text);
    let config: VmConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError {
        diagnostics: vec![parse_diagnostic(file, &locations, &e)],
    })?;
    let (errors, warnings): (Vec<_>, Vec<_>) = validate::validate(&config, files, limits)
        .into_iter()
        .map(|issue| Diagnostic {
            file: file.to_string(),
            position: locations.position(&issue.field),
            field: issue.field,
            message: issue.message,
            severity: issue.severity,
        })
        .partition(|d| d.severity == Severity::Error);
    if errors.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(ConfigError {
            diagnostics: errors.into_iter().chain(warnings).collect(),
        })
    }
}

fn parse_diagnostic(file: &str, locations: &FieldLocations, e: &serde_saphyr::Error) -> Diagnostic {
    let position = e.location().filter(|l| l.line() > 0).map(|l| Position {
        line: l.line() as usize,
        column: l.column() as usize,
    });
    let field = position
        .and_then(|p| locations.field_at(p))
        .unwrap_or_default()
        .to_string();
    // The crate's Display adds the position and a source snippet; we print
    // our own position, so keep only the first line of the message.
    let rendered = e.without_snippet().to_string();
    let message = strip_location_suffix(rendered.lines().next().unwrap_or("invalid YAML"));
    Diagnostic {
        file: file.to_string(),
        position,
        field,
        message,
        severity: Severity::Error,
    }
}

/// serde-saphyr appends " at line L, column C"; we print the position first.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
