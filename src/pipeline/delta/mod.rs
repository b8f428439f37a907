//! Delta Lake tables in and out: what the run calls. The tables are read
//! and written by [`lake`] (delta-rs, behind the `delta` cargo feature);
//! without the feature these calls are refused (the plan refuses a Delta
//! job already, so they are never reached).

#[cfg(feature = "delta")]
pub mod lake;
pub mod saved;

pub use saved::Saved;

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::job::location::Location;
use crate::job::plan::Plan;
use crate::job::settings::OutputFormat;
use crate::pipeline::journal::{InputIdentity, Part};
use crate::pipeline::render::Templates;
use crate::pipeline::source::Source;
use crate::pipeline::store::RemoteOutput;

/// The output path whose state folder (journal, parts, writer lock) the
/// job uses: the output's own, except that the shards of a job share one
/// Delta table and so each keep theirs beside it (`table.shard-K-of-N.aiq/`).
pub fn state_output(plan: &Plan) -> Location {
    match (plan.output_format, plan.shard_scope()) {
        (OutputFormat::Delta, Some(scope)) => plan.output.with_suffix(&format!(".{scope}")),
        _ => plan.output.clone(),
    }
}

#[cfg(not(feature = "delta"))]
fn not_built() -> Error {
    Error::Config("this aiq was built without Delta Lake (the `delta` feature)".into())
}

/// Before anything is sent: the table opens (or can be created there) and
/// the merge key names input columns.
pub async fn check_output(plan: &Plan, input: &Schema) -> Result<()> {
    #[cfg(feature = "delta")]
    return lake::check_output(plan, input).await;
    #[cfg(not(feature = "delta"))]
    {
        let _ = (plan, input);
        Err(not_built())
    }
}

/// The rows of a `--input-format delta` job (this shard's files).
pub fn open_source(plan: &Plan) -> Result<Source> {
    #[cfg(feature = "delta")]
    return lake::open_source(plan);
    #[cfg(not(feature = "delta"))]
    {
        let _ = plan;
        Err(not_built())
    }
}

/// What names a Delta input in the journal: the table and its version.
pub fn identity(plan: &Plan) -> Result<InputIdentity> {
    #[cfg(feature = "delta")]
    return lake::identity(plan);
    #[cfg(not(feature = "delta"))]
    {
        let _ = plan;
        Err(not_built())
    }
}

/// Commits the finished parts to the table (local, or in the bucket for an
/// object-store table) as one version. `named`: the job's stamp says which
/// rows these are ([`crate::pipeline::run::Io::named`]), so an append of
/// them that another attempt committed already is not made again. Returns
/// the rows written.
pub async fn commit(
    plan: &Plan,
    parts: &[Part],
    remote: Option<&Arc<tokio::sync::Mutex<RemoteOutput>>>,
    schema: SchemaRef,
    job: &str,
    named: bool,
) -> Result<u64> {
    #[cfg(feature = "delta")]
    {
        let rows = parts.iter().map(|p| p.end - p.start).sum();
        let files = match remote {
            Some(r) => lake::PartFiles::Remote(r.lock().await.part_urls(parts).await?),
            None => lake::PartFiles::local(parts, state_output(plan).as_path())?,
        };
        lake::commit(plan, files, rows, schema, job, named).await
    }
    #[cfg(not(feature = "delta"))]
    {
        let _ = (plan, parts, remote, schema, job, named);
        Err(not_built())
    }
}

/// The rows this job (`job`, its stamp) appended to the table, when the
/// table holds its commit: run again, it is complete.
pub async fn appended_by(plan: &Plan, job: &str) -> Option<u64> {
    #[cfg(feature = "delta")]
    return lake::appended_by(plan, job).await;
    #[cfg(not(feature = "delta"))]
    {
        let _ = (plan, job);
        None
    }
}

/// `--write-mode merge`: `source` without the rows whose key the table
/// holds with the same request (their stored result stands; the merge
/// leaves their rows as they are), and without the rows a later row with
/// the same key replaces (one row per key: the last in input order).
/// Any other job: `source` as it is. The table's keys, and the input's
/// when `reopen` can open `source` once more (the plan's own input; rows
/// handed in are read once), are read here, before anything is sent.
pub fn skip_stored(
    plan: &Plan,
    source: Source,
    reopen: Option<fn(&Plan) -> Result<Source>>,
    templates: &Arc<Templates>,
) -> Result<(Source, Arc<Saved>)> {
    let saved = Arc::new(Saved::default());
    if plan.table.write_mode != crate::job::settings::WriteMode::Merge {
        return Ok((source, saved));
    }
    #[cfg(feature = "delta")]
    {
        let stored = crate::pipeline::store::block_on(lake::stored(plan))?.map(Arc::new);
        let latest = match reopen {
            Some(open) => Some(Arc::new(lake::Latest::read(plan, open(plan)?)?)),
            None => None,
        };
        if stored.is_none() && latest.is_none() {
            return Ok((source, saved));
        }
        let builder = crate::pipeline::render::BodyBuilder::new(plan.body_spec(), templates);
        let (plan, templates) = (plan.clone(), templates.clone());
        let (path, format, schema) = (source.path.clone(), source.format(), source.schema.clone());
        let batch_rows = source.batch_rows;
        let counted = saved.clone();
        let mut first = 0u64;
        let batches = source.into_batches().map(move |batch| {
            let batch = batch?;
            let maker = crate::pipeline::schedule::CallMaker {
                templates: &templates,
                builder: &builder,
                batch_size: plan.batch_size,
                similarity: plan.prompt2.is_some(),
                passthrough: plan.passthrough(),
            };
            let keep = lake::keep(
                stored.as_deref(),
                latest.as_deref(),
                &plan,
                &maker,
                first,
                &batch,
                &counted,
            )?;
            first += batch.num_rows() as u64;
            arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(|e| Error::input(&plan.input, e))
        });
        // The rows left are known only once read: no total for the bar.
        let mut source = Source::from_batches(&path, format, schema, None, Box::new(batches));
        source.batch_rows = batch_rows;
        Ok((source, saved))
    }
    #[cfg(not(feature = "delta"))]
    {
        let _ = (templates, reopen);
        Err(not_built())
    }
}

/// `aiq sql`: the Delta table at `path` as the table `name` of the query.
#[cfg(feature = "delta")]
pub async fn register(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    path: &Location,
) -> Result<()> {
    lake::register(ctx, name, path).await
}

/// `aiq sql --output-format delta`: the query's rows appended to the Delta
/// table at `path` as one version. Returns the rows written.
#[cfg(feature = "delta")]
pub async fn write_query(
    path: &Location,
    session: datafusion::execution::context::SessionState,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<u64> {
    lake::write_plan(path, session, plan).await
}
