//! Call journal: answers of finished calls, keyed by what was asked, shared
//! by every process of a job.
//!
//! The row journal ([`crate::pipeline::journal`]) resumes one run by row
//! number. This one serves what row numbers cannot: `aiq sql` (rows have no
//! stable number across query plans), shards and Spark or Ray tasks that are
//! retried, run twice speculatively, or re-run as a whole job. A call's key
//! is a blake3 hash of a fingerprint (the settings that change how a reply
//! is read: endpoint as written, result type, function...) and its request
//! body, so any process asking the same question finds the answer.
//!
//! Many processes write at once, some are killed mid-write. So the folder
//! holds one file per writer (per task attempt), created on its first
//! answer with a name no other process can pick and only ever appended to
//! by it; nothing is rewritten or deleted while a job runs. Readers load
//! every file (or those of one scope) and merge them: two writers that
//! answered the same call hold equivalent answers, either will do. A line
//! torn by a kill, or still being written by a live process, does not parse
//! and is skipped. Only successful answers are kept: a failed row is asked
//! again.
//!
//! The merged journal is held in memory: one entry per answered call
//! (~100 bytes plus the answer). A scope (a shard, a Spark partition) bounds
//! what one reader loads to its own part of the job.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::pipeline::outcome::{Outcome, Usage};
use crate::pipeline::render::Call;

/// One answered call (one row of it, for calls with several rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub result: Value,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// The key of row `part` of a call with `body`, under `fingerprint`. Row 0
/// has the key of the whole body, so single-row calls (almost all) key on
/// exactly what was sent.
pub fn key(fingerprint: &str, body: &[u8], part: usize) -> String {
    let mut h = blake3::Hasher::new();
    h.update(fingerprint.as_bytes());
    h.update(&[0]);
    h.update(body);
    if part > 0 {
        h.update(&[0]);
        h.update(&(part as u64).to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The key of each row of `call`, in `call.rows` order: what the row
/// journal keeps beside each outcome, so that a resume can tell a row whose
/// request is unchanged from one whose input changed.
pub fn row_keys(fingerprint: &str, call: &Call) -> Vec<String> {
    (0..call.rows.len())
        .map(|i| key(fingerprint, &call.body, i))
        .collect()
}

pub struct CallJournal {
    dir: PathBuf,
    /// This writer's own file, made on the first answer (a run that answers
    /// nothing leaves nothing behind).
    own: PathBuf,
    file: Mutex<Option<File>>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl CallJournal {
    /// Load every answer in `dir` (only `scope`'s, when given) and prepare
    /// this process's own file there. The folder is made if missing.
    pub fn open(dir: &Path, scope: Option<&str>) -> Result<CallJournal> {
        let prefix = match scope {
            Some(s)
                if !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                s
            }
            Some(s) => {
                return Err(Error::Config(format!(
                    "call journal scope `{s}`: use letters, digits, - and _ only"
                )))
            }
            None => "calls",
        };
        fs::create_dir_all(dir).map_err(|e| {
            Error::output(dir, format!("cannot create the call journal folder: {e}"))
        })?;
        let mut entries = HashMap::new();
        let listing = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io(dir, e))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            let mine = match scope {
                Some(s) => name.strip_prefix(s).is_some_and(|r| r.starts_with('.')),
                None => true,
            };
            if mine && name.ends_with(".jsonl") {
                read_entries(&item.path(), &mut entries)?;
            }
        }
        let own = dir.join(format!("{prefix}.{}.jsonl", attempt_id()));
        Ok(CallJournal {
            dir: dir.to_path_buf(),
            own,
            file: Mutex::new(None),
            entries: Mutex::new(entries),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the journaled answers used, together: what earlier runs paid
    /// for them, for a budget over all runs.
    pub fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for e in self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            total.add(&e.usage);
        }
        total
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Record an answer: one write of one whole line to this process's own
    /// file, so it reaches the OS at once and a kill -9 tears at most the
    /// line being written.
    pub fn put(&self, entry: Entry) -> Result<()> {
        let mut line = serde_json::to_vec(&entry).map_err(|e| Error::output(&self.own, e))?;
        line.push(b'\n');
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if file.is_none() {
                // create_new: a name taken by another process is an error,
                // never a shared file.
                let f = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&self.own)
                    .map_err(|e| Error::io(&self.own, e))?;
                *file = Some(f);
            }
            if let Some(f) = file.as_mut() {
                f.write_all(&line).map_err(|e| Error::io(&self.own, e))?;
            }
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.key.clone(), entry);
        Ok(())
    }

    /// The job is done and its output in place: the journal is not needed.
    pub fn remove(&self) -> Result<()> {
        fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// Answers of one file; lines that do not parse (torn by a kill, or being
/// written right now) are skipped.
fn read_entries(path: &Path, entries: &mut HashMap<String, Entry>) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        // Gone between listing and opening: nothing to read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            return Ok(()); // a line still being written, or torn
        }
        if let Ok(entry) = serde_json::from_slice::<Entry>(&buf) {
            entries.insert(entry.key.clone(), entry);
        }
    }
}

/// A name for this writer's file that no other process, here or on another
/// machine, will choose: time, process id and random bits.
fn attempt_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// A call journal as `aiq run` uses it: whole calls in, row outcomes out.
pub struct Recall {
    pub journal: CallJournal,
    /// Folded into every key (see [`key`]).
    pub fingerprint: String,
}

impl Recall {
    /// The outcomes of `call` when every row of it was answered before: not
    /// sent (`attempts` 0), with the answer's usage as it was billed then.
    pub fn answered(&self, call: &Call) -> Option<Vec<Outcome>> {
        call.rows
            .iter()
            .zip(row_keys(&self.fingerprint, call))
            .map(|(&row, key)| {
                let e = self.journal.get(&key)?;
                Some(Outcome {
                    row,
                    result: e.result,
                    finish_reason: e.finish_reason,
                    usage: e.usage,
                    key: Some(key),
                    ..Outcome::default()
                })
            })
            .collect()
    }

    /// Keep the successful rows of a call just answered (keyed, see
    /// [`row_keys`]).
    pub fn record(&self, outcomes: &[Outcome]) -> Result<()> {
        for o in outcomes {
            if let (None, Some(key)) = (&o.error_message, &o.key) {
                self.journal.put(Entry {
                    key: key.clone(),
                    result: o.result.clone(),
                    usage: o.usage,
                    finish_reason: o.finish_reason.clone(),
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, result: Value) -> Entry {
        Entry {
            key: key.into(),
            result,
            usage: Usage::default(),
            finish_reason: None,
        }
    }

    #[test]
    fn writers_get_their_own_files_and_readers_merge_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = CallJournal::open(dir.path(), None).unwrap();
        let b = CallJournal::open(dir.path(), None).unwrap();
        a.put(entry("k1", json!("one"))).unwrap();
        b.put(entry("k2", json!(2))).unwrap();
        b.put(entry("k1", json!("one"))).unwrap(); // a duplicate answer
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        let c = CallJournal::open(dir.path(), None).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("k2").unwrap().result, json!(2));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "a reader that answers nothing adds no file"
        );
    }

    #[test]
    fn torn_and_unfinished_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = CallJournal::open(dir.path(), None).unwrap();
        a.put(entry("k1", json!("one"))).unwrap();
        let mut f = OpenOptions::new().append(true).open(&a.own).unwrap();
        f.write_all(b"{\"key\": \"k2\", \"res").unwrap();
        // An old single-file journal (`aiq sql` before per-writer files).
        fs::write(
            dir.path().join("calls.jsonl"),
            "{\"key\":\"k3\",\"result\":3}\nnot json\n{\"key\":\"k4\",\"result\":4}",
        )
        .unwrap();
        let b = CallJournal::open(dir.path(), None).unwrap();
        assert_eq!(b.get("k1").unwrap().result, json!("one"));
        assert_eq!(b.get("k3").unwrap().result, json!(3));
        assert!(b.get("k2").is_none() && b.get("k4").is_none());
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn scopes_read_only_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = CallJournal::open(dir.path(), Some("p0")).unwrap();
        p0.put(entry("k0", json!(0))).unwrap();
        let p1 = CallJournal::open(dir.path(), Some("p1")).unwrap();
        p1.put(entry("k1", json!(1))).unwrap();
        let again = CallJournal::open(dir.path(), Some("p0")).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again.get("k0").is_some());
        // `p1` must not read `p10`'s files.
        let p10 = CallJournal::open(dir.path(), Some("p10")).unwrap();
        p10.put(entry("k10", json!(10))).unwrap();
        assert_eq!(CallJournal::open(dir.path(), Some("p1")).unwrap().len(), 1);
        assert_eq!(CallJournal::open(dir.path(), None).unwrap().len(), 3);
        assert!(CallJournal::open(dir.path(), Some("../x")).is_err());
    }

    #[test]
    fn keys_separate_rows_and_fingerprints() {
        assert_eq!(key("f", b"body", 0), key("f", b"body", 0));
        assert_ne!(key("f", b"body", 0), key("f", b"body", 1));
        assert_ne!(key("f", b"body", 0), key("g", b"body", 0));
    }

    #[test]
    fn concurrent_writers_in_threads_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let dir = dir.path();
                s.spawn(move || {
                    let j = CallJournal::open(dir, None).unwrap();
                    for i in 0..200 {
                        j.put(entry(&format!("{t}-{i}"), json!(i))).unwrap();
                    }
                });
            }
        });
        assert_eq!(CallJournal::open(dir.path(), None).unwrap().len(), 800);
    }
}
