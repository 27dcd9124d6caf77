//! End-to-end tests for `sluice echo`: spawn the real binary and talk to it with `curl`.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `sluice echo` child process, killed on drop.
struct EchoServer {
    child: Child,
    addr: SocketAddr,
    /// Every stdout line after the `listening` one.
    lines: Arc<Mutex<Vec<String>>>,
}

impl EchoServer {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["echo", "--listen", "127.0.0.1:0", "--pod", "infra-backend-v1-abc", "--namespace", "ns1"])
            .env_remove("SERVICE_NAME")
            .env_remove("INGRESS_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice echo");
        let stdout = child.stdout.take().expect("child stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&lines);
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening addr=") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_owned());
                    }
                    continue;
                }
                sink.lock().expect("lines lock").push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("`listening addr=` line on stdout")
            .parse()
            .expect("socket address");
        Self { child, addr, lines }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until a stdout line satisfying `pred` appears.
    fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.lines.lock().expect("lines lock").iter().find(|l| pred(l)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "log line not found");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `curl` can be used; fails the test when it is missing on CI.
fn have_curl() -> bool {
    let ok = Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "curl is required on CI");
        eprintln!("note: curl not found, skipping the echo end-to-end test");
    }
    ok
}

fn curl(args: &[&str]) -> Output {
    let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("run curl");
    assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A parsed `curl -i` response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// Runs `curl -i` and splits status, headers and body (skipping interim 1xx responses).
fn request(args: &[&str]) -> Reply {
    let mut all = vec!["-i"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let mut text = String::from_utf8(out.stdout).expect("UTF-8 reply");
    loop {
        let (head, body) = text.split_once("\r\n\r\n").expect("header/body split");
        let mut lines = head.lines();
        let status_line = lines.next().expect("status line");
        let status: u16 = status_line.split_whitespace().nth(1).expect("status code").parse().expect("numeric status");
        if (100..200).contains(&status) {
            text = body.to_owned();
            continue;
        }
        let headers =
            lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
        return Reply { status, headers, body: body.to_owned() };
    }
}

fn header_values(doc: &Value, name: &str) -> Vec<String> {
    doc["headers"][name]
        .as_array()
        .unwrap_or_else(|| panic!("header {name} missing in {doc}"))
        .iter()
        .map(|v| v.as_str().expect("string header value").to_owned())
        .collect()
}

#[test]
fn echo_get_reports_the_request() {
    if !have_curl() {
        return;
    }
    let server = EchoServer::start();
    let reply = request(&[
        "-H",
        "X-Forwarded-For: 1.2.3.4",
        "-H",
        "x-custom: a",
        "-H",
        "X-Custom: b",
        &server.url("/foo/bar?x=1&y=two"),
    ]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    let doc = reply.json();
    assert_eq!(doc["path"], "/foo/bar?x=1&y=two");
    assert_eq!(doc["host"], server.addr.to_string());
    assert_eq!(doc["method"], "GET");
    assert_eq!(doc["proto"], "HTTP/1.1");
    assert_eq!(doc["pod"], "infra-backend-v1-abc");
    assert_eq!(doc["namespace"], "ns1");
    assert_eq!(doc["service"], "");
    assert_eq!(doc["ingress"], "");
    assert_eq!(doc["httpPort"], server.addr.port().to_string());
    assert_eq!(header_values(&doc, "X-Forwarded-For"), ["1.2.3.4"]);
    assert_eq!(header_values(&doc, "X-Custom"), ["a", "b"]);
    assert!(header_values(&doc, "User-Agent")[0].starts_with("curl/"));
    assert!(doc["headers"].get("Host").is_none(), "Host must not be echoed");
    // Field order matches echo-basic.
    let keys: Vec<&str> = doc.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 10, "{keys:?}");
    let body = &reply.body;
    let positions: Vec<usize> = [
        "\"path\"",
        "\"host\"",
        "\"method\"",
        "\"proto\"",
        "\"headers\"",
        "\"namespace\"",
        "\"ingress\"",
        "\"service\"",
        "\"pod\"",
        "\"httpPort\"",
    ]
    .iter()
    .map(|k| body.find(k).expect("key present"))
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order: {body}");

    let line = server.wait_for_line(|l| l.contains("/foo/bar?x=1&y=two"));
    assert!(line.starts_with("Echoing back request made to /foo/bar?x=1&y=two to client (127.0.0.1:"), "{line}");

    // Host header as sent by the client.
    let doc = request(&["-H", "Host: example.com:8080", &server.url("/")]).json();
    assert_eq!(doc["host"], "example.com:8080");
    assert_eq!(doc["path"], "/");

    // Health.
    let reply = request(&[&server.url("/health")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "OK");
}

#[test]
fn echo_set_header_and_status() {
    if !have_curl() {
        return;
    }
    let server = EchoServer::start();
    let reply = request(&["-H", "X-Echo-Set-Header: X-Foo:bar, X-Multi:1,X-Multi:2", &server.url("/set")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-foo"), Some("bar"));
    assert_eq!(reply.header("x-multi"), Some("1,2"));
    assert_eq!(header_values(&reply.json(), "X-Echo-Set-Header"), ["X-Foo:bar, X-Multi:1,X-Multi:2"]);

    let reply = request(&[&server.url("/status/503")]);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.json()["message"].is_string());

    let reply = request(&[&server.url("/status/abc")]);
    assert_eq!(reply.status, 400);
    assert!(reply.json()["message"].is_string());
}

#[test]
fn echo_delay() {
    if !have_curl() {
        return;
    }
    let server = EchoServer::start();
    // Warm up (process start, first connection).
    request(&[&server.url("/warmup")]);

    let started = Instant::now();
    let reply = request(&[&server.url("/slow?delay=200ms")]);
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/slow?delay=200ms");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    let reply = request(&[&server.url("/slow?delay=bogus")]);
    assert_eq!(reply.status, 500);
    assert!(reply.json()["message"].is_string());
}

#[test]
fn echo_h2c_prior_knowledge() {
    if !have_curl() {
        return;
    }
    let server = EchoServer::start();
    let reply = request(&["--http2-prior-knowledge", "-H", "X-Test: h2", &server.url("/h2?q=1")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert_eq!(doc["proto"], "HTTP/2.0");
    assert_eq!(doc["path"], "/h2?q=1");
    assert_eq!(doc["host"], server.addr.to_string());
    assert_eq!(header_values(&doc, "X-Test"), ["h2"]);
}

#[test]
fn echo_post_keep_alive() {
    if !have_curl() {
        return;
    }
    let server = EchoServer::start();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = std::env::temp_dir().join(format!("sluice-echo-post-{}.bin", std::process::id()));
    std::fs::write(&file, &payload).expect("write payload");
    let data = format!("@{}", file.display());
    // Two URLs on one command line: curl reuses the connection.
    let out = curl(&["-H", "Expect:", "--data-binary", &data, &server.url("/post-one"), &server.url("/post-two")]);
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let docs: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("two JSON documents");
    assert_eq!(docs.len(), 2);
    for (doc, path) in docs.iter().zip(["/post-one", "/post-two"]) {
        assert_eq!(doc["method"], "POST");
        assert_eq!(doc["path"], path);
        assert_eq!(header_values(doc, "Content-Length"), [payload.len().to_string()]);
    }
    // Same client address (port) for both requests: the connection was reused.
    let client = |path: &str| {
        let line = server.wait_for_line(|l| l.contains(&format!("made to {path} to")));
        line.rsplit_once('(').expect("client addr").1.to_owned()
    };
    assert_eq!(client("/post-one"), client("/post-two"));
}

#[test]
fn echo_websocket() {
    let server = EchoServer::start();
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .expect("handshake");
    // Read the 101 response head byte by byte (so no frame bytes are consumed).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("UTF-8 head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert_eq!(headers.get("sec-websocket-accept").map(String::as_str), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    // Masked text frame "Hello" (RFC 6455 §5.7) comes back unmasked.
    stream.write_all(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]).expect("send text");
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).expect("read text");
    assert_eq!(reply, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);

    // Close with 1000 is answered with close 1000, then EOF.
    let mask = [1u8, 2, 3, 4];
    let code = 1000u16.to_be_bytes();
    stream.write_all(&[0x88, 0x82, 1, 2, 3, 4, code[0] ^ mask[0], code[1] ^ mask[1]]).expect("send close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read close");
    assert_eq!(rest, [0x88, 0x02, code[0], code[1]]);
}

#[cfg(unix)]
#[test]
fn echo_exits_zero_on_sigterm() {
    let mut server = EchoServer::start();
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "echo did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
