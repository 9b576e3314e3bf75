// SPDX-License-Identifier: MPL-2.0

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::ReplayMatch;
use crate::meta::{self, BoundingBox, Object, RecordedFrame};

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "metareplay",
        gst::DebugColorFlags::empty(),
        Some("Recorded analytics metadata replay"),
    )
});

const DEFAULT_LOOP: bool = false;
const DEFAULT_ATTACH_JSON: bool = false;
/// Matching tolerance when buffers carry no duration.
const DEFAULT_TOLERANCE: gst::ClockTime = gst::ClockTime::from_mseconds(1);

#[derive(Debug, Clone, Default)]
struct Settings {
    location: Option<PathBuf>,
    loop_: bool,
    match_: ReplayMatch,
    attach_json: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    buffers: u64,
    buffers_unmatched: u64,
    objects_attached: u64,
}

#[derive(Debug)]
struct Recording {
    frames: Vec<RecordedFrame>,
    /// The lines as they were recorded, by frame.
    lines: Vec<Box<str>>,
    /// `(timestamp, index into frames)`, sorted; only for `match=timestamp`.
    by_timestamp: Vec<(u64, usize)>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Stopped,
    Started {
        recording: Recording,
        /// Index of the line for the next buffer (`match=index`).
        next: usize,
        /// Frame size from the caps, `(0, 0)` for non-video caps.
        size: (u32, u32),
        exhausted_warned: bool,
        stats: Stats,
    },
}

#[derive(Default)]
pub struct MetaReplay {
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

/// Reads a whole recording, failing on the first malformed line with its file and number.
fn load_recording(path: &Path, match_: ReplayMatch) -> Result<Recording, String> {
    let text = if path.is_dir() {
        Err(format!(
            "{}: is a directory, not a JSON-lines file",
            path.display()
        ))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }?;

    let mut frames = Vec::new();
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let frame = meta::parse_frame_line(line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), number + 1))?;
        if match_ == ReplayMatch::Timestamp && frame.timestamp.is_none() {
            return Err(format!(
                "{}:{}: no \"timestamp\", which match=timestamp needs",
                path.display(),
                number + 1
            ));
        }
        frames.push(frame);
        lines.push(line.trim().into());
    }
    if frames.is_empty() {
        return Err(format!("{}: holds no recorded frames", path.display()));
    }

    let mut by_timestamp: Vec<(u64, usize)> = match match_ {
        ReplayMatch::Index => Vec::new(),
        ReplayMatch::Timestamp => frames
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.timestamp.map(|t| (t, i)))
            .collect(),
    };
    by_timestamp.sort_unstable();
    Ok(Recording {
        frames,
        lines,
        by_timestamp,
    })
}

impl Recording {
    /// The index of the line closest to `time`, if it is within `tolerance`.
    fn find(&self, time: u64, tolerance: u64) -> Option<usize> {
        let pos = self.by_timestamp.partition_point(|(t, _)| *t < time);
        [pos.checked_sub(1), Some(pos)]
            .into_iter()
            .flatten()
            .filter_map(|p| self.by_timestamp.get(p))
            .map(|(t, i)| (t.abs_diff(time), *i))
            .filter(|(distance, _)| *distance <= tolerance)
            .min()
            .map(|(_, i)| i)
    }

    /// The time after which a looping replay starts again: one frame after the last line.
    fn span(&self, frame_duration: u64) -> u64 {
        self.by_timestamp
            .last()
            .map_or(0, |(t, _)| t + frame_duration)
    }
}

/// The recorded objects, rescaled when the recording was made at another frame size.
fn objects_for_size(frame: &RecordedFrame, size: (u32, u32)) -> Vec<Object> {
    let mut objects = frame.objects.clone();
    match frame.resolution {
        Some(recorded) if size.0 > 0 && size.1 > 0 && recorded != size => {
            for object in &mut objects {
                let bbox = object
                    .detection
                    .as_ref()
                    .and_then(|d| d.bounding_box)
                    .or_else(|| BoundingBox::from_rect(object.rect, recorded.0, recorded.1));
                if let Some(bbox) = bbox {
                    object.rect = bbox.to_rect(size.0, size.1);
                }
            }
        }
        _ => {}
    }
    objects
}

#[glib::object_subclass]
impl ObjectSubclass for MetaReplay {
    const NAME: &'static str = "GstMetaReplay";
    type Type = super::MetaReplay;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MetaReplay {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Recording")
                    .blurb(
                        "Path to a JSON-lines file with one gvametaconvert JSON object per line \
                         (gvametapublish method=file file-format=json-lines), read at start.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("loop")
                    .nick("Loop")
                    .blurb("Start again from the first line after the last one.")
                    .default_value(DEFAULT_LOOP)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("attach-json")
                    .nick("Attach JSON")
                    .blurb(
                        "Also attach each line, as recorded, as the JSON meta DL Streamer's \
                         gvametaconvert attaches (GstGVAJSONMeta).",
                    )
                    .default_value(DEFAULT_ATTACH_JSON)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("match", ReplayMatch::default())
                    .nick("Match")
                    .blurb("How recorded lines are matched to buffers.")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since the element started: buffers, buffers-unmatched and \
                         objects-attached.",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => {
                settings.location = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .map(PathBuf::from)
            }
            "loop" => settings.loop_ = value.get().expect("type checked upstream"),
            "match" => settings.match_ = value.get().expect("type checked upstream"),
            "attach-json" => settings.attach_json = value.get().expect("type checked upstream"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => settings
                .location
                .as_ref()
                .map(|p| p.display().to_string())
                .to_value(),
            "loop" => settings.loop_.to_value(),
            "match" => settings.match_.to_value(),
            "attach-json" => settings.attach_json.to_value(),
            "stats" => {
                let stats = match &*self.state.lock().unwrap() {
                    State::Started { stats, .. } => *stats,
                    State::Stopped => Stats::default(),
                };
                gst::Structure::builder("metareplay-stats")
                    .field("buffers", stats.buffers)
                    .field("buffers-unmatched", stats.buffers_unmatched)
                    .field("objects-attached", stats.objects_attached)
                    .build()
                    .to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for MetaReplay {}

impl ElementImpl for MetaReplay {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "Analytics metadata replay",
                "Filter/Analyzer/Video",
                &format!(
                    "Attaches detections recorded as gvametaconvert JSON lines to buffers as {}",
                    crate::meta::ATTACHES
                ),
                "gst-plugin-analyticsmqtt contributors",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            let caps = gst::Caps::new_any();
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for MetaReplay {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let location = settings.location.as_ref().ok_or_else(|| {
            gst::error_msg!(
                gst::ResourceError::NotFound,
                ("No location set: metareplay needs a JSON-lines recording")
            )
        })?;
        let recording = load_recording(location, settings.match_)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Read, ("location: {}", e)))?;
        gst::info!(
            CAT,
            imp = self,
            "Loaded {} recorded frames from {}",
            recording.frames.len(),
            location.display()
        );
        *self.state.lock().unwrap() = State::Started {
            recording,
            next: 0,
            size: (0, 0),
            exhausted_warned: false,
            stats: Stats::default(),
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = State::Stopped;
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let size = gst_video::VideoInfo::from_caps(incaps)
            .map(|info| (info.width(), info.height()))
            .unwrap_or((0, 0));
        if let State::Started { size: s, .. } = &mut *self.state.lock().unwrap() {
            *s = size;
        }
        Ok(())
    }

    fn transform_ip(
        &self,
        buffer: &mut gst::BufferRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (loop_, match_, attach_json) = {
            let settings = self.settings.lock().unwrap();
            (settings.loop_, settings.match_, settings.attach_json)
        };
        let stream_time = match match_ {
            ReplayMatch::Index => None,
            ReplayMatch::Timestamp => self
                .obj()
                .segment()
                .downcast_ref::<gst::ClockTime>()
                .and_then(|segment| segment.to_stream_time(buffer.pts()))
                .map(gst::ClockTime::nseconds),
        };

        let mut state = self.state.lock().unwrap();
        let State::Started {
            recording,
            next,
            size,
            exhausted_warned,
            stats,
        } = &mut *state
        else {
            return Err(gst::FlowError::Flushing);
        };
        stats.buffers += 1;

        let index = match match_ {
            ReplayMatch::Index => {
                if *next >= recording.frames.len() && loop_ {
                    *next = 0;
                }
                let index = (*next < recording.frames.len()).then_some(*next);
                *next += 1;
                index
            }
            ReplayMatch::Timestamp => stream_time.and_then(|time| {
                let duration = buffer.duration().map(gst::ClockTime::nseconds);
                let tolerance = duration.map_or(DEFAULT_TOLERANCE.nseconds(), |d| d / 2);
                let span = recording.span(duration.unwrap_or(0));
                let time = if loop_ && span > 0 { time % span } else { time };
                recording.find(time, tolerance)
            }),
        };

        let Some(index) = index else {
            stats.buffers_unmatched += 1;
            if match_ == ReplayMatch::Index && !std::mem::replace(exhausted_warned, true) {
                gst::info!(
                    CAT,
                    imp = self,
                    "End of the recording: further buffers pass without objects"
                );
            }
            return Ok(gst::FlowSuccess::Ok);
        };

        let objects = objects_for_size(&recording.frames[index], *size);
        stats.objects_attached += objects.len() as u64;
        meta::attach_objects(buffer, &objects, size.0, size.1);
        meta::attach_frame_results(buffer, &recording.frames[index].frame);
        if attach_json {
            // A line is one JSON object: no NUL byte can be in it.
            meta::attach_json_message(buffer, &recording.lines[index]);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
