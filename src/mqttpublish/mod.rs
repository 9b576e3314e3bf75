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

mod imp;
mod message;
mod settings;

/// The shape of a message that carries a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMqttPublishMessageFormat")]
pub enum MessageFormat {
    /// `[metadata, "<base64 JPEG>"]`, as the DLSPS documentation describes.
    #[default]
    #[enum_value(name = "Array: [metadata, \"<base64 JPEG>\"]", nick = "array")]
    Array,
    /// `{"metadata": .., "blob": ".."}`, as the DLSPS code sends.
    #[enum_value(
        name = "Object: {\"metadata\": .., \"blob\": \"<base64 JPEG>\"}",
        nick = "object"
    )]
    Object,
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
