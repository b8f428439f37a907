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

use super::stats::{Latency, Record, StepStats};
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

/// The sweep as a table, one row per step.
pub fn table(result: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "endpoint: {}", result.endpoint);
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
    let rows: Vec<Vec<String>> = result
        .steps
        .iter()
        .map(|s| {
            vec![
                s.load.label(),
                s.requests.to_string(),
                format!("{:.2}", s.requests_per_sec),
                format!("{:.1}", s.output_tokens_per_sec),
                ms(s.ttft_ms.map(|l| l.p50)),
                ms(s.ttft_ms.map(|l| l.p90)),
                ms(s.ttft_ms.map(|l| l.p99)),
                ms(s.e2e_ms.map(|l| l.p50)),
                ms(s.e2e_ms.map(|l| l.p90)),
                ms(s.e2e_ms.map(|l| l.p99)),
                ms(s.itl_ms.map(|l| l.p50)),
                ms(s.itl_ms.map(|l| l.p99)),
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
        "slo": plan.slo,
        "steps": result.steps,
    })
}

/// Print the table and write every file asked for.
pub fn write_outputs(plan: &BenchPlan, result: &BenchResult, quiet: bool) -> Result<()> {
    let a = &plan.args;
    let json_to_stdout = a.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let text = table(result);
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
        super::plot::draw(path, &result.steps)?;
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
