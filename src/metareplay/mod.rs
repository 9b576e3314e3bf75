// SPDX-License-Identifier: MPL-2.0

//! `metareplay`: attaches recorded detections to the buffers passing through.
//!
//! The recording is a JSON-lines file of gvametaconvert objects, as written by DL
//! Streamer's `gvametapublish method=file file-format=json-lines`. The objects become
//! region-of-interest metas laid out exactly as `gvadetect`/`gvaclassify` lay them out, and
//! the frame-level results (the full-frame object, `tensors`) the tensor metas of
//! `gvainference`/`gvaclassify inference-region=full-frame`, so downstream elements cannot
//! tell a replay from live inference.
//!
//! ```text
//! gst-launch-1.0 videotestsrc num-buffers=300 ! video/x-raw,width=640,height=480 \
//!     ! metareplay location=pipelines/sample.jsonl ! metafilter threshold=0.5 ! fakesink
//! ```

use gst::glib;
use gst::prelude::*;

mod imp;

/// How recorded lines are matched to buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMetaReplayMatch")]
pub enum ReplayMatch {
    /// Line N goes to the Nth buffer.
    #[default]
    #[enum_value(name = "Index: line N is attached to the Nth buffer", nick = "index")]
    Index,
    /// The line whose `timestamp` equals the buffer's stream time (within half a frame).
    #[enum_value(
        name = "Timestamp: the line whose timestamp is the buffer's stream time",
        nick = "timestamp"
    )]
    Timestamp,
}

glib::wrapper! {
    pub struct MetaReplay(ObjectSubclass<imp::MetaReplay>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    ReplayMatch::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "metareplay",
        gst::Rank::NONE,
        MetaReplay::static_type(),
    )
}
