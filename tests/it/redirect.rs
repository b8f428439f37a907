//! Endpoints behind a redirect. 307 and 308 keep a POST a POST: aiq follows
//! them, as reqwest did, and sends its credentials only to the host they
//! were for. 301, 302 and 303 would turn it into a GET: the job stops at
//! once and says where the endpoint went.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aiq::simulator::{SimConfig, Simulator};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::util::{assert_ok, code, output, read_rows, rows, stderr, Fixture, TOKEN};

/// A server answering every request with `status` and `Location: to`,
/// counting the requests; its base URL.
async fn redirector(status: u16, to: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (to, seen) = (to.clone(), seen.clone());
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                // Keep-alive: one request after another, body by length.
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                    let reply = format!(
                        "HTTP/1.1 {status} Moved\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n"
                    );
                    if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, count)
}

async fn run(f: &Fixture, endpoint: &str) -> std::process::Output {
    let input = f.write_jsonl("in.jsonl", &rows(40, 0));
    let out = f.path("out.parquet");
    let extra = ["--prompt", "{{text}}", "--concurrency", "4", "--no-warmup"];
    output(f.endpoint_command(endpoint, &input, &out, &extra, &[])).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_308_is_followed_with_the_post_and_its_body() {
    let f = Fixture::new(SimConfig::default()).await;
    // The target takes no token: credentials do not cross to another host.
    let target = Simulator::start(SimConfig::default()).await.unwrap();
    let to = format!("{}/v1/chat/completions", target.base_url());
    let (endpoint, redirected) = redirector(308, to).await;
    let o = run(&f, &endpoint).await;
    assert_ok(&o);
    let (_, got) = read_rows(&f.path("out.parquet"));
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|r| r["error_message"].is_null()));
    assert_eq!(redirected.load(Ordering::Relaxed), 40);
    assert_eq!(
        target.stats().ok_by_prompt.len(),
        40,
        "every row answered once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_301_stops_the_job_and_says_where_to() {
    let f = Fixture::new(SimConfig::default()).await;
    let to = format!("{}/v1/chat/completions?sig=SIGNED", f.sim.base_url());
    let (endpoint, redirected) = redirector(301, to).await;
    let o = run(&f, &endpoint).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    let expected = format!("redirects to {}/v1/chat/completions;", f.sim.base_url());
    assert!(err.contains(&expected), "{err}");
    assert!(!err.contains("SIGNED") && !err.contains(TOKEN), "{err}");
    // Stopped at once: a handful of calls (one per worker), none retried.
    assert!(redirected.load(Ordering::Relaxed) <= 4);
    assert_eq!(f.sim.stats().requests, 0);
}
