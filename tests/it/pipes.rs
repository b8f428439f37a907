//! A reader that closes stdout early (`aiq sql … | head -1`): every command
//! that prints to stdout stops quietly with exit 0, as Unix tools do.

use aiq::simulator::SimConfig;

use super::util::{code, job, stderr, TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_is_a_quiet_stop_for_every_command() {
    let (f, input, output) = job(SimConfig::default(), 50, 0).await;
    let table = format!("t={}", input.display());
    let run = f.run_args(&input, &output);
    let sql = ["sql", "-q", "SELECT * FROM t", "--table", &table];
    let bench = ["bench", "-q", "--endpoint", "simulator", "--requests", "4"];
    let with = |base: &[&str], extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = run.iter().map(String::as_str).collect::<Vec<_>>();
    let commands = [
        with(&sql, &["--show", "5000"]),
        with(&sql, &["--dry-run"]),
        with(&run, &["--explain"]),
        with(&run, &["--dry-run"]),
        with(&run, &["--json"]),
        with(&bench, &[]),
        with(&bench, &["--json", "-"]),
        with(&["--help"], &[]),
        with(&["sql", "--help"], &[]),
    ];
    for args in commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs = [("OPENAI_API_KEY", TOKEN)];
        let o = f.aiq_stdout_closed(&args, &envs).await;
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
    // The job before the closed pipe was done all the same.
    assert!(output.exists());
}
