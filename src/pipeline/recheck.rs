//! Recheck: what an earlier run left behind, against the input as it is now.
//!
//! A resume never trusts a row number alone, so an input edited between
//! runs (a bad line fixed, a file copied over with `cp -p` or `rsync -t`)
//! costs only the rows that changed:
//! - Rows after the finished parts: every journaled outcome carries its
//!   row's request hash ([`Outcome::key`]); the dispatcher
//!   ([`crate::pipeline::schedule`]) takes it only for a row whose request,
//!   rendered now, hashes the same, and sends a changed row again. Their
//!   output rows are built from the input as it is now.
//! - Rows inside finished parts hold the input values they were written
//!   with, so they are compared by those: every journaled outcome carries a
//!   hash of its row's input values ([`row_hashes`]), and here, before the
//!   first request, the input's rows below `committed` are hashed (nothing
//!   is rendered or sent) and compared. The first part holding a changed
//!   row is removed with every part after it (a resume counts only parts
//!   contiguous from row 0), and their rows' outcomes are loaded back from
//!   the journal, to be taken or sent again like any unfinished row. The
//!   input batches read since that part began (at most a part's rows) are
//!   handed on with the rest, so the input is read once.
//!
//! The settings that change answers are not rechecked here: the manifest
//! refuses a resume under other settings ([`crate::pipeline::journal`]).

use std::path::Path;

use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use crate::error::Result;
use crate::pipeline::journal::{reopen_from, Part, Resume};
use crate::pipeline::outcome::{Outcome, RowId};

/// The input's batches, as the reader thread consumes them.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// A resume whose finished parts all match the input, and the input from
/// row `first` on.
pub struct Rechecked {
    pub resume: Resume,
    pub first: RowId,
    pub batches: Batches,
    /// Rows of finished parts found changed (their parts are redone).
    pub changed: u64,
}

/// Compare the finished parts' rows with the input (see the module
/// documentation). `dir` is the job's state folder.
pub fn recheck(dir: &Path, resume: Resume, mut batches: Batches) -> Result<Rechecked> {
    let committed = resume.committed;
    // Input batches from the start of the part being checked on.
    let mut held: Vec<(RowId, RecordBatch)> = Vec::new();
    let mut first: RowId = 0;
    let mut changed = 0u64;
    let mut first_changed: Option<RowId> = None;
    while first < committed {
        let Some(batch) = batches.next() else {
            // The input is shorter than the parts: the rows past its end
            // are gone from it.
            first_changed = Some(first);
            break;
        };
        let batch = batch?;
        let start = first;
        first += batch.num_rows() as u64;
        let part_start = part_of(&resume.parts, start).map_or(start, |p| p.start);
        held.retain(|(s, b)| s + b.num_rows() as u64 > part_start);
        for (row, hash) in (start..).zip(row_hashes(&batch)) {
            let journaled = usize::try_from(row)
                .ok()
                .and_then(|r| resume.committed_inputs.get(r));
            if journaled.is_some_and(|&h| h != hash || h == 0) {
                changed += 1;
                first_changed.get_or_insert(row);
            }
        }
        held.push((start, batch));
        if first_changed.is_some() {
            break;
        }
    }
    let Some(row) = first_changed else {
        // All unchanged: the last batch read may reach past `committed`.
        let from = held.last().map_or(first, |(s, _)| *s);
        let last = held.pop().map(|(_, b)| Ok(b));
        return Ok(Rechecked {
            resume,
            first: from,
            batches: Box::new(last.into_iter().chain(batches)),
            changed: 0,
        });
    };
    let redo_from = part_of(&resume.parts, row).map_or(row, |p| p.start);
    held.retain(|(s, b)| s + b.num_rows() as u64 > redo_from);
    let from = held.first().map_or(first, |(s, _)| *s);
    let resume = reopen_from(dir, &resume.parts, redo_from)?;
    let held = held.into_iter().map(|(_, b)| Ok(b));
    Ok(Rechecked {
        resume,
        first: from,
        batches: Box::new(held.chain(batches)),
        changed,
    })
}

/// The part holding `row`.
fn part_of(parts: &[Part], row: RowId) -> Option<&Part> {
    parts.iter().find(|p| p.start <= row && row < p.end)
}

/// A 64-bit hash of each row's input values, with the columns' names and
/// types (a renamed or retyped column changes every row). 0 where the types
/// have no row encoding: such rows always count as changed, and their
/// parts are redone from the journal (nothing is sent again for that).
pub fn row_hashes(batch: &RecordBatch) -> Vec<u64> {
    let n = batch.num_rows();
    let schema = batch.schema();
    let fields = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let rows = RowConverter::new(fields).and_then(|c| c.convert_columns(batch.columns()));
    let Ok(rows) = rows else {
        return vec![0; n];
    };
    let mut head = blake3::Hasher::new();
    for f in schema.fields() {
        head.update(f.name().as_bytes());
        head.update(&[0]);
        head.update(f.data_type().to_string().as_bytes());
        head.update(&[0]);
    }
    (0..n)
        .map(|i| {
            let mut h = head.clone();
            h.update(rows.row(i).as_ref());
            let bytes = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes.as_bytes()[..8]);
            u64::from_le_bytes(first)
        })
        .collect()
}

/// Stamp outcomes with their rows' input hashes before they are journaled.
pub fn stamp(outcome: &mut Outcome, hashes: &[u64], first: RowId) {
    outcome.input_hash = outcome
        .row
        .checked_sub(first)
        .and_then(|i| hashes.get(usize::try_from(i).ok()?))
        .copied();
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;

    fn batch(texts: &[&str]) -> RecordBatch {
        let ids: Vec<i64> = (0..texts.len() as i64).collect();
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
            (
                "text",
                Arc::new(StringArray::from(texts.to_vec())) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn row_hashes_follow_values_not_batching() {
        let a = row_hashes(&batch(&["x", "y", "z"]));
        let b = row_hashes(&batch(&["x", "Y", "z"]));
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_eq!(a[2], b[2]);
        let sliced = row_hashes(&batch(&["x", "y", "z"]).slice(1, 2));
        assert_eq!(sliced, a[1..]);
        assert!(a.iter().all(|&h| h != 0));
    }
}
