// SPDX-License-Identifier: MPL-2.0

//! The GStreamer pipeline an element is in.

use gst::prelude::*;

/// The outermost bin holding `element`, or the element itself when it is in none: the
/// GStreamer pipeline. Its name picks the `config.json` entry when `config-pipeline` is not
/// set; `mqttpublish` also looks in it for the `jpegenc` that made its frames.
pub fn outermost_bin(element: &gst::Object) -> gst::Object {
    let mut top = element.clone();
    while let Some(parent) = top.parent() {
        top = parent;
    }
    top
}
