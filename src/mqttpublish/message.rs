// SPDX-License-Identifier: MPL-2.0

//! Message assembly: one buffer in, one payload out. The metadata is read off the buffer,
//! filtered, and written as gvametaconvert JSON (or DLSPS's metadata); with frames, the
//! base64 JPEG goes along in the configured envelope.
//!
//! Every message on a topic has the same shape:
//! - `array`: the bare metadata, or with `publish-frame` always `[metadata, "<jpeg>"]`;
//! - `object` and `dlsps`: always `{"metadata": .., "blob": "<jpeg>"}`.
//!
//! A frame that cannot carry its image (GPU memory, a format the encoder does not take, a
//! message over the size limit, a failed encode) still publishes its metadata, with `""`
//! where the image would be; each reason is counted in [`FrameCounters`].

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use once_cell::sync::Lazy;

use super::attached::Attached;
use super::{MessageFormat, MetadataSource};
use crate::filter::Filter;
use crate::jpeg::{self, JpegEncoder};
use crate::meta::{self, DlspsFrame, FrameContext, PipelineInfo};

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
    /// With `publish_frame`, the image goes with every this many messages.
    pub frame_interval: u64,
    pub format: MessageFormat,
    pub metadata_source: MetadataSource,
    pub source: Option<String>,
    /// A JSON object in compact form.
    pub tags: Option<String>,
    pub skip_empty: bool,
    pub add_sink_time: bool,
    /// Publish the frame-level tensors with their raw output, as `gvametaconvert
    /// add-tensor-data=true` writes them.
    pub add_tensor_data: bool,
    /// `pipeline.name` of the `dlsps` format; the element fills in its pipeline's name
    /// when the property is not set.
    pub pipeline_name: Option<String>,
    /// `pipeline.version` of the `dlsps` format.
    pub pipeline_version: String,
}

/// Why a frame went out without its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoImage {
    /// The frames are not in system memory (`memory:VAMemory`, `memory:DMABuf`, ...).
    Memory,
    /// Not raw video in a format the encoder takes, nor JPEG.
    Format,
    /// The message with the image would be larger than the size limit.
    Oversize,
    /// The frame could not be mapped or encoded.
    Failed,
}

impl NoImage {
    /// Known from the caps alone.
    fn known_from_caps(self) -> bool {
        matches!(self, NoImage::Memory | NoImage::Format)
    }

    /// Says what happened, for a warning.
    fn describe(self) -> &'static str {
        match self {
            NoImage::Memory => "are not in system memory and cannot be read here",
            NoImage::Format => "are in a format the JPEG encoder does not take",
            NoImage::Oversize => "would make messages larger than the size limit",
            NoImage::Failed => "could not be mapped or encoded",
        }
    }
}

/// Frames that produced no message or no image, counted in `stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounters {
    /// Skipped by `skip-empty` or emptied by the configuration's filter.
    pub skipped: u64,
    /// gvametaconvert JSON metas that were not a JSON object; published from the metas.
    pub json_invalid: u64,
    /// Frames with a tensor meta whose raw output (`data_buffer`) could not be read, with
    /// `add-tensor-data`; published without it.
    pub tensor_data_invalid: u64,
    /// Published without their image, by reason.
    pub no_image_memory: u64,
    pub no_image_format: u64,
    pub no_image_oversize: u64,
    pub no_image_failed: u64,
}

impl FrameCounters {
    /// Frames published without the image they should have carried.
    pub fn unencoded(&self) -> u64 {
        self.no_image_memory + self.no_image_format + self.no_image_oversize + self.no_image_failed
    }

    /// Counts a frame without its image; a warning the first time for this reason.
    fn no_image(&mut self, reason: NoImage) -> Option<String> {
        let counter = match reason {
            NoImage::Memory => &mut self.no_image_memory,
            NoImage::Format => &mut self.no_image_format,
            NoImage::Oversize => &mut self.no_image_oversize,
            NoImage::Failed => &mut self.no_image_failed,
        };
        *counter += 1;
        (*counter == 1).then(|| {
            format!(
                "Frames {}: publishing the metadata without the image; further frames are \
                 counted in stats",
                reason.describe()
            )
        })
    }
}

/// One built message.
#[derive(Debug)]
pub struct Built {
    pub payload: Vec<u8>,
    /// Trouble met for the first time while building (invalid gvametaconvert JSON, an image
    /// left out for its size, a failed mapping or encoding): the element warns once each.
    pub warnings: Vec<String>,
}

/// Where the images come from.
enum Images {
    /// Raw video in system memory, in a format the encoder takes.
    Raw {
        info: Box<gst_video::VideoInfo>,
        /// Made on the first frame that needs it.
        encoder: Option<Box<JpegEncoder>>,
    },
    /// JPEG frames, sent as they are; the quality of the encoder that made them, when known.
    Jpeg { quality: Option<u8> },
    /// Frames that cannot become an image here.
    Unavailable(NoImage),
}

/// The negotiated input, read off the caps with [`Input::from_caps`].
pub struct Input {
    width: u32,
    height: u32,
    /// The caps as text and their `format`, for the `dlsps` metadata.
    caps: String,
    format: Option<String>,
    images: Images,
}

impl Input {
    /// `jpeg_quality` tells, for JPEG input, the quality of the encoder upstream (for
    /// `dlsps`'s `encoding_level`); it is asked only for JPEG input.
    pub fn from_caps(caps: &gst::CapsRef, jpeg_quality: impl FnOnce() -> Option<u8>) -> Input {
        let s = caps.structure(0);
        let dimension = |name| {
            s.and_then(|s| s.get::<i32>(name).ok())
                .map_or(0, |v| v.max(0) as u32)
        };
        let images = if !in_system_memory(caps) {
            Images::Unavailable(NoImage::Memory)
        } else if s.is_some_and(|s| s.name() == "image/jpeg") {
            Images::Jpeg {
                quality: jpeg_quality(),
            }
        } else {
            match gst_video::VideoInfo::from_caps(caps) {
                Ok(info) if jpeg::is_supported(info.format()) => Images::Raw {
                    info: Box::new(info),
                    encoder: None,
                },
                _ => Images::Unavailable(NoImage::Format),
            }
        };
        Input {
            width: dimension("width"),
            height: dimension("height"),
            caps: caps.to_string(),
            format: s.and_then(|s| s.get::<String>("format").ok()),
            images,
        }
    }
}

/// Whether buffers with these caps can be mapped and read here: no `memory:` feature, or
/// `memory:SystemMemory`.
fn in_system_memory(caps: &gst::CapsRef) -> bool {
    caps.features(0).is_none_or(|features| {
        features.is_any()
            || features.iter().all(|feature| {
                !feature.starts_with("memory:")
                    || feature == gst::CAPS_FEATURE_MEMORY_SYSTEM_MEMORY.as_str()
            })
    })
}

/// The `dlsps` format's per-run state.
struct Dlsps {
    pipeline: PipelineInfo,
    random: Random,
}

/// Builds the messages of one stream; keeps the frame counter and reusable buffers.
pub struct Assembler {
    options: MessageOptions,
    input: Option<Input>,
    dlsps: Option<Dlsps>,
    /// `frame_id` of the next buffer.
    next_frame_id: u64,
    /// Messages built so far, for `frame_interval`.
    messages: u64,
    counters: FrameCounters,
    /// Reused for every encoded frame.
    jpeg: Vec<u8>,
    /// Size of the last metadata, to allocate each payload once.
    payload_hint: usize,
}

impl Assembler {
    pub fn new(options: MessageOptions) -> Self {
        let dlsps = (options.format == MessageFormat::Dlsps).then(|| {
            let mut random = Random::new();
            Dlsps {
                pipeline: PipelineInfo {
                    name: options.pipeline_name.clone().unwrap_or_default(),
                    version: options.pipeline_version.clone(),
                    instance_id: format!("{:016x}{:016x}", random.next(), random.next()),
                    start_time: now_ns() as f64 / 1e9,
                },
                random,
            }
        });
        Assembler {
            options,
            input: None,
            dlsps,
            next_frame_id: 0,
            messages: 0,
            counters: FrameCounters::default(),
            jpeg: Vec::new(),
            payload_hint: 1024,
        }
    }

    pub fn publish_frame(&self) -> bool {
        self.options.publish_frame
    }

    pub fn counters(&self) -> FrameCounters {
        self.counters
    }

    /// Takes the negotiated input, whatever it is. Returns a warning when frames are
    /// published but this input gives no images.
    pub fn set_input(&mut self, input: Input) -> Option<String> {
        let warning = match input.images {
            Images::Unavailable(reason) if self.options.publish_frame => Some(format!(
                "Frames in {} {}: publishing the metadata without images",
                input.caps,
                reason.describe()
            )),
            _ => None,
        };
        self.input = Some(input);
        warning
    }

    /// Builds the message for one buffer; `None` when the frame is skipped. `timestamp` is
    /// the buffer's stream time in nanoseconds; `max_size` the largest payload that can be
    /// published.
    pub fn build(
        &mut self,
        buffer: &gst::BufferRef,
        timestamp: Option<u64>,
        max_size: usize,
    ) -> Option<Built> {
        let frame_id = self.next_frame_id;
        self.next_frame_id += 1;

        let mut warnings = Vec::new();
        let mut objects = meta::read_objects(buffer).objects;
        let mut attached = match self.options.metadata_source {
            MetadataSource::Auto => match Attached::parse(meta::json_messages(buffer)) {
                Ok(attached) => attached,
                Err(e) => {
                    self.counters.json_invalid += 1;
                    gst::debug!(CAT, "Frame {frame_id}: gvametaconvert JSON {e}");
                    if self.counters.json_invalid == 1 {
                        warnings.push(format!(
                            "The JSON gvametaconvert attached to frame {frame_id} is {e}: \
                             publishing the metadata built from the metas; further ones are \
                             counted in stats (json-invalid)"
                        ));
                    }
                    None
                }
            },
            MetadataSource::Metas => None,
        };
        // Results about the whole frame, when the metadata is built from the metas (the JSON
        // gvametaconvert attached has them already).
        let mut frame = meta::FrameResults::default();
        if attached.is_none() {
            let (read, unreadable) = meta::read_frame_results(buffer, self.options.add_tensor_data);
            frame = read;
            if let Some(first) = unreadable.first() {
                self.counters.tensor_data_invalid += 1;
                if self.counters.tensor_data_invalid == 1 {
                    warnings.push(format!(
                        "The tensor meta {first} (frame {frame_id}): publishing the tensor \
                         without its data; further ones are counted in stats \
                         (tensor-data-invalid)"
                    ));
                }
            }
        }
        // The objects of the JSON; the full-frame object is one of them.
        let count = |objects: &Vec<meta::Object>,
                     frame: &meta::FrameResults,
                     attached: &Option<Attached>| {
            attached.as_ref().map_or(
                objects.len() + usize::from(!frame.is_empty()),
                Attached::object_count,
            )
        };
        if let Some(filter) = &self.options.filter {
            let had_objects = count(&objects, &frame, &attached) > 0;
            filter.apply_to_objects(&mut objects);
            filter.apply_to_frame(&mut frame);
            if let Some(attached) = &mut attached {
                attached.filter(filter);
            }
            if had_objects && count(&objects, &frame, &attached) == 0 {
                self.counters.skipped += 1;
                return None;
            }
        }
        if self.options.skip_empty && count(&objects, &frame, &attached) == 0 {
            self.counters.skipped += 1;
            return None;
        }

        let wants_image =
            self.options.publish_frame && self.messages.is_multiple_of(self.options.frame_interval);
        self.messages += 1;
        let mut image = None;
        if wants_image {
            match self.image(buffer, frame_id) {
                Ok(jpeg) => image = Some(jpeg),
                Err(reason) => {
                    let first = self.counters.no_image(reason);
                    // Reasons that come with the caps were warned about in `set_input`.
                    if !reason.known_from_caps() {
                        warnings.extend(first);
                    }
                }
            }
        }
        let (width, height) = self.input.as_ref().map_or((0, 0), |i| (i.width, i.height));
        let ctx = FrameContext {
            width,
            height,
            timestamp,
            frame_id: Some(frame_id),
            sink_time: self.options.add_sink_time.then(now_ns),
            source: self.options.source.as_deref(),
            tags: self.options.tags.as_deref(),
            add_tensor_data: self.options.add_tensor_data,
        };

        let mut payload = Vec::with_capacity(self.payload_hint);
        let image_bytes = image.as_ref().map(|image| match image {
            Image::Encoded => self.jpeg.as_slice(),
            Image::Buffer(map) => map.as_slice(),
        });
        let img_handle = self.dlsps.as_mut().map(|dlsps| dlsps.random.handle());
        let attached_json = attached.as_ref().map(|attached| {
            let mut out = Vec::new();
            match self.dlsps {
                Some(_) => out = attached.dlsps_fields(&ctx).into_bytes(),
                None => attached.write(&mut out, &ctx),
            }
            String::from_utf8(out).expect("serde_json writes UTF-8")
        });
        let writer = Writer {
            attached: attached_json.as_deref(),
            options: &self.options,
            input: self.input.as_ref(),
            pipeline: self.dlsps.as_ref().map(|dlsps| &dlsps.pipeline),
            img_handle: img_handle.as_deref(),
            objects: &objects,
            frame: &frame,
            ctx: &ctx,
        };
        let metadata_len = writer.write(&mut payload, image_bytes);
        if payload.len() > max_size && image_bytes.is_some() {
            gst::debug!(
                CAT,
                "Frame {frame_id}: a message of {} bytes is over {max_size}, sending it without the image",
                payload.len()
            );
            warnings.extend(self.counters.no_image(NoImage::Oversize));
            payload.clear();
            writer.write(&mut payload, None);
        }
        self.payload_hint = metadata_len + 64;
        Some(Built { payload, warnings })
    }

    /// The image of one frame: encoded into `self.jpeg`, or the buffer itself for JPEG.
    fn image<'b>(
        &mut self,
        buffer: &'b gst::BufferRef,
        frame_id: u64,
    ) -> Result<Image<'b>, NoImage> {
        let input = self.input.as_mut().ok_or(NoImage::Format)?;
        match &mut input.images {
            Images::Unavailable(reason) => Err(*reason),
            Images::Jpeg { .. } => buffer.map_readable().map(Image::Buffer).map_err(|_| {
                gst::warning!(CAT, "Frame {frame_id}: cannot map the JPEG buffer");
                NoImage::Failed
            }),
            Images::Raw { info, encoder } => {
                let encoder = match encoder {
                    Some(encoder) => encoder,
                    None => encoder.insert(Box::new(
                        JpegEncoder::new(info, self.options.jpeg_quality).map_err(|e| {
                            gst::warning!(CAT, "Cannot make a JPEG encoder: {e}");
                            NoImage::Failed
                        })?,
                    )),
                };
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
                    .map_err(|_| {
                        gst::warning!(CAT, "Frame {frame_id}: cannot map the video frame");
                        NoImage::Failed
                    })?;
                self.jpeg.clear();
                encoder.encode(&frame, &mut self.jpeg).map_err(|e| {
                    gst::warning!(CAT, "Frame {frame_id}: cannot encode: {e}");
                    NoImage::Failed
                })?;
                Ok(Image::Encoded)
            }
        }
    }
}

/// Writes the message of one frame.
struct Writer<'a> {
    options: &'a MessageOptions,
    /// gvametaconvert's JSON, completed: the whole metadata, or with `dlsps` the keys
    /// merged into DLSPS's.
    attached: Option<&'a str>,
    input: Option<&'a Input>,
    /// The `dlsps` format's pipeline.
    pipeline: Option<&'a PipelineInfo>,
    img_handle: Option<&'a str>,
    objects: &'a [meta::Object],
    frame: &'a meta::FrameResults,
    ctx: &'a FrameContext<'a>,
}

impl Writer<'_> {
    /// Writes the whole message: the metadata, and the envelope with the image or `""`.
    /// Returns the length of the metadata.
    fn write(&self, payload: &mut Vec<u8>, image: Option<&[u8]>) -> usize {
        let (open, middle, close): (&[u8], &[u8], &[u8]) = match self.options.format {
            MessageFormat::Array if !self.options.publish_frame => (b"", b"", b""),
            MessageFormat::Array => (b"[", b",\"", b"\"]"),
            MessageFormat::Object | MessageFormat::Dlsps => {
                (b"{\"metadata\":", b",\"blob\":\"", b"\"}")
            }
        };
        payload.extend_from_slice(open);
        let start = payload.len();
        match (self.pipeline, self.attached) {
            (None, None) => meta::write_frame_json(payload, self.objects, self.frame, self.ctx),
            (None, Some(attached)) => payload.extend_from_slice(attached.as_bytes()),
            (Some(pipeline), _) => self.write_dlsps(payload, pipeline, image.is_some()),
        }
        let metadata_len = payload.len() - start;
        payload.extend_from_slice(middle);
        if let Some(image) = image.filter(|_| !middle.is_empty()) {
            let b64_len = image.len().div_ceil(3) * 4;
            let start = payload.len();
            payload.resize(start + b64_len, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(image, &mut payload[start..])
                .expect("buffer sized for the base64 text");
            payload.truncate(start + written);
        }
        payload.extend_from_slice(close);
        metadata_len
    }

    fn write_dlsps(&self, payload: &mut Vec<u8>, pipeline: &PipelineInfo, with_image: bool) {
        let encoding = with_image.then(|| match self.input.map(|input| &input.images) {
            Some(Images::Raw { .. }) => ("jpeg", Some(self.options.jpeg_quality)),
            Some(Images::Jpeg { quality }) => ("jpeg", *quality),
            _ => ("jpeg", None),
        });
        let time = now_ns();
        let elapsed = (time as f64 / 1e9 - pipeline.start_time).max(1e-3);
        let frame = DlspsFrame {
            caps: self.input.map_or("", |input| input.caps.as_str()),
            format: self.input.and_then(|input| input.format.as_deref()),
            img_handle: self.img_handle.unwrap_or_default(),
            encoding,
            pipeline,
            avg_fps: (self.ctx.frame_id.unwrap_or(0) + 1) as f64 / elapsed,
            time,
        };
        meta::write_dlsps_metadata(
            payload,
            self.objects,
            self.frame,
            self.ctx,
            &frame,
            self.attached,
        );
    }
}

/// The image of one frame.
enum Image<'b> {
    /// In the assembler's JPEG buffer.
    Encoded,
    /// The buffer is a JPEG already.
    Buffer(gst::BufferMap<'b, gst::buffer::Readable>),
}

/// Wall-clock time, nanoseconds since the UNIX epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A small, fast generator for DLSPS's random image handles and instance ids (xorshift64*,
/// seeded by the standard library's per-process random hasher keys): unique enough to tell
/// frames apart, not for secrets.
struct Random(u64);

impl Random {
    fn new() -> Self {
        Random(RandomState::new().hash_one(now_ns()) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 10 characters `A-Z0-9`, as DLSPS's `img_handle`.
    fn handle(&mut self) -> String {
        const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut bits = self.next();
        (0..10)
            .map(|_| {
                let c = ALPHABET[(bits % 36) as usize] as char;
                bits /= 36;
                c
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterType;
    use crate::meta::{Detection, Object, Rect};
    use serde_json::Value;

    const NO_LIMIT: usize = usize::MAX;

    fn options() -> MessageOptions {
        MessageOptions {
            filter: None,
            publish_frame: false,
            jpeg_quality: 85,
            frame_interval: 1,
            format: MessageFormat::Array,
            metadata_source: MetadataSource::Auto,
            source: None,
            tags: None,
            skip_empty: false,
            add_sink_time: false,
            add_tensor_data: false,
            pipeline_name: None,
            pipeline_version: String::new(),
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
        assert_eq!(
            assembler.set_input(Input::from_caps(&raw_caps(), || None)),
            None
        );
        assembler
    }

    fn build(a: &mut Assembler, buffer: &gst::Buffer) -> Value {
        json(&a.build(buffer, None, NO_LIMIT).expect("a message").payload)
    }

    fn json(payload: &[u8]) -> Value {
        serde_json::from_slice(payload).expect("valid JSON")
    }

    fn jpeg(blob: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(blob.as_str().expect("a base64 string"))
            .unwrap()
    }

    #[test]
    fn metadata_only_messages_are_the_gvametaconvert_object_with_frame_id() {
        let mut a = assembler(MessageOptions {
            source: Some("cam-7".into()),
            tags: Some(r#"{"site":"dock-3"}"#.into()),
            ..options()
        });
        let first = json(
            &a.build(&frame(&[object("box", 0.9)]), Some(40), NO_LIMIT)
                .unwrap()
                .payload,
        );
        assert_eq!(first["frame_id"], 0);
        assert_eq!(first["timestamp"], 40);
        assert_eq!(first["source"], "cam-7");
        assert_eq!(first["tags"]["site"], "dock-3");
        assert_eq!(first["resolution"]["width"], 32);
        assert_eq!(first["objects"][0]["roi_type"], "box");
        assert_eq!(first["objects"][0]["x"], 8);
        let second = build(&mut a, &frame(&[]));
        assert_eq!(second["frame_id"], 1);
        assert_eq!(second["objects"], Value::Array(vec![]));
        assert!(second.get("timestamp").is_none(), "{second}");
    }

    #[test]
    fn one_shape_per_topic_frames_between_the_interval_carry_an_empty_image() {
        for format in [
            MessageFormat::Array,
            MessageFormat::Object,
            MessageFormat::Dlsps,
        ] {
            let mut a = assembler(MessageOptions {
                publish_frame: true,
                frame_interval: 2,
                format,
                ..options()
            });
            for i in 0..3u64 {
                let payload = build(&mut a, &frame(&[object("box", 0.9)]));
                let (metadata, blob) = match format {
                    MessageFormat::Array => (&payload[0], &payload[1]),
                    _ => (&payload["metadata"], &payload["blob"]),
                };
                assert_eq!(metadata["frame_id"], i, "{format:?} {payload}");
                if i == 1 {
                    assert_eq!(blob, "", "{format:?}: {payload}");
                } else {
                    assert_eq!(&jpeg(blob)[..2], [0xff, 0xd8], "{format:?}: not a JPEG");
                }
            }
            assert_eq!(a.counters(), FrameCounters::default());
        }
    }

    #[test]
    fn the_object_formats_keep_their_envelope_without_frames() {
        for format in [MessageFormat::Object, MessageFormat::Dlsps] {
            let mut a = assembler(MessageOptions {
                format,
                ..options()
            });
            let payload = build(&mut a, &frame(&[object("box", 0.9)]));
            assert_eq!(payload["blob"], "", "{format:?}: {payload}");
            assert_eq!(payload["metadata"]["frame_id"], 0, "{format:?}: {payload}");
        }
    }

    #[test]
    fn dlsps_metadata_describes_the_frame_and_its_encoding() {
        let mut a = assembler(MessageOptions {
            format: MessageFormat::Dlsps,
            publish_frame: true,
            frame_interval: 2,
            pipeline_name: Some("user_defined_pipelines".into()),
            pipeline_version: "counting".into(),
            ..options()
        });
        let with_image = build(&mut a, &frame(&[object("box", 0.9)]));
        let without = build(&mut a, &frame(&[object("box", 0.9)]));
        let m = &with_image["metadata"];
        assert_eq!(m["width"], 32);
        assert_eq!(m["height"], 16);
        assert_eq!(m["channels"], 3);
        assert_eq!(m["img_format"], "RGB");
        assert!(
            m["caps"].as_str().unwrap().starts_with("video/x-raw"),
            "{m}"
        );
        assert_eq!(m["encoding_type"], "jpeg");
        assert_eq!(m["encoding_level"], 85);
        assert_eq!(m["gva_meta"][0]["tensor"][0]["label"], "box");
        assert_eq!(m["pipeline"]["name"], "user_defined_pipelines");
        assert_eq!(m["pipeline"]["version"], "counting");
        let handle = m["img_handle"].as_str().unwrap();
        assert_eq!(handle.len(), 10);
        assert!(handle
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        let m2 = &without["metadata"];
        assert_ne!(m2["img_handle"], m["img_handle"]);
        assert_eq!(m2["pipeline"]["instance_id"], m["pipeline"]["instance_id"]);
        assert!(m2.get("encoding_type").is_none(), "{m2}");
        assert!(m2["time"].as_u64().unwrap() >= m["time"].as_u64().unwrap());
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
        assert_eq!(a.set_input(Input::from_caps(&caps, || None)), None);
        let bytes = vec![0xff, 0xd8, 1, 2, 3, 0xff, 0xd9];
        let payload = build(&mut a, &gst::Buffer::from_mut_slice(bytes.clone()));
        assert_eq!(payload[0]["resolution"]["width"], 640);
        assert_eq!(jpeg(&payload[1]), bytes);
    }

    #[test]
    fn gpu_memory_and_unsupported_formats_publish_the_metadata_without_images() {
        gst::init().unwrap();
        let va = gst::Caps::builder("video/x-raw")
            .features(["memory:VAMemory"])
            .field("format", "NV12")
            .field("width", 1920)
            .field("height", 1080)
            .build();
        let ten_bit = gst_video::VideoInfo::builder(gst_video::VideoFormat::I42010le, 64, 32)
            .build()
            .unwrap()
            .to_caps()
            .unwrap();
        for (caps, memory, format) in [(va, 3, 0), (ten_bit, 0, 3)] {
            let mut a = Assembler::new(MessageOptions {
                publish_frame: true,
                ..options()
            });
            let warning = a
                .set_input(Input::from_caps(&caps, || None))
                .expect("a warning naming the caps");
            assert!(warning.contains(&caps.to_string()), "{warning}");
            for _ in 0..3 {
                let built = a
                    .build(&frame(&[object("box", 0.9)]), None, NO_LIMIT)
                    .unwrap();
                // Warned at set_input already.
                assert_eq!(built.warnings, [] as [String; 0]);
                let payload = json(&built.payload);
                assert_eq!(payload[1], "", "{payload}");
                assert_eq!(payload[0]["objects"][0]["roi_type"], "box");
            }
            let counters = a.counters();
            assert_eq!(
                (counters.no_image_memory, counters.no_image_format),
                (memory, format)
            );
            assert_eq!(counters.unencoded(), 3);
        }
        // Without publish-frame nothing is missing: no warning.
        let mut a = Assembler::new(options());
        assert_eq!(
            a.set_input(Input::from_caps(
                &gst::Caps::builder("video/x-raw")
                    .features(["memory:DMABuf"])
                    .build(),
                || None
            )),
            None
        );
    }

    #[test]
    fn over_the_size_limit_the_image_is_left_out_and_the_metadata_kept() {
        let mut a = assembler(MessageOptions {
            publish_frame: true,
            format: MessageFormat::Object,
            ..options()
        });
        let full = a
            .build(&frame(&[object("box", 0.9)]), None, NO_LIMIT)
            .unwrap();
        let limit = full.payload.len() - 1;
        let first = a.build(&frame(&[object("box", 0.9)]), None, limit).unwrap();
        assert!(first.payload.len() <= limit);
        let payload = json(&first.payload);
        assert_eq!(payload["blob"], "");
        assert_eq!(payload["metadata"]["objects"][0]["roi_type"], "box");
        assert!(first.warnings[0].contains("size limit"));
        let second = a.build(&frame(&[object("box", 0.9)]), None, limit).unwrap();
        assert!(second.warnings.is_empty(), "warned once");
        assert_eq!(a.counters().no_image_oversize, 2);
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
            .build(&frame(&[object("box", 0.2)]), None, NO_LIMIT)
            .is_none());
        assert!(a.build(&frame(&[]), None, NO_LIMIT).is_none());
        let kept = build(&mut a, &frame(&[object("box", 0.7), object("box", 0.1)]));
        assert_eq!(kept["frame_id"], 2);
        assert_eq!(kept["objects"].as_array().unwrap().len(), 1);
        assert_eq!(a.counters().skipped, 2);
    }

    #[test]
    fn a_frame_too_small_for_its_caps_goes_out_without_its_image() {
        let mut a = assembler(MessageOptions {
            publish_frame: true,
            ..options()
        });
        let mut short = gst::Buffer::from_mut_slice(vec![0u8; 10]);
        meta::attach_objects(short.get_mut().unwrap(), &[object("box", 0.9)], 32, 16);
        let built = a.build(&short, None, NO_LIMIT).unwrap();
        assert!(built.warnings[0].contains("could not be mapped or encoded"));
        let payload = json(&built.payload);
        assert_eq!(payload[1], "");
        assert_eq!(payload[0]["objects"][0]["roi_type"], "box");
        assert_eq!(a.counters().no_image_failed, 1);
    }
}
