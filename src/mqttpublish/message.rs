// SPDX-License-Identifier: MPL-2.0

//! Message assembly: one buffer in, one payload out. The metadata is read off the buffer,
//! filtered, written as gvametaconvert JSON and, when the frame goes along, wrapped with
//! the base64 JPEG in the configured envelope (`[metadata, "<jpeg>"]` or
//! `{"metadata": .., "blob": ".."}`).

use std::fmt;

use base64::Engine as _;
use gst::glib;
use once_cell::sync::Lazy;

use super::MessageFormat;
use crate::filter::Filter;
use crate::jpeg::{JpegEncoder, JpegError};
use crate::meta::{self, FrameContext};

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "mqttpublish-message",
        gst::DebugColorFlags::empty(),
        Some("mqttpublish message assembly: metadata, frame, envelope"),
    )
});

/// How messages are built, fixed at start.
#[derive(Debug, Clone)]
pub struct MessageOptions {
    /// The configuration file's filter.
    pub filter: Option<Filter>,
    pub publish_frame: bool,
    pub jpeg_quality: u8,
    /// With `publish_frame`, the frame goes with every this many messages.
    pub frame_interval: u64,
    pub format: MessageFormat,
    pub source: Option<String>,
    /// A JSON object in compact form.
    pub tags: Option<String>,
    pub skip_empty: bool,
    pub add_sink_time: bool,
}

/// Frames that produced no message or no image, counted in `stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounters {
    /// Skipped by `skip-empty` or emptied by the configuration's filter.
    pub skipped: u64,
    /// Published without an image because encoding failed.
    pub unencoded: u64,
}

/// Why a buffer could not become a message.
#[derive(Debug)]
pub enum BuildError {
    /// The buffer's memory could not be mapped for reading.
    Map(&'static str),
    /// The negotiated raw format cannot be encoded.
    Encoder(JpegError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Map(what) => write!(f, "Cannot map the {what}"),
            BuildError::Encoder(e) => write!(f, "{e}"),
        }
    }
}

/// The negotiated input.
enum Input {
    None,
    Raw {
        info: Box<gst_video::VideoInfo>,
        /// Made on the first frame that needs it.
        encoder: Option<Box<JpegEncoder>>,
    },
    Jpeg {
        width: u32,
        height: u32,
    },
}

/// Builds the messages of one stream; keeps the frame counter and reusable buffers.
pub struct Assembler {
    options: MessageOptions,
    input: Input,
    /// `frame_id` of the next buffer.
    next_frame_id: u64,
    /// Messages built so far, for `frame_interval`.
    messages: u64,
    counters: FrameCounters,
    /// Reused for every encoded frame.
    jpeg: Vec<u8>,
    /// Size of the last metadata message, to allocate each payload once.
    payload_hint: usize,
}

impl Assembler {
    pub fn new(options: MessageOptions) -> Self {
        Assembler {
            options,
            input: Input::None,
            next_frame_id: 0,
            messages: 0,
            counters: FrameCounters::default(),
            jpeg: Vec::new(),
            payload_hint: 1024,
        }
    }

    pub fn counters(&self) -> FrameCounters {
        self.counters
    }

    /// Takes the negotiated caps: raw video (encoded when frames are published) or JPEG.
    pub fn set_caps(&mut self, caps: &gst::CapsRef) -> Result<(), glib::BoolError> {
        let s = caps
            .structure(0)
            .ok_or_else(|| glib::bool_error!("Empty caps"))?;
        self.input = if s.name() == "image/jpeg" {
            Input::Jpeg {
                width: s.get::<i32>("width").unwrap_or(0).max(0) as u32,
                height: s.get::<i32>("height").unwrap_or(0).max(0) as u32,
            }
        } else {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|_| glib::bool_error!("Invalid video caps {caps}"))?;
            Input::Raw {
                info: Box::new(info),
                encoder: None,
            }
        };
        Ok(())
    }

    /// Builds the message for one buffer; `None` when the frame is skipped. `timestamp` is
    /// the buffer's stream time in nanoseconds.
    pub fn build(
        &mut self,
        buffer: &gst::BufferRef,
        timestamp: Option<u64>,
    ) -> Result<Option<Vec<u8>>, BuildError> {
        let options = &self.options;
        let frame_id = self.next_frame_id;
        self.next_frame_id += 1;

        let mut objects = meta::read_objects(buffer).objects;
        if let Some(filter) = &options.filter {
            let had_objects = !objects.is_empty();
            filter.apply_to_objects(&mut objects);
            if had_objects && objects.is_empty() {
                self.counters.skipped += 1;
                return Ok(None);
            }
        }
        if options.skip_empty && objects.is_empty() {
            self.counters.skipped += 1;
            return Ok(None);
        }

        let (width, height) = match &self.input {
            Input::Raw { info, .. } => (info.width(), info.height()),
            Input::Jpeg { width, height } => (*width, *height),
            Input::None => (0, 0),
        };
        let ctx = FrameContext {
            width,
            height,
            timestamp,
            frame_id: Some(frame_id),
            sink_time: options.add_sink_time.then(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
            source: options.source.as_deref(),
            tags: options.tags.as_deref(),
        };

        let with_frame = options.publish_frame && self.messages % options.frame_interval == 0;
        self.messages += 1;
        let mut payload = Vec::with_capacity(self.payload_hint);
        if !with_frame {
            meta::write_frame_json(&mut payload, &objects, &ctx);
            self.payload_hint = payload.len() + 64;
            return Ok(Some(payload));
        }

        let map;
        let jpeg: &[u8] = match &mut self.input {
            Input::Jpeg { .. } => {
                map = buffer
                    .map_readable()
                    .map_err(|_| BuildError::Map("JPEG buffer"))?;
                map.as_slice()
            }
            Input::Raw { info, encoder } => {
                let encoder = match encoder {
                    Some(encoder) => encoder,
                    None => encoder.insert(Box::new(
                        JpegEncoder::new(info, options.jpeg_quality)
                            .map_err(BuildError::Encoder)?,
                    )),
                };
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
                    .map_err(|_| BuildError::Map("video frame"))?;
                self.jpeg.clear();
                match encoder.encode(&frame, &mut self.jpeg) {
                    Ok(()) => &self.jpeg,
                    Err(e) => {
                        self.counters.unencoded += 1;
                        gst::warning!(CAT, "Cannot encode frame {frame_id}: {e}");
                        &[]
                    }
                }
            }
            Input::None => &[],
        };

        let b64_len = jpeg.len().div_ceil(3) * 4;
        payload.reserve(b64_len + 64);
        let (open, middle, close): (&[u8], &[u8], &[u8]) = match options.format {
            MessageFormat::Array => (b"[", b",\"", b"\"]"),
            MessageFormat::Object => (b"{\"metadata\":", b",\"blob\":\"", b"\"}"),
        };
        payload.extend_from_slice(open);
        meta::write_frame_json(&mut payload, &objects, &ctx);
        payload.extend_from_slice(middle);
        let start = payload.len();
        payload.resize(start + b64_len, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(jpeg, &mut payload[start..])
            .expect("buffer sized for the base64 text");
        payload.truncate(start + written);
        payload.extend_from_slice(close);
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterType;
    use crate::meta::{Detection, Object, Rect};
    use serde_json::Value;

    fn options() -> MessageOptions {
        MessageOptions {
            filter: None,
            publish_frame: false,
            jpeg_quality: 85,
            frame_interval: 1,
            format: MessageFormat::Array,
            source: None,
            tags: None,
            skip_empty: false,
            add_sink_time: false,
        }
    }

    fn object(label: &str, confidence: f64) -> Object {
        Object {
            label: label.into(),
            rect: Rect {
                x: 8,
                y: 4,
                w: 16,
                h: 8,
            },
            detection: Some(Detection {
                confidence: Some(confidence),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A 32x16 grey RGB frame carrying `objects`.
    fn frame(objects: &[Object]) -> gst::Buffer {
        let mut buffer = gst::Buffer::from_mut_slice(vec![128u8; 32 * 16 * 3]);
        meta::attach_objects(buffer.get_mut().unwrap(), objects, 32, 16);
        buffer
    }

    fn raw_caps() -> gst::Caps {
        gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 32, 16)
            .build()
            .unwrap()
            .to_caps()
            .unwrap()
    }

    fn assembler(options: MessageOptions) -> Assembler {
        gst::init().unwrap();
        let mut assembler = Assembler::new(options);
        assembler.set_caps(&raw_caps()).unwrap();
        assembler
    }

    fn json(payload: &[u8]) -> Value {
        serde_json::from_slice(payload).expect("valid JSON")
    }

    #[test]
    fn metadata_only_messages_are_the_gvametaconvert_object_with_frame_id() {
        let mut a = assembler(MessageOptions {
            source: Some("cam-7".into()),
            tags: Some(r#"{"site":"dock-3"}"#.into()),
            ..options()
        });
        let first = json(
            &a.build(&frame(&[object("box", 0.9)]), Some(40))
                .unwrap()
                .unwrap(),
        );
        assert_eq!(first["frame_id"], 0);
        assert_eq!(first["timestamp"], 40);
        assert_eq!(first["source"], "cam-7");
        assert_eq!(first["tags"]["site"], "dock-3");
        assert_eq!(first["resolution"]["width"], 32);
        assert_eq!(first["objects"][0]["roi_type"], "box");
        assert_eq!(first["objects"][0]["x"], 8);
        let second = json(&a.build(&frame(&[]), None).unwrap().unwrap());
        assert_eq!(second["frame_id"], 1);
        assert_eq!(second["objects"], Value::Array(vec![]));
        assert!(second.get("timestamp").is_none(), "{second}");
    }

    #[test]
    fn frames_go_in_the_chosen_envelope_every_nth_message() {
        for format in [MessageFormat::Array, MessageFormat::Object] {
            let mut a = assembler(MessageOptions {
                publish_frame: true,
                frame_interval: 2,
                format,
                ..options()
            });
            let payloads: Vec<Value> = (0..3)
                .map(|_| {
                    json(
                        &a.build(&frame(&[object("box", 0.9)]), None)
                            .unwrap()
                            .unwrap(),
                    )
                })
                .collect();
            for (i, payload) in payloads.iter().enumerate() {
                let (metadata, blob) = match format {
                    MessageFormat::Array if i != 1 => (&payload[0], payload[1].as_str()),
                    MessageFormat::Object if i != 1 => {
                        (&payload["metadata"], payload["blob"].as_str())
                    }
                    _ => (payload, None),
                };
                assert_eq!(metadata["frame_id"], i as u64, "{format:?} {payload}");
                if i == 1 {
                    assert!(
                        payload.is_object() && payload.get("blob").is_none(),
                        "{payload}"
                    );
                    continue;
                }
                let jpeg = base64::engine::general_purpose::STANDARD
                    .decode(blob.expect("a base64 frame"))
                    .unwrap();
                assert_eq!(&jpeg[..2], [0xff, 0xd8], "{format:?}: not a JPEG");
            }
            assert_eq!(a.counters(), FrameCounters::default());
        }
    }

    #[test]
    fn jpeg_input_is_sent_as_it_is() {
        gst::init().unwrap();
        let mut a = Assembler::new(MessageOptions {
            publish_frame: true,
            ..options()
        });
        let caps = gst::Caps::builder("image/jpeg")
            .field("width", 640)
            .field("height", 480)
            .build();
        a.set_caps(&caps).unwrap();
        let bytes = vec![0xff, 0xd8, 1, 2, 3, 0xff, 0xd9];
        let payload = json(
            &a.build(&gst::Buffer::from_mut_slice(bytes.clone()), None)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(payload[0]["resolution"]["width"], 640);
        let sent = base64::engine::general_purpose::STANDARD
            .decode(payload[1].as_str().unwrap())
            .unwrap();
        assert_eq!(sent, bytes);
    }

    #[test]
    fn skipped_frames_are_counted_and_keep_their_frame_id() {
        let mut filter = Filter {
            kind: FilterType::Detection,
            ..Default::default()
        };
        filter.label_score.insert("box".into(), 0.5);
        let mut a = assembler(MessageOptions {
            filter: Some(filter),
            skip_empty: true,
            ..options()
        });
        // Emptied by the filter, then empty to begin with, then kept.
        assert!(a
            .build(&frame(&[object("box", 0.2)]), None)
            .unwrap()
            .is_none());
        assert!(a.build(&frame(&[]), None).unwrap().is_none());
        let kept = json(
            &a.build(&frame(&[object("box", 0.7), object("box", 0.1)]), None)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(kept["frame_id"], 2);
        assert_eq!(kept["objects"].as_array().unwrap().len(), 1);
        assert_eq!(a.counters().skipped, 2);
    }

    #[test]
    fn a_frame_too_small_for_its_caps_is_a_map_error() {
        let mut a = assembler(MessageOptions {
            publish_frame: true,
            ..options()
        });
        let short = gst::Buffer::from_mut_slice(vec![0u8; 10]);
        let err = a.build(&short, None).unwrap_err();
        assert!(matches!(err, BuildError::Map("video frame")), "{err:?}");
        assert_eq!(err.to_string(), "Cannot map the video frame");
    }
}
