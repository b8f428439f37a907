//! Shared by the end-to-end benchmarks: run a job through the real library
//! pipeline against an in-process simulator.

#![allow(dead_code)]

use std::path::Path;

use aiq::job::plan::Plan;
use aiq::job::settings::JobSettings;
use aiq::pipeline::progress::Summary;
use aiq::pipeline::run::{run, Ui};
use aiq::simulator::Simulator;
use serde_json::Value;

pub fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(path, text.join("\n") + "\n").expect("write input");
}

/// Run `settings` against `sim`'s OpenAI route (key from OPENAI_API_KEY).
pub async fn run_against(sim: &Simulator, mut settings: JobSettings) -> Summary {
    settings.endpoint = Some(format!("{}/v1", sim.base_url()));
    settings.model.get_or_insert_with(|| "bench".to_string());
    let plan = Plan::from_settings(settings, true).expect("plan");
    run(plan, Ui { quiet: true }).await.expect("run")
}
