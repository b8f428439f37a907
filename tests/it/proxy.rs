//! Proxies from the environment, as corporate networks set them:
//! `HTTPS_PROXY` tunnels TLS with CONNECT, `HTTP_PROXY` takes absolute-form
//! requests, both with the credentials of the proxy URL, and `NO_PROXY`
//! goes around them. The proxy here is a small forwarding one that records
//! what it was asked, in front of the simulator.

use std::sync::{Arc, Mutex};

use aiq::simulator::SimConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::util::*;

/// What the proxy saw on a connection: its first request line and its
/// Proxy-Authorization header.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    auth: Option<String>,
}

struct Proxy {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://user:pa55@{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, log.clone()));
            }
        });
        Proxy { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One client connection: a CONNECT is answered and piped to its target;
/// an absolute-form request is passed on, head and all, to the host it
/// names (the simulator takes absolute-form targets). Later requests on a
/// kept-alive connection go the same way unread.
async fn forward(client: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let mut client = BufReader::new(client);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if client.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let first = head.lines().next().unwrap_or_default().to_string();
    let auth = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("proxy-authorization: ")
                .or(l.strip_prefix("Proxy-Authorization: "))
        })
        .map(str::to_string);
    log.lock().unwrap().push(Seen {
        line: first.clone(),
        auth,
    });
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let host = if method == "CONNECT" {
        target.to_string()
    } else {
        let rest = target.strip_prefix("http://").unwrap_or(target);
        rest.split('/').next().unwrap_or("").to_string()
    };
    let Ok(mut server) = TcpStream::connect(&host).await else {
        return;
    };
    if method == "CONNECT" {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
    } else if server.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

async fn run_via(f: &Fixture, proxy_env: &[(&str, &str)], ca: Option<&str>) -> Vec<String> {
    let input = f.write_jsonl("in.jsonl", &rows(40, 0));
    let out = f.path("out.parquet");
    let mut args = vec!["--prompt", "{{text}}", "--concurrency", "4", "--no-warmup"];
    if let Some(ca) = ca {
        args.extend_from_slice(&["--ca-cert", ca]);
    }
    let o = f.run_openai_env(&input, &out, &args, proxy_env).await;
    let got = ok_rows(&o, &out);
    assert_eq!(got.len(), 40);
    got.iter()
        .map(|r| r["error_message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `Basic` credentials of user:pa55.
const AUTH: &str = "Basic dXNlcjpwYTU1";

#[tokio::test(flavor = "multi_thread")]
async fn http_proxy_gets_absolute_form_requests_with_its_credentials() {
    let f = Fixture::new(SimConfig::default()).await;
    let proxy = Proxy::start().await;
    let errors = run_via(&f, &[("HTTP_PROXY", &proxy.url)], None).await;
    assert!(errors.iter().all(String::is_empty), "{errors:?}");
    let seen = proxy.seen();
    assert!(!seen.is_empty(), "the proxy saw no request");
    let target = format!("POST {}/chat/completions HTTP/1.1", f.openai_url());
    for s in &seen {
        assert_eq!(s.line, target);
        assert_eq!(s.auth.as_deref(), Some(AUTH));
    }
    // Every call went through it.
    assert_eq!(f.sim.stats().requests, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_proxy_tunnels_with_connect() {
    let f = Fixture::new(sim(|c| c.tls = true)).await;
    let ca = f.path("ca.pem");
    std::fs::write(&ca, f.sim.ca_pem().expect("a TLS simulator has a CA")).unwrap();
    let proxy = Proxy::start().await;
    let errors = run_via(&f, &[("HTTPS_PROXY", &proxy.url)], ca.to_str()).await;
    assert!(errors.iter().all(String::is_empty), "{errors:?}");
    let seen = proxy.seen();
    assert!(!seen.is_empty(), "the proxy saw no CONNECT");
    let authority = f
        .openai_url()
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for s in &seen {
        assert_eq!(s.line, format!("CONNECT {authority} HTTP/1.1"));
        assert_eq!(s.auth.as_deref(), Some(AUTH));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_proxy_goes_around_it() {
    let f = Fixture::new(SimConfig::default()).await;
    let proxy = Proxy::start().await;
    let errors = run_via(
        &f,
        &[("HTTP_PROXY", &proxy.url), ("NO_PROXY", "127.0.0.1")],
        None,
    )
    .await;
    assert!(errors.iter().all(String::is_empty), "{errors:?}");
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxys_password_quoted_back_is_redacted() {
    // The simulator quotes the headers it got, the proxy's included.
    let proxy = Proxy::start().await;
    let (f, input, out) = job_of(
        sim(|c| c.echo_headers = true),
        &[serde_json::json!({"text": "[[sim:400]]"})],
    )
    .await;
    let envs = [("HTTP_PROXY", proxy.url.as_str())];
    let o = f.run_openai_env(&input, &out, &PROMPT_TEXT, &envs).await;
    let got = ok_rows(&o, &out);
    let m = got[0]["error_message"].as_str().unwrap_or_default();
    assert!(m.contains("proxy-authorization: Basic [redacted]"), "{m}");
    assert!(!m.contains(&AUTH[6..]) && !m.contains("pa55"), "{m}");
    assert_eq!(proxy.seen()[0].auth.as_deref(), Some(AUTH));
}
