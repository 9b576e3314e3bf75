// SPDX-License-Identifier: MPL-2.0

//! The JSON that DL Streamer's `gvametaconvert` attaches to buffers: a custom meta whose API
//! type is registered as `GstGVAJSONMetaAPI` (implementation `GstGVAJSONMeta`), laid out as
//! `{ GstMeta meta; gchar *message; }` with a JSON object as text (DL Streamer's public
//! header `gva_json_meta.h`).
//!
//! The API type is looked up by name, so nothing links to DL Streamer. When no DL Streamer
//! library registered it, [`attach`] registers the same name and layout (tag
//! `gva_json_meta`, the message copied on every transform, freed with the meta), so that
//! replayed recordings exercise the same path.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use gst::glib;

use super::gva_meta::{self, Registration};

const API_NAME: &CStr = c"GstGVAJSONMetaAPI";
const IMPL_NAME: &CStr = c"GstGVAJSONMeta";
const TAG: &CStr = c"gva_json_meta";

/// `GstGVAJSONMeta` as DL Streamer lays it out.
#[repr(C)]
struct GvaJsonMeta {
    meta: gst::ffi::GstMeta,
    message: *mut c_char,
}

/// The API type, when a library (DL Streamer, or [`attach`]) registered it.
fn api_type() -> Option<glib::Type> {
    static API: gva_meta::ApiType = gva_meta::ApiType::new(API_NAME);
    API.get()
}

/// The JSON texts attached to `buffer`, in the order they were attached (one per
/// `gvametaconvert`). Messages that are not UTF-8 are returned lossily converted.
pub fn json_messages(buffer: &gst::BufferRef) -> Vec<String> {
    let Some(api) = api_type() else {
        return Vec::new();
    };
    buffer
        .iter_meta::<gst::Meta>()
        .filter(|meta| meta.api() == api)
        .filter_map(|meta| {
            // SAFETY: every meta of this API type has DL Streamer's layout.
            let message = unsafe { (*(meta.as_ptr() as *const GvaJsonMeta)).message };
            (!message.is_null())
                // SAFETY: a NUL-terminated string owned by the meta, alive as the buffer.
                .then(|| {
                    unsafe { CStr::from_ptr(message) }
                        .to_string_lossy()
                        .into_owned()
                })
        })
        .collect()
}

/// Replaces the text of each JSON meta on `buffer` for which `rewrite` returns a new one.
pub fn rewrite_json_messages(
    buffer: &mut gst::BufferRef,
    mut rewrite: impl FnMut(&str) -> Option<String>,
) {
    let Some(api) = api_type() else {
        return;
    };
    for mut meta in buffer.iter_meta_mut::<gst::Meta>() {
        if meta.api() != api {
            continue;
        }
        let meta = meta.as_mut_ptr() as *mut GvaJsonMeta;
        // SAFETY: DL Streamer's layout; the buffer is writable, so the meta is ours to change.
        unsafe {
            if (*meta).message.is_null() {
                continue;
            }
            let text = CStr::from_ptr((*meta).message).to_string_lossy();
            if let Some(new) = rewrite(&text).and_then(|new| CString::new(new).ok()) {
                glib::ffi::g_free((*meta).message as glib::ffi::gpointer);
                (*meta).message = glib::ffi::g_strdup(new.as_ptr());
            }
        }
    }
}

/// Attaches `message` (a JSON object as text) as a `GstGVAJSONMeta`, as gvametaconvert does.
/// Returns false when the text holds a NUL byte.
pub fn attach(buffer: &mut gst::BufferRef, message: &str) -> bool {
    let Ok(message) = CString::new(message) else {
        return false;
    };
    // SAFETY: the info describes DL Streamer's layout; init left `message` NULL.
    unsafe {
        let meta = gst::ffi::gst_buffer_add_meta(buffer.as_mut_ptr(), meta_info(), ptr::null_mut())
            as *mut GvaJsonMeta;
        if meta.is_null() {
            return false;
        }
        (*meta).message = glib::ffi::g_strdup(message.as_ptr());
    }
    true
}

/// The meta's info: DL Streamer's registration when it exists, else ours.
fn meta_info() -> *const gst::ffi::GstMetaInfo {
    static INFO: once_cell::sync::OnceCell<usize> = once_cell::sync::OnceCell::new();
    // SAFETY: the size and functions of DL Streamer's layout.
    *INFO.get_or_init(|| unsafe {
        gva_meta::info(&Registration {
            api: API_NAME,
            implementation: IMPL_NAME,
            tags: &[TAG],
            size: std::mem::size_of::<GvaJsonMeta>(),
            init: Some(init),
            free: Some(free),
            transform: Some(transform),
        }) as usize
    }) as *const gst::ffi::GstMetaInfo
}

unsafe extern "C" fn init(
    meta: *mut gst::ffi::GstMeta,
    _params: glib::ffi::gpointer,
    _buffer: *mut gst::ffi::GstBuffer,
) -> glib::ffi::gboolean {
    (*(meta as *mut GvaJsonMeta)).message = ptr::null_mut();
    glib::ffi::GTRUE
}

unsafe extern "C" fn free(meta: *mut gst::ffi::GstMeta, _buffer: *mut gst::ffi::GstBuffer) {
    let meta = meta as *mut GvaJsonMeta;
    glib::ffi::g_free((*meta).message as glib::ffi::gpointer);
    (*meta).message = ptr::null_mut();
}

/// Copies the message to the new buffer on every transform, as DL Streamer does.
unsafe extern "C" fn transform(
    dest: *mut gst::ffi::GstBuffer,
    meta: *mut gst::ffi::GstMeta,
    _src: *mut gst::ffi::GstBuffer,
    _type: glib::ffi::GQuark,
    _data: glib::ffi::gpointer,
) -> glib::ffi::gboolean {
    let src = meta as *mut GvaJsonMeta;
    let info = (*meta).info;
    let copy = gst::ffi::gst_buffer_add_meta(dest, info, ptr::null_mut()) as *mut GvaJsonMeta;
    if copy.is_null() {
        return glib::ffi::GFALSE;
    }
    (*copy).message = glib::ffi::g_strdup((*src).message);
    glib::ffi::GTRUE
}

/// Whether the API type carries the tag DL Streamer gives it (used by tests).
#[cfg(test)]
fn has_tag() -> bool {
    use gst::glib::translate::{from_glib, IntoGlib};
    api_type().is_some_and(|api| unsafe {
        from_glib(gst::ffi::gst_meta_api_type_has_tag(
            api.into_glib(),
            glib::ffi::g_quark_from_static_string(TAG.as_ptr()),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_messages_are_read_back_copied_and_rewritten() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::with_size(4).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            assert!(attach(b, r#"{"objects":[],"timestamp":1}"#));
            assert!(attach(b, r#"{"tensors":[]}"#));
            assert!(!attach(b, "nul\0inside"));
        }
        assert!(has_tag());
        assert_eq!(
            json_messages(&buffer),
            [r#"{"objects":[],"timestamp":1}"#, r#"{"tensors":[]}"#]
        );
        // A copy carries its own message.
        let mut copy = buffer.copy();
        rewrite_json_messages(copy.get_mut().unwrap(), |text| {
            text.contains("tensors").then(|| "{}".to_string())
        });
        assert_eq!(
            json_messages(&copy),
            [r#"{"objects":[],"timestamp":1}"#, "{}"]
        );
        assert_eq!(json_messages(&buffer)[1], r#"{"tensors":[]}"#);
    }
}
