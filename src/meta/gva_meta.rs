// SPDX-License-Identifier: MPL-2.0

//! DL Streamer's custom metas (the JSON meta of `gvametaconvert`, the tensor meta of
//! `gvainference`/`gvaclassify`), found by the names DL Streamer registers them under, so that
//! nothing links to DL Streamer, and registered under the same names and layout when no DL
//! Streamer library did.

use std::ffi::CStr;
use std::ptr;

use gst::glib;
use gst::glib::translate::IntoGlib;

/// A custom meta as DL Streamer registers it.
pub(super) struct Registration {
    /// The API type's name, e.g. `GstGVATensorMetaAPI`.
    pub api: &'static CStr,
    /// The implementation's name, e.g. `GstGVATensorMeta`.
    pub implementation: &'static CStr,
    pub tags: &'static [&'static CStr],
    /// The size of the meta's struct, and its functions.
    pub size: usize,
    pub init: gst::ffi::GstMetaInitFunction,
    pub free: gst::ffi::GstMetaFreeFunction,
    pub transform: gst::ffi::GstMetaTransformFunction,
}

/// The API type, when a library (DL Streamer, or [`info`]) registered it.
pub(super) fn api_type(api: &CStr) -> Option<glib::Type> {
    glib::Type::from_name(api.to_str().ok()?)
}

/// An API type looked up by its name on every buffer, kept once found: a registered type
/// stays registered, while a lookup by name takes GLib's type lock and hashes the name.
pub(super) struct ApiType {
    name: &'static CStr,
    found: once_cell::sync::OnceCell<glib::Type>,
}

impl ApiType {
    pub const fn new(name: &'static CStr) -> Self {
        ApiType {
            name,
            found: once_cell::sync::OnceCell::new(),
        }
    }

    /// The type, when a library registered it (looked up again until one has).
    pub fn get(&self) -> Option<glib::Type> {
        if let Some(found) = self.found.get() {
            return Some(*found);
        }
        let found = api_type(self.name)?;
        Some(*self.found.get_or_init(|| found))
    }
}

/// The meta's info: DL Streamer's registration when it exists, else one made from `r`.
///
/// # Safety
/// `r.size` and `r.init`, `r.free`, `r.transform` must describe DL Streamer's layout of the
/// meta, as every reader of the API type assumes it.
pub(super) unsafe fn info(r: &Registration) -> *const gst::ffi::GstMetaInfo {
    let existing = gst::ffi::gst_meta_get_info(r.implementation.as_ptr());
    if !existing.is_null() {
        return existing;
    }
    let api = match api_type(r.api) {
        Some(api) => api.into_glib(),
        None => {
            let mut tags: Vec<*const std::ffi::c_char> =
                r.tags.iter().map(|t| t.as_ptr()).collect();
            tags.push(ptr::null());
            gst::ffi::gst_meta_api_type_register(r.api.as_ptr(), tags.as_mut_ptr())
        }
    };
    gst::ffi::gst_meta_register(
        api,
        r.implementation.as_ptr(),
        r.size,
        r.init,
        r.free,
        r.transform,
    )
}
