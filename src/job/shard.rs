//! Shards: one job split into N disjoint runs that any fan-out tool can
//! start (a shell loop, Databricks Jobs `for_each_task`, a Kubernetes
//! Indexed Job, AWS Batch or Cloud Run array jobs).
//!
//! This module owns what `--shard K/N` means: which rows shard K reads
//! ([`Shard::rows`], contiguous ranges that cover every row exactly once
//! across the N shards, the same on every machine), where it writes
//! (`{shard}` in `--output`), and how job-wide limits become per-shard ones
//! ([`split_limit`]). Parsing is pure so that command lines in manifests can
//! be checked without their environment; `auto/N` takes the index from the
//! environment only when the plan is made ([`ShardSpec::resolve`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// Environment variables fan-out tools set to a task's 0-based index, read
/// by `--shard auto/N` in this order. `AIQ_SHARD_INDEX` comes first so a
/// user can always override what a platform sets.
pub const INDEX_VARS: [&str; 4] = [
    "AIQ_SHARD_INDEX",
    // Kubernetes Indexed Jobs (`completionMode: Indexed`).
    "JOB_COMPLETION_INDEX",
    // AWS Batch array jobs.
    "AWS_BATCH_JOB_ARRAY_INDEX",
    // Google Cloud Run jobs.
    "CLOUD_RUN_TASK_INDEX",
];

/// The placeholder in `--output` that each shard replaces with its index.
pub const PLACEHOLDER: &str = "{shard}";

/// `--shard` as written: `K/N`, or `auto/N` (index from the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// `None` for `auto`.
    pub index: Option<u32>,
    pub count: u32,
}

/// A resolved shard: the `index`-th (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ShardSpec, String> {
        let usage = || format!("expected K/N (0 <= K < N, e.g. 3/8) or auto/N, got `{s}`");
        let (k, n) = s.trim().split_once('/').ok_or_else(usage)?;
        let count: u32 = n.trim().parse().map_err(|_| usage())?;
        if count == 0 {
            return Err(format!("`{s}`: the number of shards must be at least 1"));
        }
        let index = match k.trim() {
            "auto" => None,
            k => {
                let k: u32 = k.parse().map_err(|_| usage())?;
                if k >= count {
                    return Err(format!(
                        "`{s}`: shard index {k} is out of range: shards are numbered 0 to {}",
                        count - 1
                    ));
                }
                Some(k)
            }
        };
        Ok(ShardSpec { index, count })
    }
}

impl<'de> Deserialize<'de> for ShardSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<ShardSpec, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(k) => write!(f, "{k}/{}", self.count),
            None => write!(f, "auto/{}", self.count),
        }
    }
}

impl ShardSpec {
    /// The shard this process runs: `K/N` as given, or for `auto/N` the
    /// index from the first of [`INDEX_VARS`] that is set.
    pub fn resolve(&self) -> Result<Shard> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        if let Some(index) = self.index {
            return Ok(Shard {
                index,
                count: self.count,
            });
        }
        let (var, value) = INDEX_VARS
            .iter()
            .find_map(|v| env(v).map(|value| (*v, value)))
            .ok_or_else(|| {
                Error::Config(format!(
                    "--shard auto/{} takes the shard index from the environment, but none of {} is set",
                    self.count,
                    INDEX_VARS.join(", ")
                ))
            })?;
        let spec: ShardSpec = format!("{}/{}", value.trim(), self.count)
            .parse()
            .map_err(|e| {
                Error::Config(format!(
                    "--shard auto/{} with {var}={value}: {e}",
                    self.count
                ))
            })?;
        Ok(Shard {
            index: spec.index.unwrap_or_default(),
            count: self.count,
        })
    }
}

impl Shard {
    /// Rows `start..end` of `total` that this shard reads: contiguous,
    /// sizes differing by at most one, covering every row once across the
    /// `count` shards.
    pub fn rows(&self, total: u64) -> (u64, u64) {
        let bound = |k: u64| (u128::from(total) * u128::from(k) / u128::from(self.count)) as u64;
        (
            bound(u64::from(self.index)),
            bound(u64::from(self.index) + 1),
        )
    }

    /// What replaces `{shard}`: the index, zero-padded to the width of the
    /// largest one so that `part-*.parquet` lists in shard order.
    pub fn label(&self) -> String {
        let width = (self.count - 1).to_string().len();
        format!("{:0width$}", self.index)
    }

    /// `path` with `{shard}` replaced by [`Shard::label`].
    pub fn apply(&self, path: &str) -> String {
        path.replace(PLACEHOLDER, &self.label())
    }
}

/// One worker's share of a job-wide rate limit: `limit / workers`, rounded
/// down so the workers together never exceed it, and at least 1.
pub fn split_limit(limit: Option<u32>, workers: u32) -> Option<u32> {
    limit.map(|l| (l / workers.max(1)).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ShardSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            spec("3/8"),
            ShardSpec {
                index: Some(3),
                count: 8
            }
        );
        assert_eq!(
            spec(" 0 / 1 "),
            ShardSpec {
                index: Some(0),
                count: 1
            }
        );
        assert_eq!(
            spec("auto/4"),
            ShardSpec {
                index: None,
                count: 4
            }
        );
        for bad in [
            "8/8", "1/0", "-1/4", "3", "a/4", "3/b", "", "/", "3/8/1", "auto",
        ] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
        assert!("9/8".parse::<ShardSpec>().unwrap_err().contains("0 to 7"));
    }

    #[test]
    fn auto_reads_the_first_index_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let auto = spec("auto/8");
        let got = auto
            .resolve_with(env(&[
                ("JOB_COMPLETION_INDEX", "5"),
                ("CLOUD_RUN_TASK_INDEX", "1"),
            ]))
            .unwrap();
        assert_eq!(got, Shard { index: 5, count: 8 });
        let got = auto
            .resolve_with(env(&[
                ("JOB_COMPLETION_INDEX", "5"),
                ("AIQ_SHARD_INDEX", "2"),
            ]))
            .unwrap();
        assert_eq!(got.index, 2, "AIQ_SHARD_INDEX overrides the platform's");
        let err = auto.resolve_with(env(&[])).unwrap_err();
        assert!(err.to_string().contains("JOB_COMPLETION_INDEX"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let err = auto
            .resolve_with(env(&[("JOB_COMPLETION_INDEX", "8")]))
            .unwrap_err();
        assert!(err.to_string().contains("JOB_COMPLETION_INDEX=8"), "{err}");
        // A fixed index ignores the environment.
        assert_eq!(
            spec("1/2")
                .resolve_with(env(&[("AIQ_SHARD_INDEX", "0")]))
                .unwrap()
                .index,
            1
        );
    }

    #[test]
    fn row_ranges_cover_every_row_once() {
        for total in [0u64, 1, 2, 7, 100, 1001] {
            for count in [1u32, 2, 3, 8, 13] {
                let mut next = 0;
                for index in 0..count {
                    let (a, b) = Shard { index, count }.rows(total);
                    assert_eq!(a, next, "total {total} count {count} index {index}");
                    assert!(b >= a && b - a <= total / u64::from(count) + 1);
                    next = b;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn labels_sort_and_limits_split() {
        assert_eq!(Shard { index: 3, count: 8 }.label(), "3");
        assert_eq!(
            Shard {
                index: 3,
                count: 16
            }
            .label(),
            "03"
        );
        assert_eq!(
            Shard {
                index: 99,
                count: 100
            }
            .label(),
            "99"
        );
        assert_eq!(
            Shard {
                index: 2,
                count: 10
            }
            .apply("out/part-{shard}.parquet"),
            "out/part-2.parquet"
        );
        assert_eq!(split_limit(Some(600), 4), Some(150));
        assert_eq!(split_limit(Some(10), 4), Some(2));
        assert_eq!(split_limit(Some(3), 8), Some(1));
        assert_eq!(split_limit(None, 8), None);
    }
}
