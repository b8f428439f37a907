//! The fan-out examples in `jobs/` stay runnable: each YAML file parses,
//! and every aiq command line in it parses with aiq's own CLI, after the
//! substitutions its platform makes (bundle variables, `{{input}}`).

use std::path::{Path, PathBuf};

use aiq::frontend::cli::{Cli, Command};
use aiq::job::settings::{InputFormat, OutputFormat, WriteMode};
use clap::Parser;
use serde_json::Value;

fn jobs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()))
}

/// Parse `argv` (without the program name) as aiq's CLI would.
#[track_caller]
fn parses(what: &str, argv: &[String]) -> Cli {
    let full = std::iter::once("aiq".to_string()).chain(argv.iter().cloned());
    Cli::try_parse_from(full).unwrap_or_else(|e| panic!("{what}: {argv:?} does not parse: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a list of arguments")
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Every object under `v` that has `key`, depth first.
fn find<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if let Some(found) = map.get(key) {
                out.push(found);
            }
            map.values().for_each(|x| find(x, key, out));
        }
        Value::Array(items) => items.iter().for_each(|x| find(x, key, out)),
        _ => {}
    }
}

/// The arguments of a bundle's `python_wheel_task` as the bundle passes
/// them: the defaults of `vars` (the bundle's variables) substituted, and
/// the for_each_task's current input (3) for `{{input}}`.
fn bundle_args(vars: &Value, task: &Value) -> Vec<String> {
    let vars = vars.as_object().expect("variables");
    strings(&task["parameters"])
        .iter()
        .map(|arg| {
            let mut arg = arg.replace("{{input}}", "3");
            for (name, v) in vars {
                let value = v["default"].as_str().expect("a default");
                arg = arg.replace(&format!("${{var.{name}}}"), value);
            }
            assert!(!arg.contains("${"), "unknown variable in {arg}");
            arg
        })
        .collect()
}

#[test]
fn databricks_bundle_runs_aiq_per_shard() {
    let path = jobs_dir().join("databricks/databricks.yml");
    let bundle = yaml(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut tasks = Vec::new();
    find(&bundle, "python_wheel_task", &mut tasks);
    assert!(tasks.len() >= 2, "a scoring and a merge task");
    let mut shards = 0;
    for task in tasks {
        assert_eq!(task["package_name"], "aiq");
        assert_eq!(task["entry_point"], "aiq");
        let argv = bundle_args(&bundle["variables"], task);
        let cli = parses("databricks.yml", &argv);
        if let Command::Run(run) = &cli.command {
            let shard = run.settings.shard.expect("each iteration runs one shard");
            assert_eq!(shard.index, Some(3));
            shards += 1;
        }
    }
    assert_eq!(shards, 1);
    // The fan-out covers every shard index once.
    let mut each = Vec::new();
    find(&bundle, "for_each_task", &mut each);
    let inputs: Vec<u32> = serde_json::from_str(each[0]["inputs"].as_str().unwrap()).unwrap();
    assert_eq!(inputs, (0..8).collect::<Vec<_>>());
    assert!(text.contains("\"{{input}}/8\""));
    // The CLI runs an artifact's build command inside the artifact's
    // `path` (the repository root here), so the wheel is built from `.`;
    // `../..` would be two folders above the clone.
    let artifact = &bundle["artifacts"]["aiq"];
    assert_eq!(artifact["path"], "../..");
    let build = artifact["build"].as_str().expect("a build command");
    assert!(build.ends_with(" ."), "builds its own path: {build}");
}

#[test]
fn kubernetes_indexed_job_runs_aiq_per_index() {
    let job = yaml(&jobs_dir().join("kubernetes/indexed-job.yaml"));
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let completions = job["spec"]["completions"].as_u64().unwrap() as u32;
    let parallelism = job["spec"]["parallelism"].as_u64().unwrap() as u32;
    let containers = job["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let mut runs = 0;
    for c in containers {
        assert_eq!(strings(&c["command"]), ["aiq"]);
        let cli = parses("indexed-job.yaml", &strings(&c["args"]));
        let Command::Run(run) = &cli.command else {
            panic!("the container runs `aiq run`")
        };
        let shard = run.settings.shard.expect("--shard");
        assert_eq!(
            (shard.index, shard.count),
            (None, completions),
            "auto/<completions>"
        );
        assert_eq!(
            run.settings.workers,
            Some(parallelism),
            "--workers = parallelism"
        );
        runs += 1;
    }
    assert_eq!(runs, 1);
}

/// A scheduled job of the bundle (`resources/FILE`, included by
/// databricks.yml): every `${var.x}` it names declared (here, in
/// databricks.yml or in another included file), a schedule, credentials
/// from a secret scope in the job cluster's environment (never in
/// parameters), and its first task on that cluster with the wheel as a
/// library. Returns the job and the bundle's variables.
fn scheduled_job(file: &str, name: &str) -> (Value, Value) {
    let root = jobs_dir().join("databricks");
    let bundle = yaml(&root.join("databricks.yml"));
    assert_eq!(bundle["include"], serde_json::json!(["resources/*.yml"]));
    let mut vars = bundle["variables"].as_object().expect("variables").clone();
    let resources = std::fs::read_dir(root.join("resources")).expect("resources/");
    for entry in resources {
        let path = entry.expect("a file").path();
        if path.extension().is_some_and(|e| e == "yml") {
            if let Some(v) = yaml(&path)["variables"].as_object() {
                vars.extend(v.clone());
            }
        }
    }
    let path = root.join("resources").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    for used in text.split("${var.").skip(1) {
        let var = used.split('}').next().unwrap();
        assert!(vars.contains_key(var), "{file}: undeclared variable {var}");
    }
    let job = yaml(&path)["resources"]["jobs"][name].clone();
    let schedule = &job["schedule"];
    assert_eq!(
        schedule["quartz_cron_expression"]
            .as_str()
            .map(|c| c.split(' ').count()),
        Some(6)
    );
    assert_eq!(schedule["pause_status"], "UNPAUSED");
    assert_eq!(
        job["max_concurrent_runs"], 1,
        "a night's run is not doubled"
    );
    let cluster = &job["job_clusters"][0]["new_cluster"];
    let env = cluster["spark_env_vars"]
        .as_object()
        .expect("spark_env_vars");
    for name in ["DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"] {
        let value = env[name].as_str().unwrap();
        assert!(
            value.starts_with("{{secrets/") && value.ends_with("}}"),
            "{name}: {value}"
        );
    }
    let task = &job["tasks"][0];
    assert_eq!(
        task["job_cluster_key"],
        job["job_clusters"][0]["job_cluster_key"]
    );
    assert!(task["libraries"][0]["whl"]
        .as_str()
        .unwrap()
        .ends_with(".whl"));
    (job, Value::Object(vars))
}

/// The Spark nightly (`resources/aiq_nightly.yml`): a script that exists.
#[test]
fn databricks_nightly_job_is_scheduled_with_secret_credentials() {
    let (job, _) = scheduled_job("aiq_nightly.yml", "aiq_nightly_scores");
    let task = &job["tasks"][0];
    let script = task["spark_python_task"]["python_file"].as_str().unwrap();
    let resources = jobs_dir().join("databricks/resources");
    assert!(resources.join(script).is_file(), "{script}");
    let params = strings(&task["spark_python_task"]["parameters"]);
    assert_eq!(
        params.len(),
        4,
        "SOURCE_TABLE RESULTS_TABLE ENDPOINT JOURNAL"
    );
    assert!(params.iter().all(|p| !p.contains("secrets")), "{params:?}");
}

/// The nightly merge (`resources/aiq_nightly_merge.yml`): the aiq command
/// merging a Delta table into a results Delta table by key, both at
/// external locations.
#[test]
fn databricks_nightly_merge_keeps_its_memory_in_a_delta_table() {
    let (job, vars) = scheduled_job("aiq_nightly_merge.yml", "aiq_nightly_merge");
    let task = &job["tasks"][0]["python_wheel_task"];
    assert_eq!(task["package_name"], "aiq");
    assert_eq!(task["entry_point"], "aiq");
    let argv = bundle_args(&vars, task);
    let Command::Run(run) = parses("aiq_nightly_merge.yml", &argv).command else {
        panic!("the task runs `aiq run`")
    };
    let s = &run.settings;
    assert_eq!(s.input_format, Some(InputFormat::Delta));
    assert_eq!(s.output_format, Some(OutputFormat::Delta));
    assert_eq!(s.write_mode, Some(WriteMode::Merge));
    assert_eq!(s.merge_key, ["ticket_id"]);
    for path in [&s.input, &s.output] {
        let url = path.as_ref().expect("input and output").to_string_lossy();
        assert!(
            url.starts_with("s3://"),
            "a path at an external location: {url}"
        );
    }
    assert!(!argv.iter().any(|a| a.contains("secret")), "{argv:?}");
}
