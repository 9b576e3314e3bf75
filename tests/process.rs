// SPDX-License-Identifier: MPL-2.0

//! What a user's process sees: `gst-launch-1.0` runs as a child process, with the signal
//! dispositions and exit codes of a C program (a cargo test binary ignores SIGPIPE and
//! would hide what these tests look for).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;

use common::{plugin_dir, sample_recording};

/// An MQTT peer that accepts each connection, answers CONNACK, takes `take` bytes of what
/// the client publishes and then closes the socket while the client is still writing, as
/// a broker does that refuses a packet (NATS on a QoS 2 PUBLISH) or restarts. It closes
/// with nothing left unread, so the client sees an orderly close (FIN) and its next writes
/// meet a reset: the case where a write raises SIGPIPE.
fn closing_peer(take: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve_then_close(stream, take));
        }
    });
    port
}

fn serve_then_close(mut stream: TcpStream, take: usize) {
    let mut buf = [0u8; 4096];
    // CONNECT, then CONNACK: connection accepted, no session.
    if stream.read(&mut buf).unwrap_or(0) == 0 || stream.write_all(&[0x20, 2, 0, 0]).is_err() {
        return;
    }
    let mut taken = 0;
    while taken < take {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => taken += n,
        }
    }
    // Read what has arrived so that the close is a FIN, not a reset.
    stream.set_nonblocking(true).unwrap();
    loop {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ => break,
        }
    }
}

fn gst_launch(plugins: &Path, args: &str) -> Output {
    Command::new("gst-launch-1.0")
        .args(args.split_whitespace())
        .env("GST_PLUGIN_PATH", plugins)
        .stdin(Stdio::null())
        .output()
        .expect("gst-launch-1.0 runs")
}

#[test]
fn a_peer_closing_the_socket_mid_write_never_kills_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let port = closing_peer(4000);
    // A non-live source outruns the connection, so the connection thread writes back to
    // back when the peer closes. Without protection about one run in five dies of SIGPIPE
    // (exit status 141 in a shell); 40 runs make a miss all but impossible. leaky=downstream:
    // the source must keep outrunning a connection that never holds (the default would wait
    // for room, at the pace of the reconnection backoff).
    let pipeline = format!(
        "videotestsrc num-buffers=3000 ! video/x-raw,width=64,height=48 \
         ! metareplay location={} loop=true \
         ! mqttpublish host=127.0.0.1 port={port} qos=1 leaky=downstream flush-timeout=200",
        sample_recording()
    );
    const PARALLEL: usize = 4;
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        let runs: Vec<_> = (0..PARALLEL)
            .map(|_| {
                let (plugins, pipeline) = (plugins.clone(), pipeline.clone());
                thread::spawn(move || gst_launch(&plugins, &pipeline))
            })
            .collect();
        for run in runs {
            let out = run.join().unwrap();
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.status.signal(),
                None,
                "round {round}: gst-launch-1.0 was killed by a signal (13 is SIGPIPE)\n{printed}"
            );
            assert!(
                out.status.success(),
                "round {round}: {:?}\n{printed}",
                out.status
            );
            // The user saw the connection trouble and the end of the stream.
            assert!(
                printed.contains("Not connected to the MQTT broker")
                    && printed.contains("Got EOS from element"),
                "round {round}: {printed}"
            );
        }
    }
}
