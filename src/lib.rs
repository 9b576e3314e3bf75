// SPDX-License-Identifier: MPL-2.0

//! GStreamer plugin for MQTT publishing of analytics metadata.
//!
//! - `metafilter` removes detections and classifications below per-label thresholds.
//! - `metareplay` attaches recorded detections (gvametaconvert JSON lines) to buffers.

use gst::glib;

pub mod config;
pub mod filter;
pub mod jpeg;
pub mod meta;
mod metafilter;
mod metareplay;
pub mod mqtt;
mod mqttpublish;

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
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
