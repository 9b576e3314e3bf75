// SPDX-License-Identifier: MPL-2.0

//! `mqttpublish`: publishes the analytics metadata of each buffer (gvametaconvert JSON),
//! optionally with the frame as base64 JPEG, to an MQTT broker.
//!
//! ```text
//! gst-launch-1.0 videotestsrc num-buffers=300 ! video/x-raw,width=640,height=480 \
//!     ! metareplay location=pipelines/sample.jsonl ! mqttpublish host=127.0.0.1 publish-frame=true
//! ```
//!
//! The streaming thread only builds the message and queues it; a task on the connection
//! runtime all the sinks of the process share owns the connection (see [`crate::mqtt`]:
//! 2 threads, or `GST_MQTTPUBLISH_THREADS`), so a slow or absent broker never holds up live video;
//! a source that is not live (a file) waits for room in the queue instead of losing messages.
//!
//! `leaky` says what happens when the queue is full: `no` waits for room (back-pressure,
//! never blocking flushing or state changes), `upstream` drops the new message,
//! `downstream` the oldest, and `auto` (the default) waits when the upstream is not live and
//! drops the oldest when it is. Drops are counted in `stats` and announced: a warning and an
//! `mqttpublish-dropping` message at the first drop, `mqttpublish-dropped` with the count
//! once the queue has room again. At end of stream, messages lost by a job that was to
//! deliver everything (`auto` or `no`, upstream not live) are an error, otherwise a warning.
//!
//! `config` reads the `mqtt_publisher` settings DL Streamer Pipeline Server users write (a
//! bare section, a `config.json` entry picked by `config-pipeline` or the pipeline's name,
//! or a REST request body) at start; properties set explicitly win over it, and it wins over
//! `MQTT_HOST` / `MQTT_PORT`. docs/elements.md and docs/dlsps.md tell the whole of both.

use gst::glib;
use gst::prelude::*;

mod attached;
mod imp;
mod message;
mod notices;
mod report;
mod settings;
mod spooling;

#[doc(hidden)]
pub use message::{Assembler, Input, MessageOptions};

/// The shape of the messages. With a frame that has no image (`frame-interval`, GPU memory,
/// over the size limit) the image is `""`, so every message on a topic has one shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMqttPublishMessageFormat")]
pub enum MessageFormat {
    /// The metadata, or with `publish-frame` `[metadata, "<base64 JPEG>"]`, as the DLSPS
    /// documentation describes.
    #[default]
    #[enum_value(
        name = "Array: the metadata, or with publish-frame [metadata, \"<base64 JPEG>\"]",
        nick = "array"
    )]
    Array,
    /// Always `{"metadata": .., "blob": "<base64 JPEG>" or ""}`, the envelope the DLSPS code
    /// sends, around the gvametaconvert metadata.
    #[enum_value(
        name = "Object: {\"metadata\": .., \"blob\": \"<base64 JPEG>\" or \"\"}",
        nick = "object"
    )]
    Object,
    /// What DLSPS itself publishes: the `object` envelope around DLSPS's metadata (its
    /// frame, pipeline and `gva_meta` keys besides the gvametaconvert ones).
    #[enum_value(
        name = "DLSPS: {\"metadata\": <DLSPS metadata>, \"blob\": \"<base64 JPEG>\" or \"\"}",
        nick = "dlsps"
    )]
    Dlsps,
}

/// Where the published metadata comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMqttPublishMetadataSource")]
pub enum MetadataSource {
    /// The JSON DL Streamer's gvametaconvert attached (GstGVAJSONMeta), as gvametapublish
    /// sends it, when the buffer carries it; otherwise built from the metas.
    #[default]
    #[enum_value(
        name = "Auto: gvametaconvert's JSON when the buffer carries it, else built from the metas",
        nick = "auto"
    )]
    Auto,
    /// Always built from the region-of-interest metas.
    #[enum_value(name = "Metas: always built from the metas", nick = "metas")]
    Metas,
}

/// What to do when the queue is full: GStreamer `queue`'s words for it, and `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMqttPublishLeaky")]
pub enum Leaky {
    #[enum_value(
        name = "No: wait for room, blocking the pipeline (lossless)",
        nick = "no"
    )]
    No = 0,
    #[enum_value(name = "Upstream: drop the new message", nick = "upstream")]
    Upstream = 1,
    #[enum_value(
        name = "Downstream: drop the oldest queued message",
        nick = "downstream"
    )]
    Downstream = 2,
    #[default]
    #[enum_value(
        name = "Auto: wait for room when the upstream is not live, drop the oldest when it is",
        nick = "auto"
    )]
    Auto = 3,
    /// The name `no` had before; reads back as `no`.
    #[enum_value(name = "None: the same as no", nick = "none")]
    None = 4,
}

/// When spooled messages are flushed to the disk (see `spool-sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMqttPublishSpoolSync")]
pub enum SpoolSync {
    #[default]
    #[enum_value(
        name = "Interval: every spool-sync-interval (a power loss loses at most that much)",
        nick = "interval"
    )]
    Interval,
    #[enum_value(
        name = "Always: after every message (survives a power loss, one disk flush each)",
        nick = "always"
    )]
    Always,
    #[enum_value(
        name = "None: when the kernel chooses (survives the process dying, not a power loss)",
        nick = "none"
    )]
    None,
}

impl From<Leaky> for crate::mqtt::Leaky {
    fn from(leaky: Leaky) -> Self {
        match leaky {
            Leaky::No | Leaky::None => crate::mqtt::Leaky::No,
            Leaky::Upstream => crate::mqtt::Leaky::Upstream,
            Leaky::Downstream => crate::mqtt::Leaky::Downstream,
            Leaky::Auto => crate::mqtt::Leaky::Auto,
        }
    }
}

glib::wrapper! {
    pub struct MqttPublish(ObjectSubclass<imp::MqttPublish>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    for enum_type in [
        Leaky::static_type(),
        SpoolSync::static_type(),
        MessageFormat::static_type(),
        MetadataSource::static_type(),
    ] {
        enum_type.mark_as_plugin_api(gst::PluginAPIFlags::empty());
    }
    gst::Element::register(
        Some(plugin),
        "mqttpublish",
        gst::Rank::NONE,
        MqttPublish::static_type(),
    )
}
