//! What `aiq bench` hands back: the table on the terminal, the JSON
//! summary, the per-request Parquet records and (through [`super::plot`])
//! the picture. Formatting only: every figure comes from [`super::stats`].

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt16Array, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::json;

use super::stats::{Latency, Record, StepStats, TokenCount, MIN_SAMPLES};
use super::{BenchPlan, BenchResult};
use crate::error::{Error, Result};
use crate::pipeline::parquet_out::ParquetFile;

/// One line per finished step, printed as the sweep goes.
pub fn step_line(s: &StepStats) -> String {
    let p = |l: Option<Latency>| l.map_or("-".to_string(), |l| format!("{:.0}", l.p50));
    format!(
        "{:>10}: {} requests, {:.1} req/s, {:.0} tok/s, TTFT p50 {} ms, e2e p50 {} ms, {} errors",
        s.load.label(),
        s.requests,
        s.requests_per_sec,
        s.output_tokens_per_sec,
        p(s.ttft_ms),
        p(s.e2e_ms),
        s.errors
    )
}

/// Prompt tokens per request over the whole sweep, as the server counted
/// them.
fn prompt_tokens(result: &BenchResult) -> Option<TokenCount> {
    TokenCount::of(
        result
            .records
            .iter()
            .filter(|r| r.ok())
            .map(|r| r.prompt_tokens),
    )
}

/// What was sent, asked for and counted: the prompt (synthetic of
/// `--input-tokens`, or rendered from `--input`) against the prompt tokens
/// the server counted — a chat template and the tokenizer add to what was
/// asked —, max_tokens against the output tokens counted, and the requests
/// (or seconds) per step.
pub fn sent(plan: &BenchPlan, result: &BenchResult) -> String {
    let a = &plan.args;
    let counted = |t: Option<TokenCount>| {
        t.map_or("none counted".to_string(), |t| {
            format!("{} counted", t.range())
        })
    };
    let prompt = match &a.input {
        Some(p) => format!("prompts from {}", p.display()),
        None => format!("prompts of ~{} tokens", a.input_tokens),
    };
    let output = TokenCount::of(
        result
            .records
            .iter()
            .filter(|r| r.ok())
            .map(|r| r.output_tokens),
    );
    let per_step = match plan.stop {
        super::StepEnd::Requests(n) => format!("{n} requests per step"),
        super::StepEnd::Duration(d) => format!("{} s per step", d.as_secs_f64()),
    };
    let max_tokens = plan
        .params
        .get("max_tokens")
        .map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut line = format!(
        "{prompt} ({}), max_tokens {max_tokens} ({}), {per_step}",
        counted(prompt_tokens(result)),
        counted(output)
    );
    if a.warmup > 0 {
        let _ = write!(line, " after {} warm-up", a.warmup);
    }
    line
}

/// The plot's subtitle, two lines: the endpoint as given, model and kind
/// of call; then [`sent`].
pub fn subtitle(plan: &BenchPlan, result: &BenchResult) -> [String; 2] {
    let a = &plan.args;
    let mut head = a.endpoint.clone();
    if let Some(m) = &a.model {
        let _ = write!(head, " · {m}");
    }
    let _ = write!(
        head,
        " · {}{}",
        format!("{:?}", a.task).to_lowercase(),
        if a.no_stream { "" } else { ", streamed" }
    );
    [head, sent(plan, result)]
}

/// The sweep as a table, one row per step.
pub fn table(plan: &BenchPlan, result: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "endpoint: {}", result.endpoint);
    let _ = writeln!(out, "sent: {}", sent(plan, result));
    let header = [
        "load",
        "reqs",
        "req/s",
        "tok/s",
        "ttft p50",
        "ttft p90",
        "ttft p99",
        "e2e p50",
        "e2e p90",
        "e2e p99",
        "itl p50",
        "itl p99",
        "err%",
        "429%",
        "goodput/s",
        "good%",
    ];
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    // A percentile of too few samples is marked, and explained under the table.
    let mut rough = false;
    let mut pct = |l: Option<Latency>, p: fn(&Latency) -> f64| match l {
        Some(l) if l.samples < MIN_SAMPLES => {
            rough = true;
            format!("{:.1}*", p(&l))
        }
        l => ms(l.map(|l| p(&l))),
    };
    let rows: Vec<Vec<String>> = result
        .steps
        .iter()
        .map(|s| {
            vec![
                s.load.label(),
                s.requests.to_string(),
                format!("{:.2}", s.requests_per_sec),
                format!("{:.1}", s.output_tokens_per_sec),
                pct(s.ttft_ms, |l| l.p50),
                pct(s.ttft_ms, |l| l.p90),
                pct(s.ttft_ms, |l| l.p99),
                pct(s.e2e_ms, |l| l.p50),
                pct(s.e2e_ms, |l| l.p90),
                pct(s.e2e_ms, |l| l.p99),
                pct(s.itl_ms, |l| l.p50),
                pct(s.itl_ms, |l| l.p99),
                format!("{:.1}", s.error_rate * 100.0),
                format!("{:.1}", s.rate_limited_rate * 100.0),
                format!("{:.2}", s.goodput_per_sec),
                format!("{:.1}", s.goodput_share * 100.0),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        cells.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_string)));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    let _ = writeln!(
        out,
        "latencies in ms over successful requests; tok/s = output tokens per second"
    );
    if rough {
        let _ = writeln!(
            out,
            "* from fewer than {MIN_SAMPLES} successful requests: rough (the p99 of a few is their maximum); give more --requests"
        );
    }
    if let Some(first) = result.records.iter().find_map(|r| r.error.as_deref()) {
        let _ = writeln!(out, "first error: {first}");
    }
    out
}

/// The JSON summary: the settings that shaped the load and every step's figures.
pub fn summary_json(plan: &BenchPlan, result: &BenchResult) -> serde_json::Value {
    let a = &plan.args;
    json!({
        "endpoint": result.endpoint,
        "model": a.model,
        "task": format!("{:?}", a.task).to_lowercase(),
        "stream": !a.no_stream,
        "input": a.input.as_ref().map(|p| p.display().to_string()),
        "input_tokens": a.input.is_none().then_some(a.input_tokens),
        "max_tokens": plan.params.get("max_tokens"),
        "warmup": a.warmup,
        "prompt_tokens": prompt_tokens(result),
        "slo": plan.slo,
        "steps": result.steps,
    })
}

/// Print the table and write every file asked for.
pub fn write_outputs(plan: &BenchPlan, result: &BenchResult, quiet: bool) -> Result<()> {
    let a = &plan.args;
    let json_to_stdout = a.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let text = table(plan, result);
    if json_to_stdout {
        if !quiet {
            eprint!("{text}");
        }
    } else {
        crate::frontend::stdout::print(&text)?;
    }
    if let Some(path) = &a.json {
        let doc = serde_json::to_string_pretty(&summary_json(plan, result))
            .map_err(|e| Error::output(path, e))?;
        if json_to_stdout {
            crate::frontend::stdout::println(doc)?;
        } else {
            crate::pipeline::journal::write_atomic(path, doc.as_bytes())?;
        }
    }
    if let Some(path) = &a.records {
        write_records(path, &result.records, &result.steps)?;
    }
    if let Some(path) = &a.plot {
        let subtitle = subtitle(plan, result);
        super::plot::draw(
            path,
            &result.steps,
            super::plot::Labels {
                subtitle: &subtitle,
                slo: &plan.slo,
            },
        )?;
    }
    Ok(())
}

/// The schema of `--records`: one row per request.
pub fn records_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt32, false),
        Field::new("load", DataType::Utf8, false),
        Field::new("request", DataType::UInt64, false),
        Field::new("start_ms", DataType::Float64, false),
        Field::new("queued_ms", DataType::Float64, false),
        Field::new("ttft_ms", DataType::Float64, true),
        Field::new("e2e_ms", DataType::Float64, false),
        Field::new("itl_ms", DataType::Float64, true),
        Field::new("prompt_tokens", DataType::UInt64, false),
        Field::new("output_tokens", DataType::UInt64, false),
        Field::new("status", DataType::UInt16, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Write `records` as Parquet (atomically, like every aiq output).
pub fn write_records(path: &Path, records: &[Record], steps: &[StepStats]) -> Result<()> {
    let schema = records_schema();
    let mut file = ParquetFile::create(path, schema.clone())?;
    let label = |step: u32| {
        steps
            .get(step as usize)
            .map_or_else(String::new, |s: &StepStats| s.load.label())
    };
    // Bounded batches: a long duration sweep can hold millions of records.
    for chunk in records.chunks(65_536) {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.step))),
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|r| label(r.step)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|r| r.request),
            )),
            Arc::new(Float64Array::from_iter_values(
                chunk.iter().map(|r| r.start_ms),
            )),
            Arc::new(Float64Array::from_iter_values(
                chunk.iter().map(|r| r.queued_ms),
            )),
            Arc::new(Float64Array::from_iter(chunk.iter().map(|r| r.ttft_ms))),
            Arc::new(Float64Array::from_iter_values(
                chunk.iter().map(|r| r.e2e_ms),
            )),
            Arc::new(Float64Array::from_iter(chunk.iter().map(|r| r.itl_ms))),
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|r| r.prompt_tokens),
            )),
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|r| r.output_tokens),
            )),
            Arc::new(UInt16Array::from_iter(chunk.iter().map(|r| r.status))),
            Arc::new(StringArray::from_iter(
                chunk.iter().map(|r| r.error.as_deref()),
            )),
        ];
        let batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::output(path, e))?;
        file.write(&batch)?;
    }
    file.finish()?;
    Ok(())
}
