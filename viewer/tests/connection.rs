// SPDX-License-Identifier: MPL-2.0

//! The broker settings as the element takes them: TLS with a client certificate and a
//! password, against a real mosquitto that requires both, with the real `mqttpublish`
//! publishing; a refused login is shown as the connection state, with the broker's reason.

mod common;

use std::time::{Duration, Instant};

use common::tls::TlsFiles;
use common::*;

fn broker(tls: &TlsFiles) -> Broker {
    let passwords = tls.dir().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["viewer", "pa ss:word"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(&passwords)
        .args(["camera", "camera-secret"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    Broker::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
         allow_anonymous false\npassword_file {}\n",
        tls.ca.display(),
        tls.server_cert.display(),
        tls.server_key.display(),
        passwords.display()
    ))
}

fn viewer(broker: &Broker, tls: &TlsFiles, password: &str) -> Viewer {
    let password_file = tls.dir().join(format!("viewer-{password}.pass"));
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    Viewer::start(
        broker,
        &[
            "--topic",
            "cameras/#",
            "--tls-ca-file",
            tls.ca.to_str().unwrap(),
            "--tls-cert-file",
            tls.client_cert.to_str().unwrap(),
            "--tls-key-file",
            tls.client_key.to_str().unwrap(),
            "--username",
            "viewer",
            "--password-file",
            password_file.to_str().unwrap(),
        ],
    )
}

#[test]
fn tls_with_a_client_certificate_and_a_password() {
    let tls = TlsFiles::generate();
    let broker = broker(&tls);
    let viewer = viewer(&broker, &tls, "pa ss:word");
    let mut events = viewer.events();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Connected first (the publisher starts after, so nothing is missed).
    loop {
        let (name, data) = events.next().expect("event stream ended");
        let state = match name.as_str() {
            "snapshot" | "tick" => data["connection"]["state"].clone(),
            "connection" => data["state"].clone(),
            _ => continue,
        };
        if state == "connected" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer did not connect: {data}"
        );
    }
    let mut pipeline = gst_launch(&format!(
        "videotestsrc num-buffers=3 ! video/x-raw,width=320,height=240 \
         ! metareplay location=pipelines/sample.jsonl \
         ! mqttpublish host=localhost port={} topic=cameras/tls qos=1 leaky=no \
           tls-ca-file={} tls-cert-file={} tls-key-file={} username=camera password=camera-secret",
        broker.port,
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    ));
    assert!(pipeline.0.wait().unwrap().success());
    let frame = events
        .find(|(name, data)| name == "frame" && data["count"] == 3)
        .expect("three frames over TLS")
        .1;
    assert_eq!(frame["topic"], "cameras/tls");
    assert_eq!(frame["resolution"], serde_json::json!([320, 240]));
    assert_eq!(frame["objects"].as_array().unwrap().len(), 5);
}

#[test]
fn a_refused_login_is_the_connection_state_with_the_reason() {
    let tls = TlsFiles::generate();
    let broker = broker(&tls);
    let viewer = viewer(&broker, &tls, "wrong");
    let refused = viewer
        .events()
        .find_map(|(name, data)| {
            (name == "connection" && data["state"] == "disconnected").then_some(data)
        })
        .expect("a disconnected state");
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("NotAuthorized") || detail.contains("BadUserNamePassword"),
        "{detail}"
    );
    assert_eq!(refused["retry_in_ms"], 1000);
}
