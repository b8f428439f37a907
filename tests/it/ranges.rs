//! Numeric settings out of range, as flags and in a job file: each is a
//! usage error (exit 2) naming the setting and its range, found before
//! anything is sent. Before, `--timeout 1e30` panicked (exit 101) and
//! `--batch-rows 0` or `--batch-size 0` were taken silently.

use aiq::simulator::SimConfig;

use super::util::{code, job, stderr, PROMPT_TEXT, TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn numeric_settings_out_of_range_exit_2_naming_the_range() {
    let (f, input, out) = job(SimConfig::default(), 3, 0).await;
    let flags: &[(&[&str], &str)] = &[
        (
            &["--timeout", "1e30"],
            "--timeout (job file: timeout) must be above 0 and at most 86400 seconds, got 1e30",
        ),
        (&["--timeout", "NaN"], "--timeout"),
        (
            &["--batch-rows", "0"],
            "--batch-rows (job file: batch_rows) must be from 1 to 10000000, got 0",
        ),
        (
            &["--batch-size", "0", "--task", "embeddings"],
            "--batch-size (job file: batch_size) must be from 1 to 100000, got 0",
        ),
        (
            &["--max-line-bytes", "0"],
            "--max-line-bytes (job file: max_line_bytes) must be at least 1, got 0",
        ),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--concurrency", "10000000000000000000"], "--concurrency"),
        (&["--rpm", "0"], "--rpm (job file: rpm) must be at least 1"),
        (&["--tpm", "0"], "--tpm"),
        (&["--itpm", "0"], "--itpm"),
        (&["--qph", "0"], "--qph"),
        (&["--max-retries", "4000000000"], "--max-retries"),
        (&["--backoff-ms", "18446744073709551615"], "--backoff-ms"),
        (&["--max-cost", "inf"], "--max-cost"),
        (&["--price-in=-1", "--price-out", "1"], "--price-in"),
        (&["--workers", "0"], "--workers"),
        (&["--poll-secs", "1e12", "--mode", "batch"], "--poll-secs"),
    ];
    for (extra, message) in flags {
        let args = [&PROMPT_TEXT[..], extra].concat();
        let o = f.run_openai(&input, &out, &args).await;
        assert_eq!(code(&o), 2, "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{extra:?}: {}", stderr(&o));
    }
    let files = [
        (
            "timeout = 1e300",
            "--timeout (job file: timeout) must be above 0 and at most 86400 seconds, got 1e300",
        ),
        ("batch_rows = 0", "--batch-rows"),
        (
            "[simulator]\nfault_rate = 2.0",
            "simulator.fault_rate (job file) must be from 0 to 1, got 2",
        ),
    ];
    for (i, (text, message)) in files.iter().enumerate() {
        let job = f.path(&format!("job-{i}.toml"));
        let file = format!(
            "input = {:?}\noutput = {:?}\nendpoint = {:?}\nmodel = \"m\"\nprompt = \"{{{{text}}}}\"\n{text}\n",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            f.openai_url()
        );
        std::fs::write(&job, file).unwrap();
        let o = f
            .aiq(
                &["run", "-q", job.to_str().unwrap()],
                &[("OPENAI_API_KEY", TOKEN)],
            )
            .await;
        assert_eq!(code(&o), 2, "{text}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{text}: {}", stderr(&o));
    }
    assert_eq!(f.sim.stats().requests, 0, "nothing was sent");
    assert!(!out.exists());
}
