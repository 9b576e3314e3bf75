// SPDX-License-Identifier: MPL-2.0

//! `metafilter`: removes detections and classification results whose confidence is below
//! a per-label threshold from the metadata of the buffers passing through.
//!
//! ```text
//! gst-launch-1.0 videotestsrc ! metareplay location=pipelines/sample.jsonl \
//!     ! metafilter label-score='{"box":0.4,"shipping label":0.4}' threshold=0.2 ! fakesink
//! ```

use gst::glib;
use gst::prelude::*;

use crate::filter::FilterType;

mod imp;

glib::wrapper! {
    pub struct MetaFilter(ObjectSubclass<imp::MetaFilter>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    FilterType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "metafilter",
        gst::Rank::NONE,
        MetaFilter::static_type(),
    )
}
