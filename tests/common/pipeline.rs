// SPDX-License-Identifier: MPL-2.0

//! A pipeline under test, started from a gst-launch description, and what its bus said.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::init_plugin;

/// Arrival times of buffers at a pad, recorded by a pad probe.
#[derive(Clone, Default)]
pub struct Flow(Arc<Mutex<Vec<Instant>>>);

impl Flow {
    fn watch(&self, pad: &gst::Pad) {
        let times = self.0.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            times.lock().unwrap().push(Instant::now());
            gst::PadProbeReturn::Ok
        });
    }

    /// How many buffers arrived.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The longest gap between two buffers.
    pub fn longest_gap(&self) -> Duration {
        let times = self.0.lock().unwrap();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// A PLAYING pipeline and what its bus said.
///
/// The element named `sink` (the `mqttpublish` under test) is the one [`Run::stats`] and
/// [`Run::stop`] read, and [`Run::flow`] records the buffers reaching its sink pad.
pub struct Run {
    pub pipeline: gst::Pipeline,
    pub flow: Flow,
    /// Messages taken off the bus by [`Run::watch`], in order.
    messages: Vec<gst::Message>,
    /// Every element message with the time it was posted, recorded from the posting thread.
    posted: Arc<Mutex<Vec<(gst::Structure, Instant)>>>,
}

impl Run {
    /// Parses the gst-launch `description` and sets it to PLAYING.
    pub fn start(description: &str) -> Run {
        Run::start_with_name(None, description)
    }

    /// [`Run::start`] with the pipeline called `name` (gst-launch names it `pipeline0`), as
    /// an application names its pipeline.
    pub fn start_named(name: &str, description: &str) -> Run {
        Run::start_with_name(Some(name), description)
    }

    fn start_with_name(name: Option<&str>, description: &str) -> Run {
        init_plugin();
        let pipeline = gst::parse::launch(description)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        if let Some(name) = name {
            pipeline.set_property("name", name);
        }
        let flow = Flow::default();
        if let Some(sink) = pipeline.by_name("sink") {
            flow.watch(&sink.static_pad("sink").unwrap());
        }
        let posted: Arc<Mutex<Vec<(gst::Structure, Instant)>>> = Arc::default();
        let recorder = posted.clone();
        pipeline.bus().unwrap().set_sync_handler(move |_, msg| {
            if let gst::MessageView::Element(e) = msg.view() {
                if let Some(s) = e.structure() {
                    recorder
                        .lock()
                        .unwrap()
                        .push((s.to_owned(), Instant::now()));
                }
            }
            gst::BusSyncReply::Pass
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        Run {
            pipeline,
            flow,
            messages: Vec::new(),
            posted,
        }
    }

    /// `source ! mqttpublish name=sink props`: `source` is the part before the sink,
    /// `props` the sink's properties.
    pub fn publish(source: &str, props: &str) -> Run {
        Run::start(&format!("{source} ! mqttpublish name=sink {props}"))
    }

    /// The element called `name`.
    pub fn element(&self, name: &str) -> gst::Element {
        self.pipeline.by_name(name).unwrap()
    }

    /// The `stats` of the element named `sink`.
    pub fn stats(&self) -> gst::Structure {
        self.element("sink").property::<gst::Structure>("stats")
    }

    /// Waits until the `stats` of the element named `sink` satisfy `condition` and returns
    /// them; panics after `timeout` saying that `what` did not happen, with the last stats.
    #[track_caller]
    pub fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&gst::Structure) -> bool,
    ) -> gst::Structure {
        let mut stats = self.stats();
        let met = super::wait_until(timeout, Duration::from_millis(20), || {
            stats = self.stats();
            condition(&stats)
        });
        assert!(met, "{what}: not within {timeout:?}; stats: {stats}");
        stats
    }

    /// Takes bus messages until `done` says stop (true) or `timeout` passes (false).
    pub fn watch(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&gst::Message) -> bool,
    ) -> bool {
        let bus = self.pipeline.bus().unwrap();
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            else {
                break;
            };
            let stop = done(&msg);
            self.messages.push(msg);
            if stop {
                return true;
            }
        }
        false
    }

    /// Takes bus messages for `wait` at most, stopping early at EOS or an error, which it
    /// returns.
    pub fn pump(&mut self, wait: Duration) -> Option<gst::Message> {
        let mut end = None;
        self.watch(wait, |msg| {
            let stop = matches!(
                msg.view(),
                gst::MessageView::Eos(_) | gst::MessageView::Error(_)
            );
            if stop {
                end = Some(msg.clone());
            }
            stop
        });
        end
    }

    /// Waits for EOS; panics with the error's text on an error.
    pub fn wait_eos(&mut self, timeout: Duration) {
        let Some(msg) = self.pump(timeout) else {
            panic!("no EOS within {timeout:?}");
        };
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("pipeline error: {} ({:?})", e.error(), e.debug());
        }
    }

    /// Waits for the error that ends the run and returns its text; panics at EOS or when
    /// nothing ends the run within `timeout`.
    pub fn wait_error(&mut self, timeout: Duration) -> String {
        let Some(msg) = self.pump(timeout) else {
            panic!("no error within {timeout:?}");
        };
        match msg.view() {
            gst::MessageView::Error(e) => e.error().to_string(),
            _ => panic!(
                "EOS where an error was expected; warnings: {:?}",
                self.warnings()
            ),
        }
    }

    /// Waits until an element message called `name` is posted; false after `timeout`.
    pub fn wait_element_message(&mut self, name: &str, timeout: Duration) -> bool {
        self.watch(timeout, |m| {
            matches!(m.view(),
                gst::MessageView::Element(e) if e.structure().is_some_and(|s| s.name() == name))
        })
    }

    /// Element messages called `name` posted so far, with the time each was posted.
    pub fn element_messages(&self, name: &str) -> Vec<(gst::Structure, Instant)> {
        self.posted
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s.name() == name)
            .cloned()
            .collect()
    }

    /// The texts of the warnings taken off the bus so far.
    pub fn warnings(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(w.error().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Sets the pipeline to NULL and returns the final `stats` of the element named `sink`.
    pub fn stop(self) -> gst::Structure {
        self.pipeline.set_state(gst::State::Null).unwrap();
        self.stats()
    }
}
