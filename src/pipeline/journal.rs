//! Journal: durable per-row outcomes, so that no paid result is lost and no
//! row is paid for twice.
//!
//! Beside the output `out.parquet` lives a state folder `out.parquet.aiq/`:
//! - `manifest.json`: the job's fingerprint (input identity + the settings
//!   that change answers). A re-run with different settings refuses to
//!   resume and says what changed; a changed input is resumed row by row.
//! - `journal.jsonl`: one line per outcome, appended and flushed to the OS
//!   the moment it arrives (a `kill -9` loses nothing written; a torn last
//!   line is cut off on resume). Each outcome carries its row's request hash
//!   and input hash: a resume takes it only for a row whose request is the
//!   same now ([`crate::pipeline::recheck`]), so an input edited between
//!   runs costs only its changed rows. A journal deleted mid-run is noticed
//!   at the next flush: the run stops and puts its answers back.
//! - `parts/part-{start}-{end}.parquet`: finished output rows, in input
//!   order, each file renamed into place only when complete.
//!
//! On resume, rows below the last contiguous part are skipped outright, and
//! journal lines for rows after it are loaded back (at most one part's worth
//! plus the rows in flight), so memory stays bounded whatever the job size.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::pipeline::answers::Answers;
use crate::pipeline::outcome::{Outcome, RowId, Usage};

const MANIFEST: &str = "manifest.json";
const JOURNAL: &str = "journal.jsonl";
const PARTS: &str = "parts";

/// What identifies a job for resuming: the settings that change answers
/// (not concurrency or limits, which may change freely). The input is
/// recorded but not compared: a resume checks each row's content instead
/// ([`crate::pipeline::recheck`]), so an edited input resumes too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub input: InputIdentity,
    pub settings: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputIdentity {
    pub path: String,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub modified: u64,
}

/// A finished part of the output: rows `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub start: RowId,
    pub end: RowId,
    pub path: PathBuf,
}

/// What an earlier run left behind.
#[derive(Debug, Default)]
pub struct Resume {
    /// Rows `0..committed` are in parts and need no work.
    pub committed: RowId,
    pub parts: Vec<Part>,
    /// Outcomes of rows at or after `committed`, from the journal.
    pub outcomes: HashMap<RowId, Outcome>,
    /// What every earlier run of the job may have been billed (the sum of
    /// [`Outcome::billed_usage`] over the whole journal): budgets are per job.
    pub spent: Usage,
    /// Rows whose last journaled outcome is an error, committed or not
    /// (for `--retry-failed`).
    pub failed: BTreeSet<RowId>,
    /// The input hash of each committed row ([`Outcome::input_hash`]; 0:
    /// none), to recheck the parts against the input as it is now.
    pub committed_inputs: Vec<u64>,
    /// Rows whose last journaled outcome is unsettled (failed in the outage
    /// that stopped the job early): [`Journal::open`] leaves them without an
    /// outcome, so a resume sends them again.
    pub unsettled: BTreeSet<RowId>,
    /// Every answer in the journal, committed rows' too, by request
    /// fingerprint (bounded): a row that was waiting for an identical
    /// request's answer when the job stopped takes it instead of paying.
    pub answers: Answers,
}

impl Resume {
    pub fn is_empty(&self) -> bool {
        self.committed == 0 && self.outcomes.is_empty()
    }
}

pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    /// `None` for a run that keeps nothing ([`Journal::disabled`]).
    writer: Option<BufWriter<File>>,
    line: Vec<u8>,
    /// The manifest as written, to put back with the journal if the state
    /// folder is deleted mid-run.
    manifest: Vec<u8>,
    /// Told every `n` lines ([`Journal::notify_every`]).
    on_lines: Option<(u64, Arc<Notify>)>,
    lines: u64,
}

/// The state folder for an output path: `out.parquet` → `out.parquet.aiq`.
pub fn state_dir(output: &Path) -> PathBuf {
    crate::job::location::with_name_suffix(output, ".aiq")
}

/// The writer lock's file in the state folder (see [`crate::pipeline::lock`]),
/// for `scope` (a shard, say) or for the whole output.
pub fn lock_name(scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("writer-{s}.lock"),
        None => "writer.lock".into(),
    }
}

/// Whether a file of the state folder is a writer lock: `--restart` keeps
/// it, since it runs while holding it.
pub fn is_lock(name: &str) -> bool {
    name.starts_with("writer") && name.ends_with(".lock")
}

/// Empties the state folder `dir` but for its locks.
fn clear(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if is_lock(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

impl Journal {
    /// Open the journal for `output`, resuming an earlier run of the same
    /// job, or starting fresh (`restart` discards what is there).
    pub fn open(output: &Path, manifest: &Manifest, restart: bool) -> Result<(Journal, Resume)> {
        let dir = state_dir(output);
        if restart && dir.exists() {
            clear(&dir)?;
        }
        let manifest_path = dir.join(MANIFEST);
        let manifest_bytes =
            serde_json::to_vec_pretty(manifest).map_err(|e| Error::output(&manifest_path, e))?;
        let resume = if manifest_path.exists() {
            let old: Manifest = fs::read(&manifest_path)
                .map_err(|e| Error::io(&manifest_path, e))
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| {
                        Error::output(
                            &manifest_path,
                            format!("unreadable manifest ({e}); use --restart to start over"),
                        )
                    })
                })?;
            if let Some(why) = differences(&old, manifest) {
                return Err(Error::output(
                    output,
                    format!(
                        "a journal of an earlier run is in {} but {why}; resuming would mix answers. \
                         Run with --restart to discard it, or restore the earlier input and settings",
                        dir.display()
                    ),
                ));
            }
            let mut resume = load(&dir)?;
            let unsettled = std::mem::take(&mut resume.unsettled);
            resend(&dir, resume, &unsettled)?
        } else {
            fs::create_dir_all(dir.join(PARTS)).map_err(|e| Error::io(&dir, e))?;
            write_atomic(&manifest_path, &manifest_bytes)?;
            Resume::default()
        };
        let path = dir.join(JOURNAL);
        let file = open_append(&path)?;
        Ok((
            Journal {
                dir,
                path,
                writer: Some(BufWriter::with_capacity(1 << 16, file)),
                line: Vec::with_capacity(512),
                manifest: manifest_bytes,
                on_lines: None,
                lines: 0,
            },
            resume,
        ))
    }

    /// A journal that keeps nothing, for a run whose output goes back to
    /// the caller instead of to a file: there is nothing to resume.
    pub fn disabled() -> Journal {
        Journal {
            dir: PathBuf::new(),
            path: PathBuf::new(),
            writer: None,
            line: Vec::new(),
            manifest: Vec::new(),
            on_lines: None,
            lines: 0,
        }
    }

    /// Notify `wake` at the flush after every `lines` new lines (an
    /// object-store output mirrors the journal then, not only on a timer).
    pub fn notify_every(&mut self, lines: u64, wake: Arc<Notify>) {
        self.on_lines = Some((lines.max(1), wake));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn parts_dir(&self) -> PathBuf {
        self.dir.join(PARTS)
    }

    /// Append one outcome (buffered; call [`Journal::flush`] to hand it to the OS).
    pub fn append(&mut self, outcome: &Outcome) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, outcome).map_err(|e| Error::output(&self.path, e))?;
        self.line.push(b'\n');
        self.lines += 1;
        writer
            .write_all(&self.line)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Hand buffered lines to the OS: after this, a killed process loses
    /// nothing. Fails with [`Error::Stopped`] when the journal file is no
    /// longer at its path (the state folder was deleted or moved): the
    /// lines would go nowhere, so the run must stop sending. What the
    /// journal held is put back first.
    pub fn flush(&mut self) -> Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.flush().map_err(|e| Error::io(&self.path, e))?;
        if let Some((every, wake)) = &self.on_lines {
            if self.lines >= *every {
                self.lines = 0;
                wake.notify_one();
            }
        }
        if still_at(w.get_ref(), &self.path) {
            return Ok(());
        }
        self.put_back()?;
        Err(Error::Stopped(format!(
            "the job's state folder {} was deleted while the job ran; no more requests are sent. \
             The answers journaled so far are put back in it: run the same command again to \
             resume without paying for them",
            self.dir.display()
        )))
    }

    /// Re-create the state folder with the manifest and a copy of the
    /// journal (read through the still open file), and go on writing there.
    fn put_back(&mut self) -> Result<()> {
        let Some(old) = self.writer.take() else {
            return Ok(());
        };
        let old = old
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        fs::create_dir_all(self.dir.join(PARTS)).map_err(|e| Error::io(&self.dir, e))?;
        write_atomic(&self.dir.join(MANIFEST), &self.manifest)?;
        let mut new = open_append(&self.path)?;
        let mut from = &old;
        from.seek(SeekFrom::Start(0))
            .and_then(|_| std::io::copy(&mut from, &mut new))
            .map_err(|e| Error::io(&self.path, e))?;
        self.writer = Some(BufWriter::with_capacity(1 << 16, new));
        Ok(())
    }

    /// The job is done and its output in place: remove the state folder.
    pub fn remove(mut self) -> Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.flush()?;
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
    }
}

/// The journal file (read and appended).
fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Whether `file` is still the file at `path` (not deleted, not moved away).
fn still_at(file: &File, path: &Path) -> bool {
    let Ok(there) = fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata()
            .is_ok_and(|open| (open.dev(), open.ino()) == (there.dev(), there.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, there);
        true
    }
}

/// Say what differs between the manifest on disk and this job's, if
/// anything. The input is not compared: a changed input resumes row by row
/// (each outcome is keyed by its request).
fn differences(old: &Manifest, new: &Manifest) -> Option<String> {
    if old.version != new.version {
        return Some(format!(
            "it was written by journal format {} (this aiq writes {})",
            old.version, new.version
        ));
    }
    if old.settings != new.settings {
        let keys = changed_keys(&old.settings, &new.settings);
        return Some(format!("the settings changed ({})", keys.join(", ")));
    }
    None
}

fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<String> = o
        .keys()
        .chain(n.keys())
        .filter(|k| o.get(*k) != n.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn load(dir: &Path) -> Result<Resume> {
    let parts_dir = dir.join(PARTS);
    fs::create_dir_all(&parts_dir).map_err(|e| Error::io(&parts_dir, e))?;
    let mut parts = Vec::new();
    for entry in fs::read_dir(&parts_dir).map_err(|e| Error::io(&parts_dir, e))? {
        let entry = entry.map_err(|e| Error::io(&parts_dir, e))?;
        if let Some((start, end)) = parse_part_name(&entry.file_name().to_string_lossy()) {
            parts.push(Part {
                start,
                end,
                path: entry.path(),
            });
        }
    }
    parts.sort_by_key(|p| p.start);
    // Only a contiguous run from row 0 counts; anything after a gap is redone.
    let mut committed = 0;
    let mut keep = Vec::new();
    for p in parts {
        if p.start == committed && p.end > p.start {
            committed = p.end;
            keep.push(p);
        }
    }
    let path = dir.join(JOURNAL);
    let mut outcomes = HashMap::new();
    let mut spent = Usage::default();
    let mut failed = BTreeSet::new();
    let mut committed_inputs = vec![0u64; usize::try_from(committed).unwrap_or(0)];
    let mut unsettled = BTreeSet::new();
    let mut answers = Answers::default();
    if path.exists() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::new(&file);
        let mut good_len: u64 = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io(&path, e))?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break; // end, or a line torn by a kill mid-write
            }
            let Ok(outcome) = serde_json::from_slice::<Outcome>(&buf) else {
                break;
            };
            good_len += n as u64;
            spent.add(&outcome.billed_usage());
            answers.offer(&outcome);
            // The last line of a row is its outcome (a retried row has two).
            if outcome.is_error() {
                failed.insert(outcome.row);
            } else {
                failed.remove(&outcome.row);
            }
            if outcome.unsettled {
                unsettled.insert(outcome.row);
            } else {
                unsettled.remove(&outcome.row);
            }
            if outcome.row >= committed {
                outcomes.insert(outcome.row, outcome);
            } else if let Some(slot) = committed_inputs.get_mut(outcome.row as usize) {
                *slot = outcome.input_hash.unwrap_or(0);
            }
        }
        // Cut a torn tail so new lines start on a line boundary.
        let mut f = &file;
        if f.seek(SeekFrom::End(0)).map_err(|e| Error::io(&path, e))? != good_len {
            file.set_len(good_len).map_err(|e| Error::io(&path, e))?;
        }
    }
    // Not final: sent again (a part holding one is redone by Journal::open).
    outcomes.retain(|row, _| !unsettled.contains(row));
    Ok(Resume {
        committed,
        parts: keep,
        outcomes,
        spent,
        failed,
        committed_inputs,
        unsettled,
        answers,
    })
}

/// Removes the parts holding rows at or after `row` and loads the journal
/// again: their rows' outcomes come back from it (so memory holds the
/// outcomes from that part on).
pub fn reopen_from(dir: &Path, parts: &[Part], row: RowId) -> Result<Resume> {
    for part in parts.iter().filter(|p| p.end > row) {
        fs::remove_file(&part.path).map_err(|e| Error::io(&part.path, e))?;
    }
    load(dir)
}

/// `--retry-failed`: turns `resume` into one where the rows whose journaled
/// outcome is an error have no outcome, so they are sent again, and every
/// other row keeps its outcome. Parts from the first one holding a failed
/// row on are removed and their answered rows reloaded from the journal (so
/// memory holds the outcomes after the first failed row). Returns the new
/// resume and how many rows will be sent again.
pub fn retry_failed(journal: &Journal, resume: Resume) -> Result<(Resume, usize)> {
    let failed = resume.failed.clone();
    Ok((resend(journal.dir(), resume, &failed)?, failed.len()))
}

/// `resume` with `rows` left without an outcome, so they are sent again;
/// parts from the first one holding any of them on are removed and their
/// other rows reloaded from the journal in `dir`.
fn resend(dir: &Path, resume: Resume, rows: &BTreeSet<RowId>) -> Result<Resume> {
    let Some(&first) = rows.iter().next() else {
        return Ok(resume);
    };
    let mut resume = if first < resume.committed {
        reopen_from(dir, &resume.parts, first)?
    } else {
        resume
    };
    resume.outcomes.retain(|row, _| !rows.contains(row));
    Ok(resume)
}

pub fn part_name(start: RowId, end: RowId) -> String {
    format!("part-{start:012}-{end:012}.parquet")
}

fn parse_part_name(name: &str) -> Option<(RowId, RowId)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (a, b) = rest.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Write a small file so that it is either wholly there or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(settings: Value) -> Manifest {
        Manifest {
            version: 1,
            input: InputIdentity {
                path: "in.parquet".into(),
                size: 10,
                modified: 1,
            },
            settings,
        }
    }

    #[test]
    fn resumes_outcomes_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let m = manifest(json!({"prompt": "a"}));
        let (mut j, resume) = Journal::open(&out, &m, false).unwrap();
        assert!(resume.is_empty());
        for row in 0..3 {
            j.append(&Outcome {
                row,
                result: json!(format!("r{row}")),
                attempts: 1,
                ..Default::default()
            })
            .unwrap();
        }
        j.flush().unwrap();
        drop(j);
        // A kill mid-write leaves half a line.
        let jp = state_dir(&out).join(JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(b"{\"row\": 3, \"resu").unwrap();
        drop(f);
        let (mut j, resume) = Journal::open(&out, &m, false).unwrap();
        assert_eq!(resume.outcomes.len(), 3);
        assert_eq!(resume.outcomes[&2].result, json!("r2"));
        j.append(&Outcome {
            row: 3,
            ..Default::default()
        })
        .unwrap();
        j.flush().unwrap();
        drop(j);
        let (_, resume) = Journal::open(&out, &m, false).unwrap();
        assert_eq!(
            resume.outcomes.len(),
            4,
            "the torn line was cut, the new one kept"
        );
        assert_eq!(resume.spent, Usage::default());
    }

    #[test]
    fn refuses_a_changed_job_and_restart_discards() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let (j, _) = Journal::open(&out, &manifest(json!({"prompt": "a"})), false).unwrap();
        drop(j);
        let err = Journal::open(&out, &manifest(json!({"prompt": "b"})), false)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("settings changed (prompt)") && msg.contains("--restart"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 2);
        let (_, resume) = Journal::open(&out, &manifest(json!({"prompt": "b"})), true).unwrap();
        assert!(resume.is_empty());
    }

    #[test]
    fn contiguous_parts_count_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let m = manifest(json!({}));
        let (j, _) = Journal::open(&out, &m, false).unwrap();
        for (a, b) in [(0, 10), (10, 20), (30, 40)] {
            fs::write(j.parts_dir().join(part_name(a, b)), b"x").unwrap();
        }
        j.append_for_test(15);
        let (_, resume) = Journal::open(&out, &m, false).unwrap();
        assert_eq!(resume.committed, 20);
        assert_eq!(resume.parts.len(), 2);
        assert!(
            resume.outcomes.is_empty(),
            "rows below the committed parts are not loaded"
        );
    }

    #[test]
    fn unsettled_rows_are_sent_again_and_their_usage_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let m = manifest(json!({}));
        let (mut j, _) = Journal::open(&out, &m, false).unwrap();
        let usage = Usage {
            prompt_tokens: 5,
            total_tokens: 5,
            ..Default::default()
        };
        for row in 0..3 {
            let failed = Outcome {
                usage,
                ..Outcome::failed(row, "HTTP 503".into(), 1)
            };
            j.append(&failed).unwrap();
            if row < 2 {
                j.append(&failed.marked_unsettled()).unwrap();
            }
        }
        // Row 1 answered on a later run: no longer unsettled.
        j.append(&Outcome {
            row: 1,
            attempts: 1,
            ..Default::default()
        })
        .unwrap();
        // A part holding row 0 is redone.
        fs::write(j.parts_dir().join(part_name(0, 1)), b"x").unwrap();
        j.flush().unwrap();
        drop(j);
        let (_, resume) = Journal::open(&out, &m, false).unwrap();
        assert_eq!(resume.committed, 0, "the part holding row 0 is redone");
        let mut rows: Vec<RowId> = resume.outcomes.keys().copied().collect();
        rows.sort();
        assert_eq!(rows, [1, 2], "row 0 is sent again, row 2 stays failed");
        assert_eq!(resume.spent.total_tokens, 15, "each failure counted once");
    }

    impl Journal {
        fn append_for_test(mut self, row: RowId) {
            self.append(&Outcome {
                row,
                ..Default::default()
            })
            .unwrap();
            self.flush().unwrap();
        }
    }
}
