//! Shared end-to-end harness: spawns the real `sluice` binary (`run`, `echo`,
//! `check`) on 127.0.0.1 with port 0 everywhere, builds configs from the
//! Gateway API conformance manifests in `shared/spec/conformance/`, and talks
//! HTTP to it with the real `curl` binary (or an in-process hyper client for
//! high-volume tests).
//!
//! Every test binary that uses it says `mod support;`; not every binary uses
//! every helper.

#![allow(dead_code)]

pub mod apiserver;
pub mod cases;
pub mod golit;
pub mod tls;

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The `sluice` binary under test.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// GatewayClass name substituted for `{GATEWAY_CLASS_NAME}`.
pub const GATEWAY_CLASS: &str = "sluice";
/// Sluice's GatewayClass controllerName.
pub const GATEWAY_CONTROLLER: &str = "sluice.dev/gateway-controller";
/// Sluice's IngressClass controller.
pub const INGRESS_CONTROLLER: &str = "sluice.dev/ingress-controller";
/// The conformance infrastructure namespace.
pub const INFRA_NS: &str = "gateway-conformance-infra";

/// How long to wait for a child process to announce itself.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Paths, randomness, temp dirs
// ---------------------------------------------------------------------------

/// `shared/` (the spec research bundle), beside the repository.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// `shared/spec/conformance/`.
pub fn conformance_dir() -> PathBuf {
    shared_dir().join("spec/conformance")
}

/// The repository root (`/work/main`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A random u64 (std only: `RandomState` is randomly keyed per process).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default());
    h.write_u32(std::process::id());
    h.finish()
}

/// A Kubernetes-like pod name: `<deployment>-<10 chars>-<5 chars>`.
pub fn pod_name(deployment: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
                r /= ALPHABET.len() as u64;
                if r == 0 {
                    r = random_u64();
                }
                c
            })
            .collect()
    };
    let a = pick(10);
    let b = pick(5);
    format!("{deployment}-{a}-{b}")
}

/// A temporary directory removed on drop (kept when `SLUICE_TEST_KEEP=1`).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sluice-e2e-{tag}-{}-{:016x}", std::process::id(), random_u64()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("SLUICE_TEST_KEEP").as_deref() == Ok("1") {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes `contents` to `path` atomically: a dot-file in the same directory
/// (ignored by Sluice's loader), then `rename` over the target.
pub fn write_atomic(path: &Path, contents: &str) {
    let dir = path.parent().expect("path has a parent");
    let tmp =
        dir.join(format!(".{}.tmp-{:x}", path.file_name().and_then(|n| n.to_str()).unwrap_or("config"), random_u64()));
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming {} -> {}: {e}", tmp.display(), path.display()));
}

/// Removes ANSI escape sequences (tracing colours) from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Polls `f` until it returns `Some` or `timeout` elapses.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Spawns a thread that drains `stdout` line by line into `lines`, sending
/// each line on `tx` as well.
fn drain_lines(stdout: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.lock().expect("lines lock").push(line.clone());
            let _ = tx.send(line);
        }
    });
}

/// A running `sluice echo`, killed on drop.
pub struct Echo {
    child: Child,
    /// Deployment the echo stands in for.
    pub deployment: String,
    /// Namespace it reports.
    pub namespace: String,
    /// Pod name it reports.
    pub pod: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// An echo that was spawned but has not announced its address yet.
pub struct PendingEcho {
    child: Option<Child>,
    deployment: String,
    namespace: String,
    pod: String,
    rx: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Echo {
    /// Spawns `sluice echo --quiet` for `deployment` in `namespace`; its
    /// stderr goes to `log_dir`.
    pub fn spawn(deployment: &str, namespace: &str, log_dir: &Path) -> PendingEcho {
        Self::spawn_with(deployment, namespace, log_dir, &[])
    }

    /// [`Echo::spawn`] with extra `sluice echo` arguments (e.g. `--tls-cert`).
    pub fn spawn_with(deployment: &str, namespace: &str, log_dir: &Path, extra: &[&str]) -> PendingEcho {
        let pod = pod_name(deployment);
        let stderr = log_dir.join(format!("echo-{namespace}-{pod}.stderr"));
        let err = File::create(&stderr).unwrap_or_else(|e| panic!("creating {}: {e}", stderr.display()));
        let mut child = Command::new(SLUICE)
            .args(["echo", "--listen", "127.0.0.1:0", "--pod", &pod, "--namespace", namespace, "--quiet"])
            .args(extra)
            .env_remove("SERVICE_NAME")
            .env_remove("INGRESS_NAME")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {SLUICE} echo: {e}"));
        let stdout = child.stdout.take().expect("echo stdout");
        let (tx, rx) = mpsc::channel();
        drain_lines(stdout, Arc::new(Mutex::new(Vec::new())), tx);
        PendingEcho { child: Some(child), deployment: deployment.into(), namespace: namespace.into(), pod, rx, stderr }
    }

    /// Spawns one echo and waits for it.
    pub fn start(deployment: &str, namespace: &str, log_dir: &Path) -> Echo {
        Self::spawn(deployment, namespace, log_dir).wait()
    }
}

impl PendingEcho {
    /// Waits for the `listening addr=` line.
    pub fn wait(mut self) -> Echo {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening addr=") {
                        let addr = addr.trim().parse().unwrap_or_else(|e| panic!("echo address {addr:?}: {e}"));
                        return Echo {
                            child: self.child.take().expect("echo child"),
                            deployment: std::mem::take(&mut self.deployment),
                            namespace: std::mem::take(&mut self.namespace),
                            pod: std::mem::take(&mut self.pod),
                            addr,
                        };
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(c) = self.child.as_mut() {
                        let _ = c.wait();
                    }
                    panic!(
                        "sluice echo exited before listening: {}",
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!("sluice echo did not print `listening addr=` within {STARTUP_TIMEOUT:?}");
            }
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PendingEcho {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a `sluice run` that refused to start left behind.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running `sluice run`, killed on drop.
pub struct Sluice {
    child: Child,
    exit: Option<ExitStatus>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Latest `listening port=.. gateway=.. addr=..` per (gateway, port).
    listening: Arc<Mutex<Vec<String>>>,
    /// Every stdout line.
    stdout: Arc<Mutex<Vec<String>>>,
    /// Sluice's stderr (tracing logs).
    pub stderr_path: PathBuf,
    /// The `--config` path.
    pub config: PathBuf,
}

impl Sluice {
    /// Starts `sluice run --config CONFIG --admin 127.0.0.1:0 EXTRA...`,
    /// waits for `/readyz`. Panics when it does not come up.
    pub fn start(config: &Path, log_dir: &Path, extra: &[&str]) -> Sluice {
        match Self::try_start(config, log_dir, extra) {
            Ok(s) => s,
            Err(f) => panic!(
                "sluice run exited with {} before becoming ready\nstdout:\n{}\nstderr:\n{}",
                f.status, f.stdout, f.stderr
            ),
        }
    }

    /// Like [`Sluice::start`], but returns how it exited if it did not come up.
    pub fn try_start(config: &Path, log_dir: &Path, extra: &[&str]) -> Result<Sluice, StartFailure> {
        let config_arg = config.to_str().expect("utf-8 config path");
        let mut args = vec!["--config", config_arg];
        args.extend_from_slice(extra);
        Self::try_start_with(&args, &[], config, log_dir, true)
    }

    /// Starts `sluice run --kubernetes --admin 127.0.0.1:0 EXTRA...` with
    /// `KUBECONFIG=kubeconfig`; waits for `/readyz` only when `wait_ready`.
    pub fn start_kube(kubeconfig: &Path, log_dir: &Path, extra: &[&str], wait_ready: bool) -> Sluice {
        let mut args = vec!["--kubernetes"];
        args.extend_from_slice(extra);
        let env = [("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))];
        match Self::try_start_with(&args, &env, kubeconfig, log_dir, wait_ready) {
            Ok(s) => s,
            Err(f) => {
                panic!("sluice run --kubernetes exited with {}\nstdout:\n{}\nstderr:\n{}", f.status, f.stdout, f.stderr)
            }
        }
    }

    /// Starts `sluice run --admin 127.0.0.1:0 ARGS...` with `env`.
    pub fn try_start_with(
        run_args: &[&str],
        env: &[(&str, &str)],
        config: &Path,
        log_dir: &Path,
        wait_ready: bool,
    ) -> Result<Sluice, StartFailure> {
        let stderr_path = log_dir.join(format!("sluice-{:08x}.stderr", random_u64() as u32));
        let err = File::create(&stderr_path).unwrap_or_else(|e| panic!("creating {}: {e}", stderr_path.display()));
        let mut args = vec!["run", "--admin", "127.0.0.1:0"];
        args.extend_from_slice(run_args);
        let mut child = Command::new(SLUICE)
            .args(&args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("SLUICE_LOG", std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {SLUICE} run: {e}"));
        let stdout = child.stdout.take().expect("sluice stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        drain_lines(stdout, lines.clone(), tx);
        let listening = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let fail = |child: &mut Child, lines: &Arc<Mutex<Vec<String>>>| -> StartFailure {
            let status = child.wait().expect("waiting for sluice");
            // Let the reader thread catch up with the last lines.
            std::thread::sleep(Duration::from_millis(50));
            StartFailure {
                status,
                stdout: lines.lock().expect("lines").join("\n"),
                stderr: strip_ansi(&std::fs::read_to_string(&stderr_path).unwrap_or_default()),
            }
        };
        // 1. `admin addr=`.
        let admin: SocketAddr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("admin addr=") {
                        break a.trim().parse().unwrap_or_else(|e| panic!("admin address {a:?}: {e}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(fail(&mut child, &lines)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Err(fail(&mut child, &lines));
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sluice run printed no `admin addr=` within {STARTUP_TIMEOUT:?}");
            }
        };
        // Keep consuming stdout lines in the background, tracking sockets.
        {
            let listening = listening.clone();
            std::thread::spawn(move || {
                // Lines seen so far are in `lines` already; the channel still
                // holds everything after the admin line.
                while let Ok(line) = rx.recv() {
                    if line.starts_with("listening ") {
                        listening.lock().expect("listening").push(line);
                    }
                }
            });
        }
        let s =
            Sluice { child, exit: None, admin, listening, stdout: lines, stderr_path, config: config.to_path_buf() };
        if !wait_ready {
            return Ok(s);
        }
        // 2. `/readyz`.
        let ready =
            wait_until(STARTUP_TIMEOUT, || (s.admin_get("/readyz").map(|(st, _)| st) == Some(200)).then_some(()));
        if ready.is_none() {
            panic!("sluice /readyz not 200 within {STARTUP_TIMEOUT:?}; stderr:\n{}", s.stderr());
        }
        Ok(s)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Address of the socket serving `gateway` ("NAMESPACE/NAME", or `*` when
    /// not isolated) on listener `port`. Waits up to 5 s for the line.
    pub fn addr_of(&self, gateway: &str, port: u16) -> SocketAddr {
        let want_port = format!("port={port}");
        let want_gw = format!("gateway={gateway}");
        wait_until(Duration::from_secs(5), || {
            let l = self.listening.lock().expect("listening");
            l.iter().rev().find_map(|line| {
                let mut f = line.split_whitespace();
                let (_, p, g, a) = (f.next(), f.next()?, f.next()?, f.next()?);
                (p == want_port && g == want_gw).then(|| a.strip_prefix("addr=")?.parse().ok()).flatten()
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no `listening {want_port} {want_gw}` line; got:\n{}\nstderr:\n{}",
                self.listening.lock().expect("listening").join("\n"),
                self.stderr()
            )
        })
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout").clone()
    }

    /// Sluice's stderr so far, without ANSI colours.
    pub fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr_path).unwrap_or_default())
    }

    /// Waits until stderr contains a line satisfying `pred`.
    pub fn wait_for_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        wait_until(timeout, || self.stderr().lines().find(|l| pred(l)).map(str::to_string))
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        raw_get(self.admin, path)
    }

    /// `sluice_downstream_connections_parked`: idle HTTP/1.1 client
    /// connections holding no HTTP state (0 when unreadable).
    pub fn parked(&self) -> u64 {
        self.admin_get("/metrics")
            .and_then(|(_, body)| {
                body.lines().find_map(|l| l.strip_prefix("sluice_downstream_connections_parked ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits (up to 5 s) until exactly `n` client connections are parked.
    pub fn wait_parked(&self, n: u64, what: &str) {
        let got = wait_until(Duration::from_secs(5), || Some(self.parked()).filter(|&v| v == n));
        assert!(got.is_some(), "{what}: parked connections never {n} (now {})", self.parked());
    }

    /// `/config`: (generation, body).
    pub fn config_dump(&self) -> (u64, String) {
        let (status, body) = self.admin_get("/config?format=text").expect("admin /config reachable");
        assert_eq!(status, 200, "admin /config: {body}");
        let first = body.lines().next().unwrap_or_default();
        let generation = first
            .strip_prefix("# generation ")
            .and_then(|g| g.trim().parse().ok())
            .unwrap_or_else(|| panic!("/config does not start with `# generation N`: {first:?}"));
        (generation, body)
    }

    /// Sends SIGTERM (via `kill -TERM`).
    pub fn terminate(&self) {
        let status =
            Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- sluice stderr ({}) ----\n{}", self.stderr_path.display(), self.stderr());
        }
    }
}

/// Runs `sluice check --config PATH`: (exit code, stdout + stderr).
pub fn sluice_check(config: &Path) -> (i32, String) {
    let out = Command::new(SLUICE)
        .args(["check", "--config", config.to_str().expect("utf-8 path")])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running sluice check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), strip_ansi(&String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), text)
}

/// A minimal HTTP/1.1 GET over a fresh connection (for the admin listener):
/// (status, body). `None` when the connection fails.
pub fn raw_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

/// Whether a usable `curl` is on PATH.
pub fn curl_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `true` when curl is there. Without curl: fails under CI=true, otherwise
/// prints a note and returns `false` (the caller returns early = skip).
pub fn require_curl(test: &str) -> bool {
    if curl_available() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: `curl` is required (CI=true) but was not found on PATH");
    }
    eprintln!("note: skipping {test}: `curl` not found on PATH");
    false
}

/// A request for [`curl`].
#[derive(Clone, Debug, Default)]
pub struct Req {
    /// Method; GET when empty.
    pub method: String,
    /// `Host` header; curl's default (`IP:PORT`) when `None`.
    pub host: Option<String>,
    /// Path and query.
    pub path: String,
    /// Extra headers, sent as given.
    pub headers: Vec<(String, String)>,
    /// `--http2-prior-knowledge`.
    pub http2: bool,
    /// Per-request timeout (`--max-time`), 10 s when `None`.
    pub max_time: Option<Duration>,
}

impl Req {
    pub fn get(path: &str) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A response captured by [`curl`].
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names, every value in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
    /// The echo's JSON, when `Content-Type` is exactly `application/json`.
    pub echo: Option<Value>,
}

impl Resp {
    /// All values of a header joined with `,` (as the conformance suite does).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(&name.to_ascii_lowercase()).map(|v| v.join(","))
    }

    /// The echoed `pod`.
    pub fn pod(&self) -> Option<&str> {
        self.echo.as_ref()?.get("pod")?.as_str()
    }

    /// An echoed string field.
    pub fn echo_str(&self, field: &str) -> Option<&str> {
        self.echo.as_ref()?.get(field)?.as_str()
    }

    /// Echoed request headers: lower-cased name -> values.
    pub fn echo_headers(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(Value::Object(h)) = self.echo.as_ref().and_then(|e| e.get("headers")) {
            for (k, v) in h {
                let vals: Vec<String> = match v {
                    Value::Array(a) => {
                        a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect()
                    }
                    Value::String(s) => vec![s.clone()],
                    other => vec![other.to_string()],
                };
                out.entry(k.to_ascii_lowercase()).or_default().extend(vals);
            }
        }
        out
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `req` to `addr` with the real `curl`. `Err` = curl could not get a
/// response (connection refused, timeout, …).
pub fn curl(addr: SocketAddr, req: &Req) -> Result<Resp, String> {
    let tmp = std::env::temp_dir();
    let tag = format!("{}-{:016x}", std::process::id(), random_u64());
    let body_path = tmp.join(format!("sluice-e2e-curl-{tag}.body"));
    let head_path = tmp.join(format!("sluice-e2e-curl-{tag}.headers"));
    let url = format!("http://{addr}{}", req.path);
    let max_time = req.max_time.unwrap_or(Duration::from_secs(10)).as_secs_f64().to_string();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--path-as-is", "-o"]).arg(&body_path).arg("-D").arg(&head_path).args([
        "-w",
        "%{http_code}",
        "--max-time",
        &max_time,
    ]);
    let method = if req.method.is_empty() { "GET" } else { req.method.as_str() };
    if method == "HEAD" {
        // `-X HEAD` would make curl wait for a body that never comes.
        cmd.arg("--head");
    } else if method != "GET" {
        cmd.args(["-X", method]);
    }
    if let Some(h) = &req.host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    for (n, v) in &req.headers {
        if v.is_empty() {
            cmd.args(["-H", &format!("{n};")]);
        } else {
            cmd.args(["-H", &format!("{n}: {v}")]);
        }
    }
    if req.http2 {
        cmd.arg("--http2-prior-knowledge");
    }
    cmd.arg(&url).stdin(Stdio::null());
    let out = cmd.output().map_err(|e| format!("running curl: {e}"));
    let headers_text = std::fs::read_to_string(&head_path).unwrap_or_default();
    let body = std::fs::read(&body_path).unwrap_or_default();
    let _ = std::fs::remove_file(&body_path);
    let _ = std::fs::remove_file(&head_path);
    let out = out?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || code == "000" {
        return Err(format!(
            "curl {method} {url} (host {:?}) failed: exit {:?}, http_code {code:?}: {}",
            req.host,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let status: u16 = code.parse().map_err(|_| format!("curl printed http_code {code:?}"))?;
    let headers = parse_header_block(&headers_text);
    let echo = (headers.get("content-type").map(|v| v.as_slice()) == Some(&["application/json".to_string()][..]))
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    Ok(Resp { status, headers, body, echo })
}

/// Parses the last header block of a `curl -D` dump.
fn parse_header_block(text: &str) -> BTreeMap<String, Vec<String>> {
    let blocks: Vec<&str> = text.split("\r\n\r\n").filter(|b| !b.trim().is_empty()).collect();
    let last = blocks.last().copied().unwrap_or_default();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in last.lines().skip(1) {
        if let Some((n, v)) = line.split_once(':') {
            out.entry(n.trim().to_ascii_lowercase()).or_default().push(v.trim().to_string());
        }
    }
    out
}

/// Sends `req`, retrying connection errors for up to `timeout` (for the
/// first request after start-up).
pub fn curl_retry(addr: SocketAddr, req: &Req, timeout: Duration) -> Resp {
    let deadline = Instant::now() + timeout;
    loop {
        match curl(addr, req) {
            Ok(r) => return r,
            Err(e) if Instant::now() >= deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------
// In-process hyper client (high-volume tests)
// ---------------------------------------------------------------------------

pub mod fast {
    //! A keep-alive hyper client for tests that send thousands of requests.

    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Request, StatusCode};
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    /// A cloneable keep-alive HTTP/1.1 client.
    #[derive(Clone)]
    pub struct Client {
        inner: HyperClient<HttpConnector, Empty<Bytes>>,
    }

    /// A response: status, headers and body.
    pub struct Response {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    impl Response {
        /// The echoed `pod`, when the body is echo JSON.
        pub fn pod(&self) -> Option<String> {
            let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
            v.get("pod")?.as_str().map(str::to_string)
        }
    }

    impl Client {
        /// Must be called inside a tokio runtime.
        pub fn new() -> Self {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_secs(5)));
            connector.set_nodelay(true);
            let inner = HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build(connector);
            Self { inner }
        }

        /// GET `path` on `addr` with `Host` and extra headers; 10 s timeout.
        pub async fn get(
            &self,
            addr: SocketAddr,
            host: Option<&str>,
            path: &str,
            headers: &[(&str, String)],
        ) -> Result<Response, String> {
            let mut b = Request::get(format!("http://{addr}{path}"));
            if let Some(h) = host {
                b = b.header(http::header::HOST, h);
            }
            for (n, v) in headers {
                b = b.header(*n, v.as_str());
            }
            let req = b.body(Empty::<Bytes>::new()).map_err(|e| format!("building request: {e}"))?;
            let fut = async {
                let resp = self.inner.request(req).await.map_err(|e| format!("GET {path}: {e:?}"))?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map_err(|e| format!("GET {path}: reading body: {e}"))?.to_bytes();
                Ok(Response { status: parts.status, headers: parts.headers, body })
            };
            tokio::time::timeout(Duration::from_secs(10), fut)
                .await
                .map_err(|_| format!("GET {path}: timed out after 10s"))?
        }
    }
}

/// A multi-threaded tokio runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// Parses multi-document YAML into JSON values (nulls dropped).
pub fn parse_yaml_docs(text: &str, what: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("parsing {what}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Serialises documents as multi-document YAML (each document in JSON flow
/// style, which is YAML).
pub fn to_yaml_docs(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(d).expect("serialising a document"));
        out.push('\n');
    }
    out
}

/// Loads a conformance manifest (`base/manifests.yaml`, `tests/NAME.yaml`)
/// with `{GATEWAY_CLASS_NAME}` replaced.
pub fn load_conformance_manifest(rel: &str) -> Vec<Value> {
    let path = conformance_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let text = text.replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS);
    parse_yaml_docs(&text, &path.display().to_string())
}

fn kind(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn meta_str<'a>(doc: &'a Value, field: &str) -> &'a str {
    doc.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).unwrap_or_default()
}

fn ns_of(doc: &Value) -> &str {
    let ns = meta_str(doc, "namespace");
    if ns.is_empty() { "default" } else { ns }
}

/// Whether a Deployment runs the HTTP echo that `sluice echo` can stand in
/// for (not TLS, gRPC, TCP or UDP servers, nor non-echo images).
fn is_http_echo_deployment(d: &Value) -> bool {
    let Some(containers) = d.pointer("/spec/template/spec/containers").and_then(Value::as_array) else { return false };
    containers.iter().any(|c| {
        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
        let env: Vec<&str> = c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("name").and_then(Value::as_str))
            .collect();
        image.contains("echo-basic")
            && !env.iter().any(|e| {
                matches!(
                    *e,
                    "GRPC_ECHO_SERVER"
                        | "TCP_ECHO_SERVER"
                        | "UDP_ECHO_SERVER"
                        | "TLS_SERVER_CERT"
                        | "TLS_SERVER_PRIVKEY"
                )
            })
    })
}

/// Whether a Deployment runs the echo as a TLS server (`tls-backend`),
/// which `sluice echo --tls-cert/--tls-key` stands in for.
fn is_tls_echo_deployment(d: &Value) -> bool {
    let Some(containers) = d.pointer("/spec/template/spec/containers").and_then(Value::as_array) else { return false };
    containers.iter().any(|c| {
        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
        let env = |name: &str| {
            c.get("env").and_then(Value::as_array).into_iter().flatten().any(|e| e.get("name") == Some(&json!(name)))
        };
        image.contains("echo-basic")
            && env("TLS_SERVER_CERT")
            && !env("GRPC_ECHO_SERVER")
            && !env("TCP_ECHO_SERVER")
            && !env("UDP_ECHO_SERVER")
    })
}

fn labels_match(selector: &serde_json::Map<String, Value>, labels: Option<&serde_json::Map<String, Value>>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// An EndpointSlice for `service` (all its ports) pointing at `addr`.
pub fn endpoint_slice_for(service: &Value, name: &str, addr: SocketAddr) -> Value {
    let ports: Vec<Value> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let mut port = json!({"port": addr.port(), "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
            if let Some(n) = p.get("name") {
                port["name"] = n.clone();
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns_of(service),
            "labels": {"kubernetes.io/service-name": meta_str(service, "name")},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}],
    })
}

/// A GatewayClass `sluice` for Sluice's controller.
pub fn gateway_class() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": GATEWAY_CONTROLLER},
    })
}

// ---------------------------------------------------------------------------
// Conformance environment
// ---------------------------------------------------------------------------

/// Echo backends, a config built from conformance manifests, and a running
/// `sluice run --isolate-gateways`. Everything is stopped on drop.
pub struct ConformanceEnv {
    pub sluice: Sluice,
    /// One echo per HTTP echo Deployment, keyed by `namespace/deployment`.
    pub echoes: BTreeMap<String, Echo>,
    /// Every document written to the config.
    pub docs: Vec<Value>,
    /// The config file.
    pub config_file: PathBuf,
    /// The CA that signed the generated TLS Secrets (`--cacert`).
    pub ca: tls::TestCa,
    pub dir: TempDir,
}

impl ConformanceEnv {
    /// Base manifests + `tests/<name>.yaml` for each name.
    pub fn start(test_manifests: &[&str]) -> Self {
        let dir = TempDir::new("conformance");
        let config_dir = dir.subdir("config");
        let log_dir = dir.subdir("logs");
        // The CA of the TLS Secrets and ConfigMaps the Go suite generates.
        let ca = tls::TestCa::new(dir.path(), "conformance-ca");
        // TLS echo Deployments (tls-backend) serve the suite's
        // `tls-checks-certificate`: abc.example.com, other.example.com and
        // a SPIFFE URI SAN (suite.go).
        let backend_leaf = ca.leaf_with_uris(
            "tls-checks-certificate",
            &["abc.example.com", "other.example.com"],
            &["spiffe://abc.example.com/test-identity"],
        );
        let (tls_crt, tls_key) = (dir.path().join("tls-backend.crt"), dir.path().join("tls-backend.key"));
        std::fs::write(&tls_crt, &backend_leaf.cert).expect("writing the tls-backend certificate");
        std::fs::write(&tls_key, &backend_leaf.key).expect("writing the tls-backend key");
        let tls_args = ["--tls-cert", tls_crt.to_str().expect("utf-8"), "--tls-key", tls_key.to_str().expect("utf-8")];
        let (mut docs, echoes) = conformance_docs_with_tls(test_manifests, &log_dir, &tls_args);
        // The TLS Secrets the Go suite generates (suite.go), signed by the
        // test CA: a name per host the HTTPS tests use, since clients do not
        // accept `*` or `*.org` as certificate names.
        let hosts = [
            "example.org",
            "second-example.org",
            "unknown-example.org",
            "*.wildcard.org",
            "*.org",
            "abc.example.com",
            "other.example.com",
        ];
        let leaf = ca.leaf("tls-validity-checks-certificate", &hosts);
        docs.push(tls::tls_secret(INFRA_NS, "tls-validity-checks-certificate", &leaf));
        let web = ca.leaf("certificate", &hosts);
        docs.push(tls::tls_secret("gateway-conformance-web-backend", "certificate", &web));
        // BackendTLSPolicy CA bundles: the CA of tls-backend, and an unrelated one.
        let other_ca = tls::TestCa::new(dir.path(), "mismatch-ca");
        for (name, pem) in
            [("tls-checks-ca-certificate", &ca.pem_path), ("mismatch-ca-certificate", &other_ca.pem_path)]
        {
            let pem = std::fs::read_to_string(pem).expect("reading a CA PEM");
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": INFRA_NS},
                "data": {"ca.crt": pem},
            }));
        }

        let config_file = config_dir.join("manifests.yaml");
        std::fs::write(&config_file, to_yaml_docs(&docs)).expect("writing config");
        let sluice = Sluice::start(
            &config_dir,
            &log_dir,
            &[
                "--isolate-gateways",
                "--bind",
                "80=127.0.0.1:0",
                "--bind",
                "8080=127.0.0.1:0",
                "--bind",
                "443=127.0.0.1:0",
            ],
        );
        Self { sluice, echoes, docs, config_file, ca, dir }
    }

    /// Address serving Gateway `namespace/name` listener port `port`.
    pub fn addr_of(&self, gateway: &str, port: u16) -> SocketAddr {
        self.sluice.addr_of(gateway, port)
    }

    /// The echo standing in for `namespace/deployment`.
    pub fn echo(&self, key: &str) -> &Echo {
        self.echoes
            .get(key)
            .unwrap_or_else(|| panic!("no echo {key}; have {:?}", self.echoes.keys().collect::<Vec<_>>()))
    }
}

/// The GatewayClass, base manifests and `tests/<name>.yaml` for each name,
/// with one running echo per HTTP echo Deployment (keyed by
/// `namespace/deployment`) and EndpointSlices pointing Services at them.
pub fn conformance_docs(test_manifests: &[&str], log_dir: &Path) -> (Vec<Value>, BTreeMap<String, Echo>) {
    conformance_docs_with_tls(test_manifests, log_dir, &[])
}

/// [`conformance_docs`]; with `tls_args` (`--tls-cert`/`--tls-key`), TLS
/// echo Deployments (tls-backend) get a `sluice echo` serving TLS too.
pub fn conformance_docs_with_tls(
    test_manifests: &[&str],
    log_dir: &Path,
    tls_args: &[&str],
) -> (Vec<Value>, BTreeMap<String, Echo>) {
    {
        let mut docs = load_conformance_manifest("base/manifests.yaml");
        for m in test_manifests {
            docs.extend(load_conformance_manifest(&format!("tests/{m}.yaml")));
        }
        docs.insert(0, gateway_class());

        // Start one echo per HTTP echo Deployment, all at once.
        let pending: Vec<(String, PendingEcho)> = docs
            .iter()
            .filter(|d| {
                kind(d) == "Deployment"
                    && (is_http_echo_deployment(d) || (!tls_args.is_empty() && is_tls_echo_deployment(d)))
            })
            .map(|d| {
                let (ns, name) = (ns_of(d), meta_str(d, "name"));
                let extra: &[&str] = if is_tls_echo_deployment(d) { tls_args } else { &[] };
                (format!("{ns}/{name}"), Echo::spawn_with(name, ns, log_dir, extra))
            })
            .collect();
        let echoes: BTreeMap<String, Echo> = pending.into_iter().map(|(k, p)| (k, p.wait())).collect();

        // Generated EndpointSlices for selector Services backed by an echo.
        let deployments: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Deployment").collect();
        let mut generated = Vec::new();
        for svc in docs.iter().filter(|d| kind(d) == "Service") {
            let Some(selector) = svc.pointer("/spec/selector").and_then(Value::as_object) else { continue };
            for d in &deployments {
                if ns_of(d) != ns_of(svc) {
                    continue;
                }
                let labels = d.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
                if !labels_match(selector, labels) {
                    continue;
                }
                let Some(echo) = echoes.get(&format!("{}/{}", ns_of(d), meta_str(d, "name"))) else { continue };
                let name = format!("{}-e2e-{}", meta_str(svc, "name"), meta_str(d, "name"));
                generated.push(endpoint_slice_for(svc, &name, echo.addr));
            }
        }
        // Hand-written EndpointSlices without endpoints (HTTPRouteServiceTypes)
        // get the infra-backend-v1 echo, as the suite patches them with its pods.
        let v1 = echoes.get(&format!("{INFRA_NS}/infra-backend-v1")).map(|e| e.addr);
        for d in docs.iter_mut().filter(|d| kind(d) == "EndpointSlice") {
            let empty = d.get("endpoints").and_then(Value::as_array).is_none_or(|e| e.is_empty());
            let ipv4 = d.get("addressType").and_then(Value::as_str) == Some("IPv4");
            if !(empty && ipv4) {
                continue;
            }
            let addr = v1.expect("infra-backend-v1 echo for hand-written EndpointSlices");
            if let Some(ports) = d.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    p["port"] = json!(addr.port());
                }
            }
            d["endpoints"] = json!([{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]);
        }
        docs.extend(generated);
        (docs, echoes)
    }
}

// ---------------------------------------------------------------------------
// Hand-written configs
// ---------------------------------------------------------------------------

/// A quickstart-like config: GatewayClass `sluice`, Gateway `default/web`
/// (HTTP :80), HTTPRoute `default/app` with `rules` (YAML list items
/// indented by two spaces, e.g. "  - backendRefs: ..."), and for each
/// `(service, port)` a Service (`http`, 8080) with an EndpointSlice on
/// 127.0.0.1:`port`.
pub fn web_config(rules: &str, services: &[(&str, u16)]) -> String {
    let mut y = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: {GATEWAY_CLASS}
spec:
  controllerName: {GATEWAY_CONTROLLER}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  namespace: default
spec:
  gatewayClassName: {GATEWAY_CLASS}
  listeners:
  - name: http
    protocol: HTTP
    port: 80
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app
  namespace: default
spec:
  parentRefs:
  - name: web
  rules:
{rules}
"#
    );
    for (svc, port) in services {
        y.push_str("---\n");
        y.push_str(&local_service(svc, *port));
    }
    y
}

/// A Service `default/{svc}` (port `http` 8080) and a hand-made
/// EndpointSlice pointing it at `127.0.0.1:{port}`.
pub fn local_service(svc: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {svc}
  namespace: default
spec:
  ports:
  - name: http
    port: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-local
  namespace: default
  labels:
    kubernetes.io/service-name: {svc}
addressType: IPv4
ports:
- name: http
  port: {port}
endpoints:
- addresses: ["127.0.0.1"]
"#
    )
}

/// Rules sending PathPrefix `prefix` to `service`:8080.
pub fn prefix_rule(prefix: &str, service: &str) -> String {
    format!(
        "  - matches:\n    - path:\n        type: PathPrefix\n        value: {prefix}\n    backendRefs:\n    - name: {service}\n      port: 8080\n"
    )
}
