//! `aiq run --explain`: what the requests will look like, before any is sent.
//!
//! Renders the first rows, shows the static prefix every request starts
//! with, its estimated tokens, whether it reaches the providers' minimum for
//! prompt caching (1,024 tokens), which cache marker aiq will send, and where
//! the template puts per-row text early (which defeats caching).

use std::fmt::Write;

use serde_json::Value;

use crate::error::Result;
use crate::job::plan::Plan;
use crate::pipeline::render::{BodyBuilder, Templates, MIN_CACHEABLE_TOKENS};
use crate::pipeline::source::Source;
use crate::provider::dialect::Dialect;
use crate::provider::endpoint::Target;

/// Rows rendered in full.
const SHOWN_ROWS: usize = 2;

pub fn explain(plan: &Plan) -> Result<String> {
    let source = Source::open_shard(&plan.input, 64, plan.shard, plan.max_line_bytes)?;
    let schema = source.schema.clone();
    let templates = Templates::for_plan(&plan, &schema)?;
    let spec = plan.body_spec();
    let builder = BodyBuilder::new(spec.clone(), &templates);
    let mut out = String::new();
    // A Databricks endpoint's name says the model; elsewhere it is named.
    let name = plan.endpoint_name();
    let model = match &plan.target {
        Target::Databricks(_) => String::new(),
        _ if name.is_empty() => String::new(),
        _ => format!(", model `{name}`"),
    };
    let _ = writeln!(out, "endpoint   {}{model}", plan.target);
    let _ = writeln!(
        out,
        "columns    {}",
        templates.columns().collect::<Vec<_>>().join(", ")
    );
    let layout = match (plan.system.is_some(), templates.system_is_per_row()) {
        (false, _) => "no system prompt; the user prompt's literal start is the static prefix",
        (true, false) => "static system prompt, then the user prompt (cache friendly)",
        (true, true) => "the system prompt varies per row: rows share a prefix only when their system prompts are equal",
    };
    let _ = writeln!(out, "layout     {layout}");
    if templates.user_literal_prefix().is_empty() && plan.system.is_none() {
        let _ = writeln!(out, "warning    the user prompt starts with a row value: nothing is shared, nothing can be cached");
    }
    let marker = if spec.cache_control && spec.dialect == Dialect::Bedrock {
        "Bedrock `cachePoint` block after the last static block"
    } else if spec.cache_control {
        "Claude `cache_control` breakpoint on the last static block"
    } else if spec.prompt_cache_key {
        "OpenAI `prompt_cache_key` (hash of the static prefix)"
    } else {
        "none (the provider caches prefixes automatically, if at all)"
    };
    let _ = writeln!(out, "marker     {marker}");
    let mut shown = 0;
    let mut first_prefix = None;
    for batch in source.into_batches() {
        let batch = batch?;
        for rendered in templates.render_batch(&batch, 0) {
            let Ok(Some(row)) = rendered else { continue };
            let prefix = builder.prefix_of(&row);
            if first_prefix.is_none() {
                first_prefix = Some(prefix);
                let cacheable = if prefix.cacheable() {
                    "reaches the 1,024-token caching minimum: every request after the first of its group reads it from cache".to_string()
                } else {
                    format!(
                        "below the {MIN_CACHEABLE_TOKENS}-token caching minimum: providers will not cache it (add shared instructions or examples to the static part to benefit)"
                    )
                };
                let _ = writeln!(out, "prefix     ~{} tokens; {cacheable}", prefix.tokens);
            }
            let call = builder.single(&row);
            let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
            let _ = writeln!(
                out,
                "\nrow {} (~{} prompt tokens):",
                shown, call.est_prompt_tokens
            );
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            shown += 1;
            if shown == SHOWN_ROWS {
                return Ok(out);
            }
        }
    }
    if shown == 0 {
        let _ = writeln!(
            out,
            "\nno row renders: every row has a null in a template variable"
        );
    }
    Ok(out)
}
