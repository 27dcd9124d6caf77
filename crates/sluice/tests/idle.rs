//! Plain connections that go idle (crates/proxy/src/idle.rs): an idle
//! HTTP/1.1 keep-alive connection drops its hyper state after ~0.25–0.5 s
//! and is served again by a new one when the client sends the next request;
//! bytes of a partly sent request survive the idle time; pipelined requests
//! are answered in order; an h2 preface sent in pieces still reaches the
//! HTTP/2 server; SIGTERM closes an idle connection and Sluice exits 0.
//! Raw sockets (std), so the byte boundaries are the test's own.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Echo, Req, Sluice, TempDir, curl_retry, prefix_rule, require_curl, web_config};

struct Setup {
    _echo: Echo,
    sluice: Sluice,
    addr: SocketAddr,
    _dir: TempDir,
}

fn setup(tag: &str) -> Option<Setup> {
    if !require_curl(tag) {
        return None;
    }
    let dir = TempDir::new(tag);
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let echo = Echo::start("blue", "default", &log_dir);
    std::fs::write(
        config_dir.join("sluice.yaml"),
        web_config(&prefix_rule("/", "blue"), &[("blue", echo.addr.port())]),
    )
    .expect("config");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let warm = curl_retry(addr, &Req::get("/warm"), Duration::from_secs(5));
    assert_eq!(warm.status, 200);
    Some(Setup { _echo: echo, sluice, addr, _dir: dir })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    s
}

/// Reads one HTTP/1.1 response with a Content-Length body: (status, body).
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String) {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no content-length in {head:?}"));
            while pending.len() < end + 4 + len {
                let n = s.read(&mut buf).unwrap_or_else(|e| panic!("reading the body: {e}"));
                assert!(n > 0, "connection closed in the body");
                pending.extend_from_slice(&buf[..n]);
            }
            let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).into_owned();
            pending.drain(..end + 4 + len);
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
            return (status, body);
        }
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("reading the head: {e}"));
        assert!(n > 0, "connection closed before the response (got {:?})", String::from_utf8_lossy(pending));
        pending.extend_from_slice(&buf[..n]);
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
}

#[test]
fn idle_keep_alive_connection_serves_again_after_parking() {
    let Some(t) = setup("idle_keep_alive_connection_serves_again_after_parking") else { return };
    let mut s = connect(t.addr);
    let mut pending = Vec::new();
    for round in 0..3 {
        s.write_all(get(&format!("/round-{round}")).as_bytes()).expect("write");
        let (status, body) = read_response(&mut s, &mut pending);
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(body.contains(&format!("/round-{round}")), "round {round} reached the backend: {body}");
        // The only client connection parks (its hyper state is dropped).
        t.sluice.wait_parked(1, &format!("round {round}"));
    }
    // A request with a body on the same connection, after idling.
    let post = "POST /form HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n\r\nhello";
    s.write_all(post.as_bytes()).expect("write");
    let (status, body) = read_response(&mut s, &mut pending);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/form"), "{body}");
}

#[test]
fn partial_request_head_survives_idle_time() {
    let Some(t) = setup("partial_request_head_survives_idle_time") else { return };
    let mut s = connect(t.addr);
    let mut pending = Vec::new();
    // Idle first, then half a request head, idle again, then the rest.
    s.write_all(get("/first").as_bytes()).expect("write");
    assert_eq!(read_response(&mut s, &mut pending).0, 200);
    t.sluice.wait_parked(1, "after the first request");
    s.write_all(b"GET /split-head HTTP/1.1\r\nHost: app.exa").expect("write");
    // Idle with half a head through at least one parking check: once the
    // connection has woken (no parked connection left), a second connection,
    // idle for less time than the first, parking shows that a check has
    // come and gone for the first too.
    t.sluice.wait_parked(0, "woken by half a request head");
    let mut control = connect(t.addr);
    let mut control_pending = Vec::new();
    control.write_all(get("/control").as_bytes()).expect("write");
    assert_eq!(read_response(&mut control, &mut control_pending).0, 200);
    t.sluice.wait_parked(1, "the control connection");
    s.write_all(b"mple.com\r\nX-Late: yes\r\n\r\n").expect("write");
    let (status, body) = read_response(&mut s, &mut pending);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("/split-head") && body.to_ascii_lowercase().contains("x-late"),
        "the whole request arrived: {body}"
    );
}

#[test]
fn pipelined_requests_after_idle_time_are_answered_in_order() {
    let Some(t) = setup("pipelined_requests_after_idle_time_are_answered_in_order") else { return };
    let mut s = connect(t.addr);
    let mut pending = Vec::new();
    s.write_all(get("/first").as_bytes()).expect("write");
    assert_eq!(read_response(&mut s, &mut pending).0, 200);
    t.sluice.wait_parked(1, "before the pipelined requests");
    s.write_all(format!("{}{}{}", get("/p1"), get("/p2"), get("/p3")).as_bytes()).expect("write");
    for p in ["/p1", "/p2", "/p3"] {
        let (status, body) = read_response(&mut s, &mut pending);
        assert_eq!(status, 200, "{p}: {body}");
        assert!(body.contains(p), "answered in order, {p}: {body}");
    }
}

#[test]
fn h2_preface_in_pieces_reaches_the_http2_server() {
    let Some(t) = setup("h2_preface_in_pieces_reaches_the_http2_server") else { return };
    let mut s = connect(t.addr);
    // Too few bytes to tell at first: the sniffing builder takes over. The
    // pause only makes the two writes arrive as separate reads.
    s.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"\r\nSM\r\n\r\n").expect("write");
    // An empty SETTINGS frame.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).expect("write");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap_or_else(|e| panic!("no HTTP/2 frame back: {e}"));
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS: {head:?}");
    // The whole preface at once goes straight to the HTTP/2 builder.
    let mut s = connect(t.addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").expect("write");
    s.read_exact(&mut head).unwrap_or_else(|e| panic!("no HTTP/2 frame back: {e}"));
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS: {head:?}");
}

#[test]
fn sigterm_closes_idle_connections_and_exits_zero() {
    let Some(mut t) = setup("sigterm_closes_idle_connections_and_exits_zero") else { return };
    let mut parked = connect(t.addr);
    let mut pending = Vec::new();
    parked.write_all(get("/first").as_bytes()).expect("write");
    assert_eq!(read_response(&mut parked, &mut pending).0, 200);
    let fresh = connect(t.addr);
    t.sluice.wait_parked(1, "before SIGTERM");
    t.sluice.terminate();
    let mut buf = [0u8; 64];
    for (name, mut s) in [("parked", parked), ("fresh", fresh)] {
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{name}: no close after SIGTERM: {e}"));
        assert_eq!(n, 0, "{name}: closed without a response: {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    let status = t
        .sluice
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("sluice did not exit after SIGTERM\nstderr:\n{}", t.sluice.stderr()));
    assert_eq!(status.code(), Some(0), "exit status: {status}\nstderr:\n{}", t.sluice.stderr());
}
