// SPDX-License-Identifier: MPL-2.0

//! Debian's chromium, headless, driven over its DevTools protocol: a WebSocket on the
//! `--remote-debugging-port` it picks, one JSON command at a time.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's process group: all of its processes end with it.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions; the group is the one our
        // child leads, and the child is not reaped yet.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

pub struct Browser {
    child: Group,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    // Last: removed after chromium is gone.
    _profile: tempfile::TempDir,
}

/// One HTTP GET on the DevTools port, the body as JSON.
fn get_json(port: u16, path: &str) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The DevTools server keeps the connection open: read up to Content-Length.
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("DevTools {path}: {e}: {text}"));
            }
        }
        let n = stream.read(&mut buffer).expect("DevTools answer");
        assert!(n > 0, "DevTools closed the connection: {text}");
        response.extend_from_slice(&buffer[..n]);
    }
}

impl Browser {
    /// Starts chromium with a fresh profile and a `width` x `height` viewport (device scale
    /// factor 1, so screenshot pixels are CSS pixels) and opens `url`.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: scripts/deps.sh installs Debian's chromium"
        );
        let profile = tempfile::Builder::new()
            .prefix("viewer-chromium-")
            .tempdir()
            .unwrap();
        let child = Group(
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--no-first-run",
                    "--disable-breakpad",
                    "--hide-scrollbars",
                    "--remote-debugging-port=0",
                    "--remote-allow-origins=*",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("--window-size={width},{height}"))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group, to end every process it starts (see Group).
                .process_group(0)
                .spawn()
                .expect("start chromium"),
        );
        // Chromium writes the port it picked into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let targets = get_json(port, "/json/list");
        let page_url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {targets}"))
            .to_owned();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) =
            tungstenite::client(page_url.as_str(), stream).expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            socket,
            next_id: 1,
            _profile: profile,
        };
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser.call("Page.navigate", json!({ "url": url }));
        browser
    }

    /// Sends one command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// Sends one command and returns its result, or the error chromium answered with.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium: {e}"));
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    return Err(error.clone());
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}\nthrew {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 100 ms until it is `true` (an exception, e.g. from an
    /// element not there yet, counts as not yet); panics with `what` and the
    /// value of `show` (an expression describing the page) after `timeout`.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, expression: &str, show: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()");
        loop {
            // While the page is still loading (Page.navigate does not wait), chromium
            // answers that the page navigated: not yet.
            let value = match self.try_call(
                "Runtime.evaluate",
                json!({"expression": guarded, "returnByValue": true, "awaitPromise": true}),
            ) {
                Ok(result) => result["result"]["value"].clone(),
                Err(error) if navigating(&error) => Value::Null,
                Err(error) => panic!("Runtime.evaluate: {error}"),
            };
            if value == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the page did not show {what} within {timeout:?}; {show} = {}",
                    self.eval(show)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let result = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

/// Whether chromium's `error` says the page was navigating (or its context being replaced)
/// while it evaluated.
fn navigating(error: &Value) -> bool {
    let message = error["message"].as_str().unwrap_or_default();
    message.contains("navigated or closed") || message.contains("Cannot find context")
}
