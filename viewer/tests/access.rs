// SPDX-License-Identifier: MPL-2.0

//! Who may open the page: loopback names only by default, the token when one is set.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use common::*;

/// The status code and headers of a GET of `path` with `headers`.
fn get(url: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let address = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.starts_with("Host:")) {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let head = response.split("\r\n\r\n").next().unwrap().to_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head)
}

#[test]
fn without_a_token_only_loopback_host_names_are_served() {
    let broker = Broker::start();
    let viewer = Viewer::start(&broker, &[]);
    assert!(!viewer.url.contains("token"), "{}", viewer.url);
    let (status, head) = get(&viewer.url, "/", &[]);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert_eq!(
        get(&viewer.url, "/app.js", &["Host: localhost:8080"]).0,
        200
    );
    // A name that resolves to this machine through DNS rebinding is not ours.
    assert_eq!(
        get(&viewer.url, "/", &["Host: viewer.example.com:8080"]).0,
        403
    );
    assert_eq!(get(&viewer.url, "/events", &["Host: 192.168.1.5"]).0, 403);
}

#[test]
fn with_a_token_every_request_carries_it() {
    let broker = Broker::start();
    let viewer = Viewer::start(&broker, &["--token", "s3cr3t"]);
    assert!(viewer.url.ends_with("/?token=s3cr3t"), "{}", viewer.url);
    for path in [
        "/",
        "/app.js",
        "/events",
        "/?token=s3cr3",
        "/?token=s3cr3tt",
    ] {
        assert_eq!(get(&viewer.url, path, &[]).0, 401, "{path}");
    }
    let (status, head) = get(&viewer.url, "/?token=s3cr3t", &[]);
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap();
    assert_eq!(
        get(&viewer.url, "/app.js", &[&format!("Cookie: {cookie}")]).0,
        200
    );
    // With a token the Host check is not needed: the page may be reached by any name.
    assert_eq!(
        get(
            &viewer.url,
            "/?token=s3cr3t",
            &["Host: camera-screen.local"]
        )
        .0,
        200
    );
}
