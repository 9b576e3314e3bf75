// SPDX-License-Identifier: MPL-2.0

//! `mqttpublish`: publishes the analytics metadata of each buffer (gvametaconvert JSON),
//! optionally with the frame as base64 JPEG, to an MQTT broker.
//!
//! ```text
//! gst-launch-1.0 videotestsrc num-buffers=300 ! video/x-raw,width=640,height=480 \
//!     ! metareplay location=pipelines/sample.jsonl ! mqttpublish host=127.0.0.1 publish-frame=true
//! ```
//!
//! The streaming thread only builds the message and queues it; a worker thread owns the
//! connection (see [`crate::mqtt`]), so a slow or absent broker never holds up live video;
//! a source that is not live (a file) waits for room in the queue instead of losing messages.

use gst::glib;
use gst::prelude::*;

mod attached;
mod imp;
mod message;
mod settings;

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

glib::wrapper! {
    pub struct MqttPublish(ObjectSubclass<imp::MqttPublish>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "mqttpublish",
        gst::Rank::NONE,
        MqttPublish::static_type(),
    )
}
