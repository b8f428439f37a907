//! A job's Delta Lake settings, checked: how a Delta output takes the
//! job's rows (`--write-mode`, `--merge-key`) and which version of a Delta
//! input is read (`--input-version`, `--input-timestamp`). Set for a job
//! that has no Delta table on that side, they are mistakes, not ignored.
//! The tables themselves are read and written by `pipeline::delta`.

use crate::error::{Error, Result};
use crate::job::settings::{InputFormat, JobSettings, OutputFormat, WriteMode};

/// The Delta settings of a job, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSettings {
    pub write_mode: WriteMode,
    /// `--write-mode merge`: the input columns that identify a row.
    pub merge_key: Vec<String>,
    /// Which version of a Delta input to read (the latest when neither).
    pub input_version: Option<u64>,
    /// RFC 3339; the table resolves it to a version when it is opened.
    pub input_timestamp: Option<String>,
}

impl TableSettings {
    pub fn from_settings(s: &JobSettings) -> Result<TableSettings> {
        let delta_out = s.output_format == Some(OutputFormat::Delta);
        let delta_in = s.input_format == Some(InputFormat::Delta);
        let write_mode = s.write_mode.unwrap_or_default();
        let merge_key: Vec<String> = s
            .merge_key
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if !delta_out && s.write_mode.is_some() {
            return Err(Error::Config(
                "--write-mode applies to a Delta output: add --output-format delta".into(),
            ));
        }
        match (write_mode, merge_key.is_empty()) {
            (WriteMode::Merge, true) => {
                return Err(Error::Config(
                    "--write-mode merge needs --merge-key COL[,COL...]: the input columns that \
                     identify a row"
                        .into(),
                ))
            }
            (WriteMode::Append | WriteMode::Overwrite, false) => {
                return Err(Error::Config(
                    "--merge-key applies to --write-mode merge".into(),
                ))
            }
            _ => {}
        }
        if !delta_in && (s.input_version.is_some() || s.input_timestamp.is_some()) {
            return Err(Error::Config(
                "--input-version and --input-timestamp read a Delta table: add --input-format \
                 delta"
                    .into(),
            ));
        }
        if s.input_version.is_some() && s.input_timestamp.is_some() {
            return Err(Error::Config(
                "give --input-version or --input-timestamp, not both".into(),
            ));
        }
        if (delta_in || delta_out) && !cfg!(feature = "delta") {
            return Err(Error::Config(
                "this aiq was built without Delta Lake: build it with `--features delta` (or \
                 install the Python package, which includes it)"
                    .into(),
            ));
        }
        Ok(TableSettings {
            write_mode,
            merge_key,
            input_version: s.input_version,
            input_timestamp: s.input_timestamp.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_settings_without_a_delta_table_are_refused() {
        let s = JobSettings {
            write_mode: Some(WriteMode::Merge),
            ..JobSettings::default()
        };
        assert!(TableSettings::from_settings(&s).is_err());
        let s = JobSettings {
            output_format: Some(OutputFormat::Delta),
            write_mode: Some(WriteMode::Merge),
            ..JobSettings::default()
        };
        let e = TableSettings::from_settings(&s).unwrap_err().to_string();
        assert!(e.contains("--merge-key"), "{e}");
        let s = JobSettings {
            input_version: Some(1),
            ..JobSettings::default()
        };
        assert!(TableSettings::from_settings(&s).is_err());
    }
}
