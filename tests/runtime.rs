// SPDX-License-Identifier: MPL-2.0

//! The connection runtime all the `mqttpublish` of a process share, alone in its binary:
//! its threads are counted by name in `/proc/self/task`, and its tasks through the runtime.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{
    assert_accounted, init_plugin, sample_recording, stat, wait_until, Broker, Subscriber,
};
use gst::prelude::*;
use gstanalyticsmqtt::internals::{
    connection_tasks, CONNECTION_THREADS_ENV, CONNECTION_THREAD_NAME, DEFAULT_CONNECTION_THREADS,
};

const SINKS: usize = 32;
const LONG: Duration = Duration::from_secs(60);

/// The names of the threads of this process.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// Threads named like the runtime's, and any other thread whose name starts with
/// `mqttpublish` but the spooler's (there is no spool here).
fn connection_threads() -> (usize, Vec<String>) {
    let names = thread_names();
    let runtime = names
        .iter()
        .filter(|n| *n == CONNECTION_THREAD_NAME)
        .count();
    let others = names
        .into_iter()
        .filter(|n| n.starts_with("mqttpublish") && n != CONNECTION_THREAD_NAME)
        .collect();
    (runtime, others)
}

/// The runtime's worker threads: as many as the environment asks for (a run of this test
/// with `GST_MQTTPUBLISH_THREADS=3` checks that it is honoured), 2 by default or for a
/// value out of 1 to 64.
fn expected_threads() -> usize {
    std::env::var(CONNECTION_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|threads| (1..=64).contains(threads))
        .unwrap_or(DEFAULT_CONNECTION_THREADS)
}

/// A live camera feeding `sinks` sinks named `sink<first>`..., each publishing to
/// `cam/<its number>`.
fn pipeline(broker: &Broker, first: usize, sinks: usize) -> gst::Pipeline {
    let branches: String = (first..first + sinks)
        .map(|i| {
            format!(
                " t. ! queue ! mqttpublish name=sink{i} host={} port={} topic=cam/{i} qos=1",
                broker.host(),
                broker.port()
            )
        })
        .collect();
    let description = format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=30/1 \
         ! metareplay location={} loop=true ! tee name=t{branches}",
        sample_recording()
    );
    gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// Messages received per topic.
fn per_topic(sub: &Subscriber) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in sub.messages() {
        *counts.entry(message.topic.clone()).or_default() += 1;
    }
    counts
}

/// Waits until every topic of `sinks` received `more` messages beyond `before`.
fn wait_delivered(
    sub: &Subscriber,
    sinks: std::ops::Range<usize>,
    before: &HashMap<String, usize>,
    more: usize,
) {
    let missing = || -> Vec<String> {
        let now = per_topic(sub);
        sinks
            .clone()
            .map(|i| format!("cam/{i}"))
            .filter(|topic| {
                now.get(topic).copied().unwrap_or(0)
                    < before.get(topic).copied().unwrap_or(0) + more
            })
            .collect()
    };
    assert!(
        wait_until(LONG, Duration::from_millis(50), || missing().is_empty()),
        "topics short of {more} new messages: {:?}",
        missing()
    );
}

/// Stops `pipeline`: every sink accounted for its messages, and once stopped, no task of
/// theirs is left on the runtime.
fn stop(pipeline: &gst::Pipeline, sinks: std::ops::Range<usize>) {
    pipeline.set_state(gst::State::Null).unwrap();
    for i in sinks {
        let stats = pipeline
            .by_name(&format!("sink{i}"))
            .unwrap()
            .property::<gst::Structure>("stats");
        assert!(stat(&stats, "messages-published") > 0, "sink{i}: {stats}");
        assert_accounted(&stats);
    }
}

/// 32 sinks in one process: the runtime's threads do not grow with the sinks, every sink
/// delivers, and stopping them leaves no task of theirs; a second start and stop works.
#[test]
fn thirty_two_sinks_share_the_runtime_threads() {
    let broker = Broker::new();
    init_plugin();
    let sub = Subscriber::new(&broker, "cam/#");
    assert_eq!(connection_tasks(), None, "the runtime is made on first use");

    let one = pipeline(&broker, 0, 1);
    let many = pipeline(&broker, 1, SINKS - 1);
    for cycle in 0..2 {
        let before = per_topic(&sub);
        one.set_state(gst::State::Playing).unwrap();
        wait_delivered(&sub, 0..1, &before, 10);
        let (with_one, others) = connection_threads();
        assert!(
            others.is_empty(),
            "cycle {cycle}: other threads: {others:?}"
        );
        assert_eq!(
            with_one,
            expected_threads(),
            "cycle {cycle}: threads named {CONNECTION_THREAD_NAME}"
        );

        many.set_state(gst::State::Playing).unwrap();
        wait_delivered(&sub, 0..SINKS, &before, 10);
        let (with_all, others) = connection_threads();
        assert!(
            others.is_empty(),
            "cycle {cycle}: other threads: {others:?}"
        );
        assert_eq!(
            with_all, with_one,
            "cycle {cycle}: runtime threads with 1 sink, then {SINKS}"
        );
        assert_eq!(
            connection_tasks(),
            Some(2 * SINKS),
            "cycle {cycle}: two tasks per sink"
        );

        stop(&many, 1..SINKS);
        stop(&one, 0..1);
        // A task's count drops just after it returns, so the count may lag the stop.
        assert!(
            wait_until(LONG, Duration::from_millis(20), || connection_tasks()
                == Some(0)),
            "cycle {cycle}: tasks left after stopping every sink: {:?}",
            connection_tasks()
        );
        assert_eq!(
            connection_threads().0,
            with_one,
            "cycle {cycle}: threads after stop"
        );
    }
}
