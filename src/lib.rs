// SPDX-License-Identifier: MPL-2.0

//! GStreamer plugin that gets video-analytics results out of a pipeline and onto an MQTT
//! broker.
//!
//! - `metafilter` removes detections and classifications below per-label thresholds.
//! - `metareplay` attaches recorded detections (gvametaconvert JSON lines) to buffers.
//! - `mqttpublish` publishes each buffer's metadata as gvametaconvert JSON, optionally with
//!   the frame as base64 JPEG, to an MQTT broker.
//!
//! Code shared by the elements lives in modules named for what it is: `meta` (the metadata
//! model), `filter` (confidence thresholds), `config` (DLSPS configuration files), `mqtt`
//! (the connection), `jpeg` (frame encoding), `tls` (TLS files), `pipeline` (the GStreamer
//! pipeline an element is in) and `error` (setting errors and their GStreamer error
//! domains).

use gst::glib;

mod config;
mod error;
mod filter;
mod jpeg;
mod meta;
mod metafilter;
mod metareplay;
mod mqtt;
mod mqttpublish;
mod pipeline;
mod spool;
mod tls;

/// What the project's own fuzz targets, integration tests and benchmarks drive directly:
/// the parsers of user input, the metadata model and the JPEG encoder. Not a stable API;
/// applications use the elements.
#[doc(hidden)]
pub mod internals {
    pub use crate::config::{
        section as config_section, Pick as ConfigPick, PublisherConfig, Section as ConfigSection,
    };
    pub use crate::filter::{filter_config_from_value, parse_label_score};
    pub use crate::jpeg::{is_supported, JpegEncoder, JpegError, SUPPORTED_FORMATS};
    pub use crate::meta::{
        attach_json_message, json_messages, parse_frame_line, write_frame_json, BoundingBox,
        Classification, Detection, FrameContext, FrameResults, Object, RecordedFrame, Tensor,
    };
    /// Reading and attaching objects, for `examples/meta_read_bench.rs`.
    pub use crate::meta::{attach_objects, read_objects};
    /// The connection runtime all `mqttpublish` of a process share, for `tests/runtime.rs`.
    pub use crate::mqtt::{
        connection_tasks, CONNECTION_THREADS_ENV, CONNECTION_THREAD_NAME,
        DEFAULT_CONNECTION_THREADS,
    };
    /// Building a message as `mqttpublish` does, for `examples/message_build_bench.rs`.
    pub use crate::mqttpublish::{
        Assembler, Input as MessageInput, MessageFormat, MessageOptions, MetadataSource,
    };
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    metafilter::register(plugin)?;
    metareplay::register(plugin)?;
    mqttpublish::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    analyticsmqtt,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    // GStreamer refuses a plugin without an origin; the project has no public address.
    env!("CARGO_PKG_NAME"),
    env!("BUILD_REL_DATE")
);
