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
use std::time::Duration;

use common::{free_port, plugin_dir, printed, sample_recording, Broker, QoS, Subscriber};

const TOPIC: &str = "dlstreamer_pipeline_results";
const LONG: Duration = Duration::from_secs(30);

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

/// A source that is not live, as a file is: `buffers` small frames as fast as they come.
fn file_job(buffers: u32) -> String {
    format!(
        "videotestsrc num-buffers={buffers} ! video/x-raw,width=64,height=48 \
         ! metareplay location={} loop=true",
        sample_recording()
    )
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
        "{} ! mqttpublish host=127.0.0.1 port={port} qos=1 leaky=downstream flush-timeout=200",
        file_job(3000)
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

/// The errors gst-launch-1.0 printed: one `ERROR: from element` line per error message.
fn errors(printed: &str) -> Vec<&str> {
    printed
        .lines()
        .filter(|line| line.starts_with("ERROR: from element"))
        .collect()
}

#[test]
fn a_bad_setting_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    for (element, bad) in [
        ("mqttpublish", "topic=a/#"),
        ("mqttpublish", "config=/nonexistent/pipeline.json"),
        ("metafilter", "label-score={oops}"),
    ] {
        let sink = if element == "mqttpublish" {
            ""
        } else {
            " ! fakesink"
        };
        let out = gst_launch(
            &plugins,
            &format!("fakesrc num-buffers=1 ! {element} {bad}{sink}"),
        );
        let printed = printed(&out);
        assert!(!out.status.success(), "{bad}: {printed}");
        let errors = errors(&printed);
        assert_eq!(errors.len(), 1, "{bad}: exactly one error\n{printed}");
        assert!(
            errors[0].contains(element) && errors[0].contains(bad.split('=').next().unwrap()),
            "{bad}: the error names the element and the setting\n{printed}"
        );
        assert!(
            !printed.contains("failed to post a proper error message"),
            "{bad}: {printed}"
        );
    }
}

/// Numeric properties declare their ranges: gst-inspect-1.0 shows them, and GLib refuses
/// a value outside one, naming the property and the value (the property keeps its value).
#[test]
fn numeric_properties_show_their_range_and_refuse_values_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let out = Command::new("gst-inspect-1.0")
        .arg("mqttpublish")
        .env("GST_PLUGIN_PATH", &plugins)
        .output()
        .expect("gst-inspect-1.0 runs");
    let inspect = printed(&out);
    assert!(out.status.success(), "{inspect}");
    for (property, range) in [
        ("port", "Range: 1 - 65535 Default: 1883"),
        ("qos", "Range: 0 - 2 Default: 0"),
        ("protocol", "Range: 4 - 5 Default: 4"),
        ("jpeg-quality", "Range: 1 - 100 Default: 85"),
        (
            "max-message-size",
            "Range: 1024 - 268435456 Default: 4194304",
        ),
        ("flush-timeout", "Range: 0 - 600000 Default: 5000"),
    ] {
        let (_, after) = inspect
            .split_once(&format!("\n  {property} "))
            .unwrap_or_else(|| panic!("no {property} in\n{inspect}"));
        let description = after.split("\n  ").take(4).collect::<Vec<_>>().join(" ");
        let description = description.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            description.contains(range),
            "{property}: {range:?} not in {description:?}"
        );
    }

    for (property, value) in [("port", "188300"), ("qos", "3"), ("protocol", "6")] {
        let out = gst_launch(
            &plugins,
            &format!(
                "fakesrc num-buffers=1 ! mqttpublish host=127.0.0.1 {property}={value} \
                 flush-timeout=100"
            ),
        );
        let printed = printed(&out);
        assert!(
            printed.contains(&format!(
                "value \"{value}\" of type 'guint' is invalid or out of range for property \
                 '{property}'"
            )),
            "{property}={value}: the warning names both\n{printed}"
        );
    }
}

/// A file job with the default settings and a queue far too small for the backlog the
/// source builds: the sink waits for room, every message arrives, nothing is warned about,
/// and gst-launch-1.0 exits 0.
#[test]
fn a_file_job_delivers_every_message_and_exits_zero() {
    let broker = Broker::new();
    let plugins = plugin_dir(broker.dir());
    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .connect();
    let out = gst_launch(
        &plugins,
        &format!(
            "{} ! mqttpublish host=127.0.0.1 port={} qos=1 max-queued-messages=4",
            file_job(300),
            broker.port()
        ),
    );
    let printed = printed(&out);
    assert!(out.status.success(), "{:?}\n{printed}", out.status);
    assert!(!printed.contains("WARNING"), "{printed}");
    assert_eq!(sub.wait_for(300, LONG).len(), 300);
    sub.assert_count_after(300, Duration::from_millis(200));
}

/// The system calls writing to the socket connected to `port`, in an `strace -yy` log:
/// each line of such a call names the socket's ends (`writev(9<TCP:[A->127.0.0.1:PORT]>,`).
fn socket_writes(trace: &str, port: u16) -> usize {
    let socket = format!("->127.0.0.1:{port}]>");
    let calls = ["write(", "writev(", "sendto(", "sendmsg("];
    trace
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(_pid, call)| call.trim_start()))
        .filter(|call| calls.iter().any(|name| call.starts_with(name)))
        .filter(|call| call.contains(&socket))
        .count()
}

/// A file job outruns the connection: the messages waiting when the socket can take them
/// go out in one write (rumqttc's event loop, patched in third_party/rumqttc), not one
/// system call each. Counted by strace on gst-launch-1.0 at QoS 0 and 1, MQTT 3.1.1 and
/// 5: the writes to the broker's socket are at most half the messages (two or more per
/// write on average; 160-260 writes per 1,000 here, idle or with a core busy), and every
/// message arrives. With one write per message (rumqttc as released) there are more writes
/// than messages. How many messages wait for each write depends on how fast the machine
/// publishes against how fast the source runs, hence the margin.
#[test]
fn a_file_job_writes_waiting_messages_together() {
    const MESSAGES: usize = 1000;
    let broker = Broker::new();
    let plugins = plugin_dir(broker.dir());
    for (qos, protocol) in [(0, 4), (1, 4), (0, 5), (1, 5)] {
        let topic = format!("batched/{qos}/{protocol}");
        let sub = Subscriber::builder(&broker, &topic)
            .qos(QoS::AtLeastOnce)
            .connect();
        let trace = broker.dir().join(format!("strace-{qos}-{protocol}.txt"));
        let out = Command::new("strace")
            .args(["-f", "-qq", "-yy", "-e", "signal=none", "-o"])
            .arg(&trace)
            .args(["-e", "trace=write,writev,sendto,sendmsg", "gst-launch-1.0"])
            .args(
                format!(
                    "{} ! mqttpublish host=127.0.0.1 port={} qos={qos} protocol={protocol} \
                     topic={topic}",
                    file_job(MESSAGES as u32),
                    broker.port()
                )
                .split_whitespace(),
            )
            .env("GST_PLUGIN_PATH", &plugins)
            .stdin(Stdio::null())
            .output()
            .expect("strace runs (scripts/deps.sh installs it)");
        let printed = printed(&out);
        assert!(out.status.success(), "{:?}\n{printed}", out.status);
        let writes = socket_writes(&std::fs::read_to_string(&trace).unwrap(), broker.port());
        // CONNECT, DISCONNECT and the messages: with no batching at all, over MESSAGES.
        assert!(
            writes > 0 && writes <= MESSAGES / 2,
            "QoS {qos}, MQTT {protocol}: {writes} writes to the broker's socket for \
             {MESSAGES} messages"
        );
        assert_eq!(sub.wait_for(MESSAGES, LONG).len(), MESSAGES, "QoS {qos}");
    }
}

/// A file job whose messages cannot be delivered (nothing listens on the port) ends with
/// an error naming how many were lost, and gst-launch-1.0 exits non-zero, so that a script
/// can tell.
#[test]
fn a_file_job_that_cannot_deliver_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let port = free_port(false);
    let out = gst_launch(
        &plugins,
        &format!(
            "{} ! mqttpublish host=127.0.0.1 port={port} qos=1 flush-timeout=300",
            file_job(20)
        ),
    );
    let printed = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(
            "ERROR: from element /GstPipeline:pipeline0/GstMqttPublish:mqttpublish0: End of \
             stream: 20 of 20 messages were not delivered (20 not delivered within \
             flush-timeout 300 ms: 20 queued, 0 in flight)"
        ),
        "{printed}"
    );
}

/// A live source against a port where nothing listens, with a queue of 5: the first drop
/// is a warning with its cause and policy, the count follows at the end of the stream, the
/// end-of-stream report counts every message of the run (dropped and never sent), and a
/// live pipeline exits 0 with these warnings.
#[test]
fn a_live_job_that_loses_messages_warns_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let port = free_port(false);
    let out = gst_launch(
        &plugins,
        &format!(
            "videotestsrc is-live=true num-buffers=30 \
             ! video/x-raw,width=64,height=48,framerate=100/1 \
             ! metareplay location={} loop=true \
             ! mqttpublish host=127.0.0.1 port={port} max-queued-messages=5 flush-timeout=200",
            sample_recording()
        ),
    );
    let printed = printed(&out);
    assert!(out.status.success(), "{:?}\n{printed}", out.status);
    assert!(!printed.contains("ERROR"), "{printed}");
    let expected = [
        format!(
            "WARNING: from element /GstPipeline:pipeline0/GstMqttPublish:mqttpublish0: \
             Dropping messages: the queue is full (max-queued-messages=5) because the broker \
             at 127.0.0.1:{port} is not connected, and leaky=auto (the upstream is live) \
             drops the oldest message to make room."
        ),
        "25 messages dropped (the oldest)".to_string(),
        "End of stream: 30 of 30 messages were not delivered (25 dropped: queue full; 5 not \
         delivered within flush-timeout 200 ms: 5 queued, 0 in flight)"
            .to_string(),
        "Got EOS from element".to_string(),
    ];
    let mut from = 0;
    for text in &expected {
        let at = printed[from..]
            .find(text.as_str())
            .unwrap_or_else(|| panic!("{text:?}, in this order, in:\n{printed}"));
        from += at + text.len();
    }
}
