// SPDX-License-Identifier: MPL-2.0

//! The disk spool (`spool-location`), the way a site uses it: `gst-launch-1.0` runs as a
//! child process, dies by SIGKILL in the middle of an outage or of the replay, starts again
//! on the same folder, and a real subscriber counts every frame of every run. The spool's
//! files are truncated and damaged the way a crash or a bad disk leaves them.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{plugin_dir, printed, sample_recording, wait_until, Broker, QoS, Subscriber};
use serde_json::Value;

const TOPIC: &str = "dlstreamer_pipeline_results";
const LONG: Duration = Duration::from_secs(30);

/// A file job of `frames` small frames tagged `source=<run>`, publishing through the spool
/// in `spool` to `port`; `extra` adds sink properties.
fn pipeline(frames: u32, run: &str, port: u16, spool: &Path, extra: &str) -> Vec<String> {
    format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48 \
         ! metareplay location={} loop=true \
         ! mqttpublish host=127.0.0.1 port={port} qos=1 source={run} client-id=camera-1 \
         spool-location={} {extra}",
        sample_recording(),
        spool.display()
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

fn gst_launch(plugins: &Path, args: &[String]) -> Command {
    let mut command = Command::new("gst-launch-1.0");
    command
        .args(args)
        .env("GST_PLUGIN_PATH", plugins)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run(plugins: &Path, args: &[String]) -> Output {
    gst_launch(plugins, args)
        .output()
        .expect("gst-launch-1.0 runs")
}

/// A test's folder: the plugin for `gst-launch-1.0`, and where the spool goes.
struct Site {
    _dir: tempfile::TempDir,
    plugins: PathBuf,
    location: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        Site {
            plugins: plugin_dir(dir.path()),
            location: dir.path().join("spool"),
            _dir: dir,
        }
    }
}

/// The folder the spool of `client-id=camera-1` lives in.
fn spool_dir(location: &Path) -> PathBuf {
    location.join("camera-1")
}

/// The spool's segment files, oldest first.
fn segments(location: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(spool_dir(location))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn spooled_bytes(location: &Path) -> u64 {
    segments(location)
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// Waits until the spool's files hold at least `min_bytes` and stopped growing for half a
/// second: everything the run queued is on disk.
fn wait_spooled(location: &Path, min_bytes: u64) {
    let (mut last, mut since) = (0, Instant::now());
    let settled = wait_until(LONG, Duration::from_millis(20), || {
        let now = spooled_bytes(location);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        now >= min_bytes && since.elapsed() >= Duration::from_millis(500)
    });
    assert!(
        settled,
        "the spool in {} holds {} bytes, not at least {min_bytes}",
        location.display(),
        spooled_bytes(location)
    );
}

/// A run that spools `frames` frames tagged `run1` while nothing answers on `port` and
/// then waits at end of stream: returns once they are all on disk (at least `min_bytes`).
fn spooling_run(
    plugins: &Path,
    location: &Path,
    frames: u32,
    port: u16,
    extra: &str,
    min_bytes: u64,
) -> Child {
    let child = gst_launch(
        plugins,
        &pipeline(
            frames,
            "run1",
            port,
            location,
            &format!("{extra} flush-timeout=600000"),
        ),
    )
    .spawn()
    .unwrap();
    wait_spooled(location, min_bytes);
    child
}

fn kill(child: &mut Child) {
    // SIGKILL: no stop, no flush, no goodbye.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
}

/// A broker that keeps its subscribers' sessions, and the messages queued for them, across
/// its own restart, with a session for `client` on [`TOPIC`]: a test that restarts it
/// while the element retries misses nothing, whichever connects first.
fn broker_keeping(client: &str) -> Broker {
    let broker = Broker::builder()
        .persistence(true)
        .max_queued(10_000)
        .start();
    drop(subscriber(&broker, client));
    broker
}

/// The persistent subscriber `client` on [`TOPIC`].
fn subscriber(broker: &Broker, client: &str) -> Subscriber {
    Subscriber::builder(broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .persistent_session(client)
        .connect()
}

/// The metadata of a message, with or without its image (`[metadata, "<JPEG>"]`).
fn metadata(payload: &str) -> Value {
    let v: Value = serde_json::from_str(payload).unwrap();
    if v.is_array() {
        v[0].clone()
    } else {
        v
    }
}

/// The distinct frames received, as (run, stream time).
fn frames(sub: &Subscriber) -> BTreeSet<(String, u64)> {
    sub.messages()
        .iter()
        .map(|m| {
            let v = metadata(m.payload_str());
            (
                v["source"].as_str().unwrap().to_owned(),
                v["timestamp"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn count(frames: &BTreeSet<(String, u64)>, run: &str) -> usize {
    frames.iter().filter(|(r, _)| r == run).count()
}

/// A TCP proxy to the broker at `upstream` that passes the first `limit` bytes a client
/// sends, then nothing more (the broker's answers still pass): a broker that stops reading
/// mid-stream, with the connection open. The flag says when the limit was reached.
fn stalling_proxy(upstream: u16, limit: usize) -> (u16, Arc<AtomicBool>) {
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let port = common::tcp_proxy(upstream, move |mut from_client, mut to_server| {
        let mut passed = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while passed < limit {
            let want = buf.len().min(limit - passed);
            match from_client.read(&mut buf[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    passed += n;
                }
            }
        }
        flag.store(true, Ordering::SeqCst);
        // Holds both sockets open, reading nothing more, until the test ends.
        std::thread::sleep(Duration::from_secs(3600));
        drop((from_client, to_server));
    });
    (port, stalled)
}

/// Every frame of run 1, which died by SIGKILL while the broker was down, arrives when the
/// pipeline runs again on the same spool; run 2 dies too, in the middle of publishing run
/// 1's backlog, and run 3 still delivers every frame of all three runs.
#[test]
fn sigkill_during_an_outage_and_during_the_replay_loses_no_frame() {
    let mut broker = Broker::new();
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    broker.stop();

    // Run 1: the broker is down; every frame goes to the spool, then the process dies.
    let mut first = spooling_run(
        plugins,
        location,
        300,
        broker.port(),
        "publish-frame=true",
        300 * 1000,
    );
    kill(&mut first);

    // Run 2: the broker is back, behind a connection that stops passing what the element
    // sends once a third of the backlog went through: the process dies with the backlog
    // part delivered, part in flight, part still on disk.
    broker.start();
    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .connect();
    let backlog_bytes = spooled_bytes(location) as usize;
    let (proxy, stalled) = stalling_proxy(broker.port(), backlog_bytes / 3);
    let mut second = gst_launch(
        plugins,
        &pipeline(100, "run2", proxy, location, "flush-timeout=600000"),
    )
    .spawn()
    .unwrap();
    assert!(
        wait_until(LONG, Duration::from_millis(5), || stalled
            .load(Ordering::SeqCst)),
        "run 2 never sent a third of the backlog"
    );
    // What passed reaches the subscriber; the rest waits in the element.
    std::thread::sleep(Duration::from_millis(500));
    kill(&mut second);
    let before_the_kill = count(&frames(&sub), "run1");
    assert!(
        before_the_kill > 0 && before_the_kill < 300,
        "run 2 died in the middle of the replay ({before_the_kill} of 300 had arrived)"
    );

    // Run 3 publishes what is left, and its own frames.
    let out = run(
        plugins,
        &pipeline(50, "run3", broker.port(), location, "flush-timeout=30000"),
    );
    let printed = printed(&out);
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains("not delivered"), "{printed}");
    let arrived = wait_until(LONG, Duration::from_millis(50), || {
        let f = frames(&sub);
        count(&f, "run1") == 300 && count(&f, "run2") == 100 && count(&f, "run3") == 50
    });
    let f = frames(&sub);
    assert!(
        arrived,
        "run1 {} of 300, run2 {} of 100, run3 {} of 50 frames arrived",
        count(&f, "run1"),
        count(&f, "run2"),
        count(&f, "run3")
    );
    // Run 1's frames came in their order, the first time each arrived.
    let mut seen = BTreeSet::new();
    let run1: Vec<u64> = sub
        .messages()
        .iter()
        .filter_map(|m| {
            let v = metadata(m.payload_str());
            (v["source"] == "run1").then(|| v["timestamp"].as_u64().unwrap())
        })
        .filter(|t| seen.insert(*t))
        .collect();
    assert!(
        run1.windows(2).all(|w| w[0] < w[1]),
        "run 1's backlog in order"
    );
}

/// A segment cut short (the process died mid-write) loses only the torn record, said so;
/// a damaged record in the middle is skipped, counted and warned about, and every other
/// message is published.
#[test]
fn a_torn_end_and_a_damaged_record_cost_only_those_records() {
    let broker = Broker::new();
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    let closed = common::free_port(false);

    // 100 messages spooled, nothing delivered (nothing listens on the port).
    let out = run(
        plugins,
        &pipeline(100, "run1", closed, location, "flush-timeout=200"),
    );
    let printed1 = printed(&out);
    assert!(
        printed1.contains("100 messages not delivered yet are kept in the spool"),
        "{printed1}"
    );
    let segment = segments(location).pop().expect("a segment");
    let data = fs::read(&segment).unwrap();
    // The last record torn: 5 bytes short.
    fs::write(&segment, &data[..data.len() - 5]).unwrap();
    // A byte of a record in the middle flipped (its payload, far from any header).
    let mut data = fs::read(&segment).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x5a;
    fs::write(&segment, &data).unwrap();

    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .connect();
    let out = run(
        plugins,
        &pipeline(10, "run2", broker.port(), location, "flush-timeout=30000"),
    );
    let printed = printed(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("was cut short"),
        "the torn end is reported: {printed}"
    );
    assert!(
        printed.contains("damaged (checksum mismatch)"),
        "the damaged record is reported: {printed}"
    );
    let arrived = wait_until(LONG, Duration::from_millis(50), || {
        let f = frames(&sub);
        count(&f, "run1") == 98 && count(&f, "run2") == 10
    });
    let f = frames(&sub);
    assert!(
        arrived,
        "run1 {} of 98 (100 less the torn and the damaged one), run2 {} of 10",
        count(&f, "run1"),
        count(&f, "run2")
    );
    sub.assert_count_after(108, Duration::from_millis(300));
}

/// Two pipelines on one spool: the second refuses to start, naming the spool and the
/// process that holds it, and the first one's spool is untouched.
#[test]
fn a_second_pipeline_on_the_same_spool_is_refused_naming_the_holder() {
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    let closed = common::free_port(false);
    let mut first = spooling_run(plugins, location, 50, closed, "", 50 * 24);
    let before = spooled_bytes(location);

    let out = run(
        plugins,
        &pipeline(50, "run2", closed, location, "flush-timeout=100"),
    );
    let printed = printed(&out);
    assert!(!out.status.success(), "{printed}");
    let error = printed
        .lines()
        .find(|l| l.starts_with("ERROR: from element"))
        .unwrap_or_else(|| panic!("no error: {printed}"));
    assert!(
        error.contains("spool-location")
            && error.contains(&spool_dir(location).display().to_string())
            && error.contains(&format!("pid {}", first.id())),
        "the error names the spool and the holder: {error}"
    );
    assert_eq!(spooled_bytes(location), before, "the spool is untouched");
    kill(&mut first);
}

/// A live source while the broker is down and the spool is full: the oldest spooled
/// messages are dropped, announced, and counted exactly; what was not dropped arrives.
#[test]
fn a_full_spool_drops_the_oldest_for_a_live_source_and_counts_them() {
    let mut broker = broker_keeping("spool-live-sub");
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    broker.stop();
    // 640x480 frames with their images (tens of KB each) against a 1 MiB spool.
    let args: Vec<String> = format!(
        "videotestsrc is-live=true num-buffers=90 ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! metareplay location={} loop=true \
         ! mqttpublish host=127.0.0.1 port={} qos=1 source=live client-id=camera-1 \
         publish-frame=true spool-location={} spool-max-bytes=1048576 flush-timeout=20000",
        sample_recording(),
        broker.port(),
        location.display()
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    let mut child = gst_launch(plugins, &args).spawn().unwrap();
    // The 90 frames take 3 s; the broker comes back after them, during the flush.
    std::thread::sleep(Duration::from_millis(3500));
    broker.start();
    let sub = subscriber(&broker, "spool-live-sub");
    let out = {
        let deadline = Instant::now() + LONG;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    let printed = printed(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("Dropping the oldest spooled messages: the spool was full"),
        "the first drop is announced: {printed}"
    );
    let dropped: u64 = printed
        .lines()
        .find_map(|l| {
            l.split_once(" spooled messages dropped: the spool was full")
                .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no count of the drops: {printed}"));
    assert!(dropped > 0 && dropped < 90, "{dropped}");
    let expected = 90 - dropped as usize;
    let arrived = wait_until(LONG, Duration::from_millis(50), || sub.count() >= expected);
    assert!(arrived, "{} of {expected} arrived", sub.count());
    sub.assert_count_after(expected, Duration::from_millis(500));
    // The newest frames are the ones kept: the last one (about 89 frame durations in)
    // arrived, and the ones that arrived follow each other.
    let f: Vec<u64> = frames(&sub).into_iter().map(|(_, t)| t).collect();
    assert!(
        *f.last().unwrap() > 85 * 33_333_333,
        "the last frame arrived: {f:?}"
    );
    assert!(
        f.windows(2).all(|w| w[1] - w[0] < 2 * 33_333_333),
        "the oldest were dropped, not frames in between: {f:?}"
    );
}

/// A file job against a full spool waits for room instead of dropping: every frame arrives
/// once the broker is back, and the job exits 0.
#[test]
fn a_full_spool_makes_a_file_job_wait_and_deliver_everything() {
    let mut broker = broker_keeping("spool-file-sub");
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    broker.stop();
    let args: Vec<String> = format!(
        "videotestsrc num-buffers=60 pattern=snow ! video/x-raw,width=640,height=480 \
         ! metareplay location={} loop=true \
         ! mqttpublish host=127.0.0.1 port={} qos=1 source=file client-id=camera-1 \
         publish-frame=true spool-location={} spool-max-bytes=1048576 max-queued-messages=4 \
         flush-timeout=30000",
        sample_recording(),
        broker.port(),
        location.display()
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    let child = gst_launch(plugins, &args).spawn().unwrap();
    // The spool fills up to its limit, and the job waits.
    wait_spooled(location, 700_000);
    broker.start();
    let sub = subscriber(&broker, "spool-file-sub");
    let out = child.wait_with_output().unwrap();
    let printed = printed(&out);
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains("dropped"), "{printed}");
    let arrived = wait_until(LONG, Duration::from_millis(50), || {
        count(&frames(&sub), "file") == 60
    });
    assert!(arrived, "{} of 60", count(&frames(&sub), "file"));
}

/// With MQTT 5 every message carries its spool's id and its sequence number as user
/// properties, increasing across restarts, so that a consumer can drop duplicates.
#[test]
fn mqtt5_messages_carry_the_spool_id_and_a_sequence_that_grows_across_restarts() {
    let mut broker = Broker::new();
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    broker.stop();
    let mut first = spooling_run(plugins, location, 20, broker.port(), "protocol=5", 20 * 24);
    kill(&mut first);
    broker.start();
    let sub = Subscriber::builder(&broker, TOPIC)
        .v5()
        .qos(QoS::AtLeastOnce)
        .connect();
    let out = run(
        plugins,
        &pipeline(10, "run2", broker.port(), location, "protocol=5"),
    );
    assert!(out.status.success(), "{}", printed(&out));
    let messages = sub.wait_for(30, LONG);
    assert_eq!(messages.len(), 30);
    let id = spool_dir(location).display().to_string();
    let mut by_run: Vec<(String, u64)> = messages
        .iter()
        .map(|m| {
            let spool_id = m.user_property("spool-id").expect("a spool-id");
            assert!(spool_id.ends_with(&format!(":{id}")), "{spool_id}");
            let seq = m.user_property("spool-seq").expect("a spool-seq");
            (
                metadata(m.payload_str())["source"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                seq.parse().unwrap(),
            )
        })
        .collect();
    by_run.sort_by_key(|(_, seq)| *seq);
    let seqs: Vec<u64> = by_run.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (0..30).collect::<Vec<u64>>());
    // Run 1's messages hold the first 20, run 2's the next 10.
    assert!(
        by_run[..20].iter().all(|(run, _)| run == "run1"),
        "{by_run:?}"
    );
    assert!(
        by_run[20..].iter().all(|(run, _)| run == "run2"),
        "{by_run:?}"
    );
}

/// A small filesystem of the test's own (tmpfs), unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} failed ({status}): this test needs root",
            path.display()
        );
        SmallDisk(path.to_owned())
    }

    /// Makes `path` (below the mount) read-only from now on, as a read-only bind mount does:
    /// files open for writing stay writable, new ones cannot be created.
    fn read_only(&self, path: &Path) {
        for args in [&["--bind"][..], &["-o", "remount,bind,ro"][..]] {
            let status = Command::new("mount")
                .args(args)
                .arg(path)
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success(), "mount {args:?} {}", path.display());
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// What happens to the spool's disk in [`a_failing_disk_is_reported_and_publishing_goes_on_in_memory`].
#[derive(Clone, Copy, PartialEq)]
enum Trouble {
    /// A 32 KiB filesystem: full after a few dozen messages.
    Full,
    /// The folder turns read-only once the spool is in use (its next segment fails).
    ReadOnly,
    /// The folder is removed once the spool is in use.
    Vanished,
}

/// A disk that fills up, turns read-only, or loses the spool's folder: a warning names the
/// file and the cause, the messages go on in memory, and every frame arrives.
#[test]
fn a_failing_disk_is_reported_and_publishing_goes_on_in_memory() {
    for (case, trouble, cause) in [
        ("full disk", Trouble::Full, "No space left on device"),
        (
            "read-only folder",
            Trouble::ReadOnly,
            "Read-only file system",
        ),
        ("vanished folder", Trouble::Vanished, "removed while in use"),
    ] {
        common::case(case, || {
            let broker = Broker::new();
            let site = Site::new();
            let (plugins, location) = (&site.plugins, &site.location);
            let disk = SmallDisk::mount(
                location,
                if trouble == Trouble::Full {
                    "32k"
                } else {
                    "64m"
                },
            );
            // Small messages fill the small disk; big ones (a new 1 MiB segment every few
            // frames) meet the read-only folder soon after it turns read-only.
            let (size, pattern, extra) = if trouble == Trouble::ReadOnly {
                (
                    "640,height=480",
                    "snow",
                    "publish-frame=true spool-max-bytes=8388608",
                )
            } else {
                ("64,height=48", "smpte", "")
            };
            let sub = Subscriber::builder(&broker, TOPIC)
                .qos(QoS::AtLeastOnce)
                .connect();
            let args: Vec<String> = format!(
                "videotestsrc is-live=true num-buffers=60 pattern={pattern} ! video/x-raw,width={size},framerate=30/1 \
                 ! metareplay location={} loop=true \
                 ! mqttpublish host=127.0.0.1 port={} qos=1 source=disk client-id=camera-1 \
                 spool-location={} flush-timeout=20000 {extra}",
                sample_recording(),
                broker.port(),
                location.display()
            )
            .split_whitespace()
            .map(str::to_owned)
            .collect();
            let child = gst_launch(plugins, &args).spawn().unwrap();
            if trouble != Trouble::Full {
                assert!(wait_until(LONG, Duration::from_millis(5), || {
                    spooled_bytes(location) > 0
                }));
                match trouble {
                    Trouble::ReadOnly => disk.read_only(&spool_dir(location)),
                    _ => fs::remove_dir_all(spool_dir(location)).unwrap(),
                }
            }
            let out = child.wait_with_output().unwrap();
            if trouble == Trouble::ReadOnly {
                let _ = Command::new("umount").arg(spool_dir(location)).status();
            }
            let printed = printed(&out);
            assert!(out.status.success(), "{printed}");
            let warning = printed
                .lines()
                .find(|l| l.contains(cause))
                .unwrap_or_else(|| panic!("no warning with {cause:?}: {printed}"));
            assert!(
                warning.contains(&spool_dir(location).display().to_string())
                    && warning.contains("messages go on in memory"),
                "{warning}"
            );
            let arrived = wait_until(LONG, Duration::from_millis(50), || {
                count(&frames(&sub), "disk") == 60
            });
            assert!(arrived, "{} of 60", count(&frames(&sub), "disk"));
            drop(disk);
        });
    }
}

/// The backlog a killed process left reaches every broker, at every QoS it takes: what was
/// spooled while no broker answered, and what the next run adds.
#[test]
fn the_backlog_reaches_every_broker_at_every_qos() {
    for (name, builder, props) in [
        ("mosquitto QoS 0", Broker::builder(), "qos=0"),
        (
            "mosquitto MQTT 5 QoS 2",
            Broker::builder(),
            "qos=2 protocol=5",
        ),
        ("RabbitMQ QoS 1", Broker::rabbitmq(), "qos=1"),
        ("NATS QoS 1", Broker::nats(), "qos=1"),
    ] {
        common::case(name, || {
            let broker = builder.start();
            let site = Site::new();
            let (plugins, location) = (&site.plugins, &site.location);
            // Run 1 has no broker to talk to, and dies.
            let closed = common::free_port(false);
            let mut first = spooling_run(plugins, location, 50, closed, props, 50 * 24);
            kill(&mut first);

            let sub = Subscriber::builder(&broker, TOPIC)
                .qos(QoS::AtLeastOnce)
                .connect();
            let out = run(
                plugins,
                &pipeline(
                    10,
                    "run2",
                    broker.port(),
                    location,
                    &format!("{props} flush-timeout=30000"),
                ),
            );
            assert!(out.status.success(), "{}", printed(&out));
            let arrived = wait_until(LONG, Duration::from_millis(50), || {
                let f = frames(&sub);
                count(&f, "run1") == 50 && count(&f, "run2") == 10
            });
            let f = frames(&sub);
            assert!(
                arrived,
                "run1 {} of 50, run2 {} of 10",
                count(&f, "run1"),
                count(&f, "run2")
            );
        });
    }
}

/// The `mqttpublish-spool-opened` message of a run with `gst-launch-1.0 -m`: the messages
/// the spool held at start.
fn held_at_start(printed: &str) -> u64 {
    let line = printed
        .lines()
        .find(|l| l.contains("mqttpublish-spool-opened"))
        .unwrap_or_else(|| panic!("no mqttpublish-spool-opened: {printed}"));
    let (_, after) = line.split_once("messages=(guint64)").unwrap();
    after.split(',').next().unwrap().parse().unwrap()
}

/// Messages older than `spool-max-age` are dropped, announced and counted; the next run
/// finds the spool empty.
#[test]
fn messages_older_than_the_age_limit_are_dropped_and_counted() {
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    let closed = common::free_port(false);
    let mut args = vec!["-m".to_owned()];
    args.extend(pipeline(
        40,
        "run1",
        closed,
        location,
        "spool-max-age=1 flush-timeout=3000",
    ));
    let out = run(plugins, &args);
    let printed1 = printed(&out);
    assert!(
        printed1
            .contains("Dropping the oldest spooled messages: they were older than spool-max-age"),
        "{printed1}"
    );
    assert!(
        printed1.contains("40 spooled messages dropped: they were older than spool-max-age"),
        "{printed1}"
    );
    assert!(printed1.contains("mqttpublish-spool-dropped"), "{printed1}");
    // Dropped by the policy, as asked: a warning, not a failed job.
    assert!(
        printed1.contains(
            "40 of 40 messages were not delivered (40 dropped: older than spool-max-age)"
        ),
        "{printed1}"
    );
    let mut args = vec!["-m".to_owned()];
    args.extend(pipeline(0, "run2", closed, location, "flush-timeout=100"));
    let out = run(plugins, &args);
    assert_eq!(held_at_start(&printed(&out)), 0, "{}", printed(&out));
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A live camera with frames while the broker is down for a minute: memory stays bounded
/// (the backlog waits on disk), every frame reaches a persistent subscriber once the broker
/// is back, the backlog in its order, and the spool is empty afterwards.
#[test]
fn a_minute_of_outage_with_a_live_camera_loses_no_frame_and_keeps_memory_bounded() {
    let mut broker = broker_keeping("spool-outage-sub");
    let site = Site::new();
    let (plugins, location) = (&site.plugins, &site.location);
    broker.stop();
    let frames_total = 75 * 30;
    let args: Vec<String> = format!(
        "videotestsrc is-live=true num-buffers={frames_total} ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! metareplay location={} loop=true \
         ! mqttpublish host=127.0.0.1 port={} qos=1 source=camera client-id=camera-1 \
         publish-frame=true max-queued-messages=16 spool-location={} flush-timeout=60000",
        sample_recording(),
        broker.port(),
        location.display()
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    let mut cmd = gst_launch(plugins, &args);
    cmd.args(["-m"]);
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(10));
    let early = rss_kib(pid);
    std::thread::sleep(Duration::from_secs(50));
    let late = rss_kib(pid);
    let spooled = spooled_bytes(location);
    broker.start();
    let sub = subscriber(&broker, "spool-outage-sub");
    let out = child.wait_with_output().unwrap();
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        spooled > 20 * 1024 * 1024,
        "a minute of frames went to disk: {spooled} bytes"
    );
    assert!(
        late < early + 16 * 1024,
        "memory grew from {early} KiB to {late} KiB while {spooled} bytes waited on disk"
    );
    // The broker hands the subscriber its queue 20 messages at a time: count cheaply
    // first, then read the frames (tens of MB of JSON) only now and then.
    let total = frames_total as usize;
    wait_until(2 * LONG, Duration::from_millis(100), || {
        sub.count() >= total
    });
    let arrived = wait_until(LONG, Duration::from_secs(2), || {
        count(&frames(&sub), "camera") == total
    });
    assert!(
        arrived,
        "{} of {frames_total} frames arrived ({} messages)",
        count(&frames(&sub), "camera"),
        sub.count()
    );
    // The backlog in its order: the first time each frame arrived, stream times increase
    // among those that waited on disk (the first 60 s).
    let mut seen = BTreeSet::new();
    let order: Vec<u64> = sub
        .messages()
        .iter()
        .map(|m| metadata(m.payload_str())["timestamp"].as_u64().unwrap())
        .filter(|t| seen.insert(*t) && *t < 55_000_000_000)
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "backlog out of order"
    );
    // Nothing left: the next run finds the spool empty.
    let mut args = vec!["-m".to_owned()];
    args.extend(pipeline(0, "empty", broker.port(), location, ""));
    assert_eq!(held_at_start(&printed(&run(plugins, &args))), 0);
}

/// A broker, a test's folder, and a subscriber to [`TOPIC`] that counts what a file job
/// publishes. The broker queues without limit for the subscriber (mosquitto's default
/// drops past 1,000 waiting for a client), so that a subscriber late on a busy machine
/// misses nothing of a file job's thousands of messages.
fn file_job_site() -> (Broker, Site, Subscriber) {
    let broker = Broker::builder().max_queued(0).start();
    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .connect();
    (broker, Site::new(), sub)
}

/// A file job through the spool with a small memory queue, so that messages keep moving to
/// disk and back while others go straight out: every message arrives exactly once.
#[test]
fn a_file_job_through_the_spool_delivers_each_message_once() {
    let (broker, site, sub) = file_job_site();
    let (plugins, location) = (&site.plugins, &site.location);
    let out = run(
        plugins,
        &pipeline(
            3000,
            "once",
            broker.port(),
            location,
            "max-queued-messages=16 flush-timeout=30000",
        ),
    );
    assert!(out.status.success(), "{}", printed(&out));
    sub.wait_for(3000, LONG);
    sub.assert_count_after(3000, Duration::from_millis(500));
    assert_eq!(count(&frames(&sub), "once"), 3000);
}

/// A file job's messages arrive back to back: the spool's thread lets them gather and
/// writes them together, instead of one `write` (and one wake-up of the thread) for every
/// message or two. Counted by strace on gst-launch-1.0: the writes to the spool's segment
/// files are at most half the messages (100-180 per 1,000 here, idle or with a core busy;
/// how many gather depends on the machine's speed, hence the margin), and every message
/// arrives once.
#[test]
fn a_file_job_writes_the_spool_in_batches() {
    const MESSAGES: usize = 1000;
    let (broker, site, sub) = file_job_site();
    let (plugins, location) = (&site.plugins, &site.location);
    let trace = site.location.with_extension("strace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-yy", "-e", "signal=none", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=write,writev,pwrite64,pwritev",
            "gst-launch-1.0",
        ])
        .args(pipeline(
            MESSAGES as u32,
            "batched",
            broker.port(),
            location,
            "flush-timeout=30000",
        ))
        .env("GST_PLUGIN_PATH", plugins)
        .stdin(Stdio::null())
        .output()
        .expect("strace runs (scripts/deps.sh installs it)");
    assert!(out.status.success(), "{:?}\n{}", out.status, printed(&out));
    // Each line of a write names the file: `writev(12</.../camera-1/000...0.seg>, ...`.
    let segment = format!("{}/", spool_dir(location).display());
    let writes = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(_pid, call)| call.trim_start()))
        .filter(|call| call.starts_with("write") || call.starts_with("pwrite"))
        .filter(|call| call.contains(&segment) && call.contains(".seg>"))
        .count();
    assert!(
        writes > 0 && writes <= MESSAGES / 2,
        "{writes} writes to the spool's segments for {MESSAGES} messages"
    );
    assert_eq!(sub.wait_for(MESSAGES, LONG).len(), MESSAGES);
    assert_eq!(count(&frames(&sub), "batched"), MESSAGES);
}
