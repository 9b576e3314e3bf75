// SPDX-License-Identifier: MPL-2.0

//! What the viewer knows, and the events that tell the pages about it.
//!
//! The MQTT side feeds messages, errors and connection changes in; every page gets a snapshot
//! when it connects and then the same stream of events (serialized once, shared by all
//! pages). A page that falls behind skips ahead to a fresh snapshot.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::payload::{self, Attribute, Frame, Object, Pipeline, Shape};

/// Sources (topic and `source` field pairs) shown; messages of further ones are errors.
pub const MAX_SOURCES: usize = 64;
/// Labels counted per source; further labels are counted under [`OTHER_LABELS`].
pub const MAX_LABELS: usize = 32;
pub const OTHER_LABELS: &str = "(other labels)";
/// Distinct tracking ids remembered per label.
const MAX_TRACKS: usize = 100_000;
/// Error lines kept for pages that connect later.
const MAX_ERRORS: usize = 100;
/// Seconds of per-label history (one point per second).
pub const HISTORY_SECONDS: usize = 300;
/// The window of the message rate and the mean latency.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Events a page may fall behind by before it gets a fresh snapshot.
const CHANNEL_CAPACITY: usize = 256;

/// One Server-Sent Event: its name and its JSON data.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: String,
}

/// The broker connection as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Connection {
    /// `connecting`, `connected` or `disconnected`.
    pub state: &'static str,
    /// Why it is not connected (the client's error).
    pub detail: Option<String>,
    /// When the next attempt is made, for `disconnected`.
    pub retry_in_ms: Option<u64>,
    /// Since when (UNIX ms).
    pub since_ms: u64,
}

/// The viewer's settings the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerInfo {
    pub broker: String,
    pub topics: Vec<String>,
    pub max_message_size: usize,
    pub version: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct ErrorLine {
    /// When it last happened.
    time_ms: u64,
    topic: String,
    text: String,
    /// How many times in a row (a stream of equally bad messages is one line).
    repeat: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct LabelStats {
    label: String,
    /// Objects with this label in the latest message.
    now: usize,
    /// Objects with this label in every message so far.
    detections: u64,
    /// Distinct tracking ids seen with this label.
    tracks: usize,
}

#[derive(Debug, Default)]
struct LabelState {
    stats: LabelStats,
    track_ids: HashSet<i64>,
}

/// One point of the count chart: per label, the most objects seen in one message during
/// that second; `None` when no message arrived.
#[derive(Debug, Clone, Serialize)]
struct HistoryPoint {
    t: u64,
    counts: Option<BTreeMap<String, usize>>,
}

/// The `frame` event: everything the page draws for one message.
#[derive(Debug, Clone, Serialize)]
struct FrameEvent<'a> {
    id: &'a str,
    topic: &'a str,
    source: Option<&'a str>,
    shape: Shape,
    frame_id: Option<u64>,
    resolution: Option<(u32, u32)>,
    objects: &'a [Object],
    /// Classifications of the whole frame (gvametaconvert's full-frame object).
    frame_labels: &'a [Attribute],
    image: Option<&'a str>,
    latency_ms: Option<f64>,
    latency_from: Option<&'static str>,
    pipeline: Option<&'a Pipeline>,
    count: u64,
    /// Messages of all sources.
    messages_total: u64,
    labels: Vec<&'a LabelStats>,
    received_ms: u64,
}

#[derive(Debug, Serialize)]
struct SourceTick<'a> {
    id: &'a str,
    count: u64,
    rate: f64,
    age_ms: Option<u64>,
    latency_ms: Option<f64>,
    point: &'a HistoryPoint,
}

struct Source {
    id: String,
    topic: String,
    source: Option<String>,
    count: u64,
    /// The last `frame` event, as sent.
    last_event: Option<String>,
    last_at: Option<Instant>,
    arrivals: VecDeque<Instant>,
    latencies: VecDeque<(Instant, f64)>,
    labels: BTreeMap<String, LabelState>,
    history: VecDeque<HistoryPoint>,
    /// The second being collected for the history.
    bucket: Option<BTreeMap<String, usize>>,
}

struct State {
    info: ViewerInfo,
    connection: Connection,
    sources: Vec<Source>,
    index: HashMap<(String, Option<String>), usize>,
    errors: VecDeque<ErrorLine>,
    errors_total: u64,
    messages_total: u64,
    /// Sources refused for being over [`MAX_SOURCES`] (reported once).
    sources_refused: bool,
}

/// The shared state and the event channel.
pub struct Hub {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("viewer events serialize")
}

impl Hub {
    pub fn new(info: ViewerInfo) -> Hub {
        let (events, _) = broadcast::channel(CHANNEL_CAPACITY);
        Hub {
            state: Mutex::new(State {
                info,
                connection: Connection {
                    state: "connecting",
                    detail: None,
                    retry_in_ms: None,
                    since_ms: unix_ms(SystemTime::now()),
                },
                sources: Vec::new(),
                index: HashMap::new(),
                errors: VecDeque::new(),
                errors_total: 0,
                messages_total: 0,
                sources_refused: false,
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data for a viewer.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, name: &'static str, data: String) {
        // No page connected is fine.
        let _ = self.events.send(Arc::new(Event { name, data }));
    }

    /// The snapshot for a page that connects, and its subscription to what follows.
    pub fn subscribe(&self) -> (Event, broadcast::Receiver<Arc<Event>>) {
        let state = self.lock();
        // Subscribed under the lock: nothing between the snapshot and the first event is lost.
        let receiver = self.events.subscribe();
        (state.snapshot(), receiver)
    }

    /// The broker connection changed.
    pub fn connection(
        &self,
        state: &'static str,
        detail: Option<String>,
        retry_in: Option<Duration>,
    ) {
        let mut guard = self.lock();
        let connection = Connection {
            state,
            detail,
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
            since_ms: unix_ms(SystemTime::now()),
        };
        guard.connection = connection.clone();
        drop(guard);
        self.send("connection", json(&connection));
    }

    /// An error line on the page, for a message or for the connection.
    pub fn error(&self, topic: &str, text: String) {
        let mut line = ErrorLine {
            time_ms: unix_ms(SystemTime::now()),
            topic: payload::bounded(topic),
            text,
            repeat: 1,
        };
        let mut state = self.lock();
        state.errors_total += 1;
        match state.errors.back_mut() {
            Some(last) if last.topic == line.topic && last.text == line.text => {
                last.repeat += 1;
                last.time_ms = line.time_ms;
                line.repeat = last.repeat;
            }
            _ => {
                if state.errors.len() == MAX_ERRORS {
                    state.errors.pop_front();
                }
                state.errors.push_back(line.clone());
            }
        }
        drop(state);
        self.send("errorline", json(&line));
    }

    /// One message from the broker.
    pub fn message(&self, topic: &str, payload: &[u8]) {
        let max = self.lock().info.max_message_size;
        if payload.len() > max {
            self.error(
                topic,
                format!(
                    "a message of {} bytes, larger than the {max} bytes the viewer reads \
                     (--max-message-size); skipped",
                    payload.len()
                ),
            );
            return;
        }
        let frame = match payload::parse(payload) {
            Ok(frame) => frame,
            Err(why) => {
                self.error(
                    topic,
                    format!("unreadable message ({} bytes): {why}", payload.len()),
                );
                return;
            }
        };
        for warning in &frame.warnings {
            self.error(topic, format!("message read in part: {warning}"));
        }
        let event = self.lock().record(topic, &frame);
        match event {
            Ok(data) => self.send("frame", data),
            Err(Some(why)) => self.error(topic, why),
            Err(None) => {}
        }
    }

    /// Once a second: rates, ages, history points.
    pub fn tick(&self) {
        let data = self.lock().tick();
        self.send("tick", data);
    }
}

impl State {
    fn snapshot(&self) -> Event {
        #[derive(Serialize)]
        struct SourceSnapshot<'a> {
            id: &'a str,
            topic: &'a str,
            source: Option<&'a str>,
            history: &'a VecDeque<HistoryPoint>,
        }
        // Build by hand to splice the stored frame events in without parsing them again.
        let sources: Vec<_> = self
            .sources
            .iter()
            .map(|s| SourceSnapshot {
                id: &s.id,
                topic: &s.topic,
                source: s.source.as_deref(),
                history: &s.history,
            })
            .collect();
        let frames: Vec<&str> = self
            .sources
            .iter()
            .filter_map(|s| s.last_event.as_deref())
            .collect();
        let mut data = String::from("{");
        let mut field = |name: &str, value: String| {
            if data.len() > 1 {
                data.push(',');
            }
            data.push_str(&json(&name));
            data.push(':');
            data.push_str(&value);
        };
        field("viewer", json(&self.info));
        field("connection", json(&self.connection));
        field("messages_total", json(&self.messages_total));
        field("errors_total", json(&self.errors_total));
        field("errors", json(&self.errors));
        field("sources", json(&sources));
        field("frames", format!("[{}]", frames.join(",")));
        data.push('}');
        Event {
            name: "snapshot",
            data,
        }
    }

    /// Updates the source's statistics; the `frame` event, or why the message is not shown
    /// (`None`: already reported).
    fn record(&mut self, topic: &str, frame: &Frame) -> Result<String, Option<String>> {
        let key = (payload::bounded(topic), frame.source.clone());
        let index = match self.index.get(&key) {
            Some(&index) => index,
            None if self.sources.len() >= MAX_SOURCES => {
                if std::mem::replace(&mut self.sources_refused, true) {
                    return Err(None);
                }
                return Err(Some(format!(
                    "more than {MAX_SOURCES} sources (topic and \"source\" pairs); \
                     messages of further sources are not shown"
                )));
            }
            None => {
                let index = self.sources.len();
                self.sources.push(Source {
                    id: format!("s{index}"),
                    topic: key.0.clone(),
                    source: key.1.clone(),
                    count: 0,
                    last_event: None,
                    last_at: None,
                    arrivals: VecDeque::new(),
                    latencies: VecDeque::new(),
                    labels: BTreeMap::new(),
                    history: VecDeque::new(),
                    bucket: None,
                });
                self.index.insert(key, index);
                index
            }
        };
        self.messages_total += 1;
        let messages_total = self.messages_total;
        let now = Instant::now();
        let wall = SystemTime::now();
        let source = &mut self.sources[index];
        source.count += 1;
        source.last_at = Some(now);
        source.arrivals.push_back(now);

        let wall_ns = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()) as u64;
        let (latency_ms, latency_from) = match (frame.sink_time_ns, frame.publish_time_ns) {
            (Some(t), _) => (Some((wall_ns as f64 - t as f64) / 1e6), Some("sink_time")),
            (None, Some(t)) => (Some((wall_ns as f64 - t as f64) / 1e6), Some("time")),
            (None, None) => (None, None),
        };
        if let Some(latency) = latency_ms {
            source.latencies.push_back((now, latency));
        }

        for stats in source.labels.values_mut() {
            stats.stats.now = 0;
        }
        for object in &frame.objects {
            let label =
                if source.labels.contains_key(&object.label) || source.labels.len() < MAX_LABELS {
                    object.label.clone()
                } else {
                    OTHER_LABELS.to_string()
                };
            let state = source.labels.entry(label.clone()).or_default();
            state.stats.label = label;
            state.stats.now += 1;
            state.stats.detections += 1;
            if let Some(id) = object.track_id {
                if state.track_ids.len() < MAX_TRACKS {
                    state.track_ids.insert(id);
                }
                state.stats.tracks = state.track_ids.len();
            }
        }
        let bucket = source.bucket.get_or_insert_with(BTreeMap::new);
        for state in source.labels.values() {
            let max = bucket.entry(state.stats.label.clone()).or_insert(0);
            *max = (*max).max(state.stats.now);
        }

        let event = FrameEvent {
            id: &source.id,
            topic: &source.topic,
            source: source.source.as_deref(),
            shape: frame.shape,
            frame_id: frame.frame_id,
            resolution: frame.resolution,
            objects: &frame.objects,
            frame_labels: &frame.frame_labels,
            image: frame.image.as_deref(),
            latency_ms,
            latency_from,
            pipeline: frame.pipeline.as_ref(),
            count: source.count,
            messages_total,
            labels: source.labels.values().map(|l| &l.stats).collect(),
            received_ms: unix_ms(wall),
        };
        let data = json(&event);
        source.last_event = Some(data.clone());
        Ok(data)
    }

    fn tick(&mut self) -> String {
        let now = Instant::now();
        let t = unix_ms(SystemTime::now());
        let window_start = now.checked_sub(RATE_WINDOW);
        let mut ticks = Vec::with_capacity(self.sources.len());
        for source in &mut self.sources {
            if let Some(start) = window_start {
                while source.arrivals.front().is_some_and(|&a| a < start) {
                    source.arrivals.pop_front();
                }
                while source.latencies.front().is_some_and(|&(a, _)| a < start) {
                    source.latencies.pop_front();
                }
            }
            let span = source
                .arrivals
                .front()
                .map(|first| now.duration_since(*first).as_secs_f64().max(1.0))
                .unwrap_or(1.0)
                .min(RATE_WINDOW.as_secs_f64());
            let rate = source.arrivals.len() as f64 / span;
            let latency_ms = (!source.latencies.is_empty()).then(|| {
                source.latencies.iter().map(|(_, l)| l).sum::<f64>() / source.latencies.len() as f64
            });
            if source.history.len() == HISTORY_SECONDS {
                source.history.pop_front();
            }
            source.history.push_back(HistoryPoint {
                t,
                counts: source.bucket.take(),
            });
            ticks.push((rate, latency_ms));
        }
        #[derive(Serialize)]
        struct Tick<'a> {
            t: u64,
            connection: &'a Connection,
            messages_total: u64,
            errors_total: u64,
            sources: Vec<SourceTick<'a>>,
        }
        let sources = ticks
            .into_iter()
            .zip(&self.sources)
            .map(|((rate, latency_ms), source)| SourceTick {
                id: &source.id,
                count: source.count,
                rate,
                age_ms: source
                    .last_at
                    .map(|at| now.duration_since(at).as_millis() as u64),
                latency_ms,
                point: source.history.back().expect("pushed above"),
            })
            .collect();
        json(&Tick {
            t,
            connection: &self.connection,
            messages_total: self.messages_total,
            errors_total: self.errors_total,
            sources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(ViewerInfo {
            broker: "127.0.0.1:1883".into(),
            topics: vec!["#".into()],
            max_message_size: 100_000,
            version: "test",
        })
    }

    fn snapshot(hub: &Hub) -> serde_json::Value {
        serde_json::from_str(&hub.subscribe().0.data).unwrap()
    }

    fn message(labels: &[(&str, i64)], source: &str) -> String {
        let objects: Vec<String> = labels
            .iter()
            .map(|(label, id)| {
                format!(
                    r#"{{"x":1,"y":1,"w":2,"h":2,"id":{id},"detection":{{"label":"{label}","confidence":0.5}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"objects":[{}],"resolution":{{"width":64,"height":48}},"source":"{source}"}}"#,
            objects.join(",")
        )
    }

    #[test]
    fn labels_are_counted_per_source() {
        let hub = hub();
        hub.message(
            "a",
            message(&[("car", 1), ("car", 2), ("box", 3)], "cam").as_bytes(),
        );
        hub.message("a", message(&[("car", 1)], "cam").as_bytes());
        hub.message("a", message(&[("car", 9)], "other").as_bytes());
        let snap = snapshot(&hub);
        assert_eq!(snap["messages_total"], 3);
        assert_eq!(snap["sources"].as_array().unwrap().len(), 2);
        let first = &snap["frames"][0];
        assert_eq!(first["count"], 2);
        let labels: Vec<(String, u64, u64, u64)> = first["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["label"].as_str().unwrap().into(),
                    l["now"].as_u64().unwrap(),
                    l["detections"].as_u64().unwrap(),
                    l["tracks"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            labels,
            vec![("box".into(), 0, 1, 1), ("car".into(), 1, 3, 2)]
        );
    }

    #[test]
    fn one_history_point_per_tick_with_the_most_objects_per_label() {
        let hub = hub();
        hub.tick();
        hub.message("a", message(&[("car", 1), ("car", 2)], "cam").as_bytes());
        hub.message("a", message(&[("car", 1)], "cam").as_bytes());
        hub.tick();
        hub.tick();
        let history = snapshot(&hub)["sources"][0]["history"].clone();
        // The source did not exist at the first tick; a second without messages is null.
        assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
        assert_eq!(history[0]["counts"], serde_json::json!({"car": 2}));
        assert_eq!(history[1]["counts"], serde_json::Value::Null);
    }

    #[test]
    fn bad_messages_are_error_lines_and_repeats_are_counted() {
        let hub = hub();
        hub.message("t", b"{oops");
        hub.message("t", b"{oops");
        hub.message("t", &[b' '; 100_001]);
        let snap = snapshot(&hub);
        assert_eq!(snap["errors_total"], 3);
        let errors = snap["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["repeat"], 2);
        assert!(errors[0]["text"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"));
        assert!(errors[1]["text"].as_str().unwrap().contains("100001 bytes"));
        assert_eq!(snap["messages_total"], 0);
    }

    #[test]
    fn sources_and_labels_are_bounded() {
        let hub = hub();
        for i in 0..MAX_SOURCES + 3 {
            hub.message("t", message(&[("car", 1)], &format!("cam-{i}")).as_bytes());
        }
        let labels: Vec<(String, i64)> =
            (0..MAX_LABELS + 2).map(|i| (format!("l{i}"), 1)).collect();
        let labels: Vec<(&str, i64)> = labels.iter().map(|(l, i)| (l.as_str(), *i)).collect();
        hub.message("t", message(&labels, "cam-0").as_bytes());
        let snap = snapshot(&hub);
        assert_eq!(snap["sources"].as_array().unwrap().len(), MAX_SOURCES);
        // Reported once, not for every refused message.
        assert_eq!(
            snap["errors"].as_array().unwrap().len(),
            1,
            "{}",
            snap["errors"]
        );
        let shown = snap["frames"][0]["labels"].as_array().unwrap();
        assert_eq!(
            shown.len(),
            MAX_LABELS + 1,
            "{MAX_LABELS} labels and the others"
        );
        let other = shown.iter().find(|l| l["label"] == OTHER_LABELS).unwrap();
        assert_eq!(other["now"], 3);
    }
}
