//! Memory bounds of the data path, in one place: how many rows and how many
//! bytes each buffer between the stages may hold.
//!
//! Rows alone do not bound memory: a 1,024-row batch is 100 KB of 100-byte
//! rows but 64 MB of 64 KB documents. So every buffer that grows with the
//! data is bounded by bytes as well as rows, and the smaller bound wins:
//! - input batches ([`batch_rows`]): at most [`BATCH_BYTES`] of input each;
//! - batches open between reading and writing ([`open_batches`]): enough to
//!   keep every concurrency slot busy, plus a few;
//! - Parquet row groups ([`ROW_GROUP_BYTES`]): the writer holds one row group
//!   in memory until it is flushed;
//! - output parts ([`PART_ROWS`], [`PART_BYTES`]): a resume reloads at most
//!   one part's worth of outcomes from the journal.
//!
//! With these, peak memory is a few times `BATCH_BYTES` × open batches plus
//! one row group, whatever the input size or row width (`benches/memory.sh`).

/// Input bytes per batch (Arrow memory of the batch, estimated from the
/// file before reading). Small enough that a dozen open batches of 64 KB
/// rows stay far below 200 MiB; large enough that 100-byte rows still come
/// in the default 1,024-row batches.
pub const BATCH_BYTES: usize = 2 << 20;

/// Input batches open (read, not yet written) beyond those needed to keep
/// every concurrency slot busy: room for a slow row to hold its batch back
/// while later batches proceed.
pub const SPARE_OPEN_BATCHES: usize = 4;

/// Encoded bytes a Parquet row group may reach before it is flushed.
pub const ROW_GROUP_BYTES: usize = 16 << 20;

/// Rows per row group at most: small enough that readers can skip and
/// parallelise, large enough that per-group overhead stays negligible.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Output rows per part file at most: bounds what a resume reloads from the
/// journal.
pub const PART_ROWS: u64 = 65_536;

/// Bytes per part file (written and buffered) at most.
pub const PART_BYTES: u64 = 64 << 20;

/// Rows per input batch for rows of about `row_bytes` bytes: the asked
/// `rows`, fewer when they would exceed [`BATCH_BYTES`], never less than 1.
pub fn batch_rows(rows: usize, row_bytes: usize) -> usize {
    let by_bytes = BATCH_BYTES / row_bytes.max(1);
    rows.min(by_bytes).max(1)
}

/// Input batches allowed open at once, for `concurrency` calls and batches
/// of `batch_rows` rows.
pub fn open_batches(concurrency: usize, batch_rows: usize) -> usize {
    SPARE_OPEN_BATCHES + concurrency.div_ceil(batch_rows.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_with_wide_rows() {
        assert_eq!(batch_rows(1024, 100), 1024);
        assert_eq!(batch_rows(1024, 4096), 512);
        assert_eq!(batch_rows(1024, 64 << 10), 32);
        assert_eq!(
            batch_rows(1024, 100 << 20),
            1,
            "one huge row is still a batch"
        );
        assert_eq!(batch_rows(1024, 0), 1024);
        // Enough open batches to fill the slots, whatever the width.
        assert_eq!(open_batches(64, 32), SPARE_OPEN_BATCHES + 2);
        assert_eq!(open_batches(16, 1024), SPARE_OPEN_BATCHES + 1);
    }
}
