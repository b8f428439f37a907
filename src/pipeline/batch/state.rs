//! Batch mode's own journal, `batches.jsonl` in the job's state folder, and
//! the splitting of requests into batch input files.
//!
//! The row outcomes of batch mode go to the ordinary journal
//! ([`crate::pipeline::journal`]); this file records the batches, so that a
//! re-run never submits a row that is in a live batch:
//! - `submitting` is written after the input file is uploaded and *before*
//!   the batch is created, with the rows it holds and a random submission
//!   key that also goes into the batch's metadata. A kill between the two
//!   leaves a submission without a batch id, found again by listing the
//!   provider's batches and matching the key.
//! - `created` names the batch id of a submission (again after an
//!   enqueued-token refusal made it wait and be created anew).
//! - `done` closes a submission once the outcomes of its rows are in the
//!   row journal (or it was given up at the deadline).
//!
//! Lines are appended and flushed at once; a torn last line is ignored.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::outcome::RowId;

pub const BATCHES: &str = "batches.jsonl";

/// One line of `batches.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Submitting {
        submission: String,
        file_id: String,
        endpoint: String,
        rows: Vec<RowId>,
        /// The request hash of each row, in `rows` order: the key its
        /// outcome is journaled with ([`crate::pipeline::outcome::Outcome::key`]).
        #[serde(default)]
        keys: Vec<String>,
    },
    Created {
        submission: String,
        batch_id: String,
    },
    Done {
        submission: String,
    },
}

/// A submission not yet done, as the journal knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub submission: String,
    pub file_id: String,
    pub endpoint: String,
    pub rows: Vec<RowId>,
    /// The request hash of each row, in `rows` order.
    pub keys: Vec<String>,
    /// The latest batch created for it, if the journal saw one.
    pub batch_id: Option<String>,
}

/// What earlier runs left in `batches.jsonl`.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Submissions not done, in the order they were made.
    pub open: Vec<Open>,
    /// How many submissions each row has been in (its rounds so far).
    pub rounds: HashMap<RowId, u32>,
}

/// The append-only batch journal.
pub struct BatchJournal {
    path: PathBuf,
    file: File,
}

impl BatchJournal {
    /// Open (creating) `batches.jsonl` in `dir` and read what it holds.
    pub fn open(dir: &Path) -> Result<(BatchJournal, Loaded)> {
        let path = dir.join(BATCHES);
        let loaded = if path.exists() {
            load(&path)?
        } else {
            Loaded::default()
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok((BatchJournal { path, file }, loaded))
    }

    /// Append one record and hand it to the OS.
    pub fn record(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| Error::output(&self.path, e))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

fn load(path: &Path) -> Result<Loaded> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut open: Vec<Open> = Vec::new();
    let mut rounds: HashMap<RowId, u32> = HashMap::new();
    let mut reader = BufReader::new(&file);
    let mut buf = Vec::new();
    let mut good_len: u64 = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        // A torn last line (a kill mid-write) ends the readable part.
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        let Ok(record) = serde_json::from_slice::<Record>(&buf) else {
            break;
        };
        good_len += n as u64;
        match record {
            Record::Submitting {
                submission,
                file_id,
                endpoint,
                rows,
                keys,
            } => {
                for r in &rows {
                    *rounds.entry(*r).or_insert(0) += 1;
                }
                open.push(Open {
                    submission,
                    file_id,
                    endpoint,
                    rows,
                    keys,
                    batch_id: None,
                });
            }
            Record::Created {
                submission,
                batch_id,
            } => {
                if let Some(o) = open.iter_mut().find(|o| o.submission == submission) {
                    o.batch_id = Some(batch_id);
                }
            }
            Record::Done { submission } => open.retain(|o| o.submission != submission),
        }
    }
    // Cut a torn tail so that new records start on a line of their own.
    if file.metadata().map_err(|e| Error::io(path, e))?.len() != good_len {
        file.set_len(good_len).map_err(|e| Error::io(path, e))?;
    }
    Ok(Loaded { open, rounds })
}

/// Cuts a stream of request lines into batch input files of at most
/// `max_requests` lines and `max_bytes` bytes (a single larger line gets a
/// file of its own, for the provider to judge). Shared by batch mode and
/// its dry run, so both count the same files.
#[derive(Debug, Clone)]
pub struct Splitter {
    max_requests: usize,
    max_bytes: u64,
    lines: usize,
    bytes: u64,
}

impl Splitter {
    pub fn new(max_requests: usize, max_bytes: u64) -> Splitter {
        Splitter {
            max_requests: max_requests.max(1),
            max_bytes,
            lines: 0,
            bytes: 0,
        }
    }

    /// Would a line of `len` bytes still fit the current file?
    pub fn fits(&self, len: u64) -> bool {
        self.lines == 0 || (self.lines < self.max_requests && self.bytes + len <= self.max_bytes)
    }

    /// Count a line into the current file.
    pub fn add(&mut self, len: u64) {
        self.lines += 1;
        self.bytes += len;
    }

    /// Start a new file.
    pub fn reset(&mut self) {
        self.lines = 0;
        self.bytes = 0;
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_count_and_by_bytes() {
        let mut s = Splitter::new(3, 100);
        let mut files = vec![];
        for len in [10, 10, 10, 10, 60, 60, 200, 5] {
            if !s.fits(len) {
                files.push((s.lines(), s.bytes()));
                s.reset();
            }
            s.add(len);
        }
        files.push((s.lines(), s.bytes()));
        assert_eq!(files, vec![(3, 30), (2, 70), (1, 60), (1, 200), (1, 5)]);
    }

    #[test]
    fn journal_tracks_open_submissions_and_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, loaded) = BatchJournal::open(dir.path()).unwrap();
        assert!(loaded.open.is_empty());
        let sub = |s: &str, rows: Vec<RowId>| Record::Submitting {
            submission: s.into(),
            file_id: format!("file-{s}"),
            endpoint: "/v1/chat/completions".into(),
            rows,
            keys: Vec::new(),
        };
        j.record(&sub("a", vec![0, 1, 2])).unwrap();
        j.record(&Record::Created {
            submission: "a".into(),
            batch_id: "batch_a".into(),
        })
        .unwrap();
        j.record(&Record::Done {
            submission: "a".into(),
        })
        .unwrap();
        j.record(&sub("b", vec![1])).unwrap();
        j.record(&sub("c", vec![3])).unwrap();
        j.record(&Record::Created {
            submission: "c".into(),
            batch_id: "batch_c".into(),
        })
        .unwrap();
        drop(j);
        // A torn tail is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(BATCHES))
            .unwrap();
        f.write_all(b"{\"event\":\"done\",\"subm").unwrap();
        let (_, loaded) = BatchJournal::open(dir.path()).unwrap();
        let open: Vec<(&str, Option<&str>)> = loaded
            .open
            .iter()
            .map(|o| (o.submission.as_str(), o.batch_id.as_deref()))
            .collect();
        assert_eq!(open, vec![("b", None), ("c", Some("batch_c"))]);
        assert_eq!(loaded.rounds[&1], 2);
        assert_eq!(loaded.rounds[&0], 1);
    }
}
