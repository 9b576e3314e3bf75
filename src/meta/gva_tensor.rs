// SPDX-License-Identifier: MPL-2.0

//! The tensor meta DL Streamer's `gvainference` and `gvaclassify inference-region=full-frame`
//! attach to frames: a custom meta whose API type is registered as `GstGVATensorMetaAPI`
//! (implementation `GstGVATensorMeta`, no tags), laid out as `{ GstMeta meta; GstStructure
//! *data; }` (DL Streamer's public header `gva_tensor_meta.h`). The structure holds the
//! inference result: `precision` and `layout` (ints), `dims` (an array of uints),
//! `layer_name`, `model_name`, the raw output in `data_buffer` (a byte-array GVariant, with
//! `data` pointing into it), and for classifications `label`, `label_id`, `confidence` and
//! `type = "classification_result"`.
//!
//! The API type is looked up by name, so nothing links to DL Streamer. When no DL Streamer
//! library registered it, [`attach`] registers the same names and layout (an empty `meta`
//! structure at init, the structure copied on every transform and freed with the meta), so
//! that replayed recordings go through the same path as live inference.

use std::ffi::CStr;
use std::ops::ControlFlow;
use std::ptr;

use gst::buffer::BufferMetaForeachAction;
use gst::glib;
use gst::glib::translate::{IntoGlibPtr, ToGlibPtr};
use gst::glib::value::ToValue;
use once_cell::sync::Lazy;

use super::frame::Tensor;
use super::gva_meta::{self, Registration};
use super::roi::{confidence, integer, string};
use super::CAT;

const API_NAME: &CStr = c"GstGVATensorMetaAPI";
const IMPL_NAME: &CStr = c"GstGVATensorMeta";

/// `GstGVATensorMeta` as DL Streamer lays it out.
#[repr(C)]
struct GvaTensorMeta {
    meta: gst::ffi::GstMeta,
    data: *mut gst::ffi::GstStructure,
}

/// The API type, when a library (DL Streamer, or [`attach`]) registered it.
fn api_type() -> Option<glib::Type> {
    static API: gva_meta::ApiType = gva_meta::ApiType::new(API_NAME);
    API.get()
}

/// The fields read from every tensor, as quarks.
struct Fields {
    attribute_name: glib::Quark,
    kind: glib::Quark,
    precision: glib::Quark,
    layout: glib::Quark,
    model_name: glib::Quark,
    layer_name: glib::Quark,
    format: glib::Quark,
    label: glib::Quark,
    label_id: glib::Quark,
    confidence: glib::Quark,
}

static FIELDS: Lazy<Fields> = Lazy::new(|| Fields {
    attribute_name: glib::Quark::from_str("attribute_name"),
    kind: glib::Quark::from_str("type"),
    precision: glib::Quark::from_str("precision"),
    layout: glib::Quark::from_str("layout"),
    model_name: glib::Quark::from_str("model_name"),
    layer_name: glib::Quark::from_str("layer_name"),
    format: glib::Quark::from_str("format"),
    label: glib::Quark::from_str("label"),
    label_id: glib::Quark::from_str("label_id"),
    confidence: glib::Quark::from_str("confidence"),
});

/// Reads one tensor structure; `with_data` copies the raw output too, or says in `unreadable`
/// why it cannot.
fn read_tensor(
    s: &gst::StructureRef,
    with_data: bool,
    invalid: &mut u32,
    unreadable: &mut Vec<String>,
) -> Tensor {
    let f = &*FIELDS;
    let data = match with_data.then(|| data(s)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(bytes))) => Some(bytes),
        Some(Err(why)) => {
            gst::debug!(CAT, "Tensor {}: {why}", s.name());
            unreadable.push(format!("{}: {why}", s.name()));
            None
        }
    };
    let int = |name| integer(s, name).and_then(|v| i32::try_from(v).ok());
    Tensor {
        name: s.name().to_string(),
        attribute_name: string(s, f.attribute_name),
        kind: string(s, f.kind),
        precision: int(f.precision),
        layout: int(f.layout),
        dims: s.has_field("dims").then(|| dims(s)),
        model_name: string(s, f.model_name),
        layer_name: string(s, f.layer_name),
        format: string(s, f.format),
        label: string(s, f.label),
        label_id: int(f.label_id),
        confidence: confidence(s, f.confidence, invalid),
        data,
    }
}

/// `dims`: DL Streamer sets it with `gst_structure_set_array` (a `GstValueArray` of uints)
/// and reads it with `gst_structure_get_array`, which takes nothing else.
fn dims(s: &gst::StructureRef) -> Vec<u32> {
    let Ok(array) = s.get::<gst::Array>("dims") else {
        return Vec::new();
    };
    array
        .iter()
        .map(|v| {
            v.get::<u32>()
                .ok()
                .or_else(|| v.get::<i32>().ok().and_then(|v| u32::try_from(v).ok()))
                .unwrap_or(0)
        })
        .collect()
}

/// The bytes of `data_buffer`, a GVariant byte array; `None` without one.
fn data(s: &gst::StructureRef) -> Result<Option<Vec<u8>>, String> {
    if !s.has_field("data_buffer") {
        return Ok(None);
    }
    let variant = s
        .get::<glib::Variant>("data_buffer")
        .map_err(|_| "its data_buffer is not a GVariant".to_owned())?;
    match variant.fixed_array::<u8>() {
        Ok(bytes) => Ok(Some(bytes.to_vec())),
        Err(_) => Err(format!(
            "its data_buffer is a GVariant of type {}, not a byte array",
            variant.type_()
        )),
    }
}

/// Calls `f` with the structure of each tensor meta on `buffer`, in the order attached.
fn for_each_structure(buffer: &gst::BufferRef, mut f: impl FnMut(&gst::StructureRef)) {
    let Some(api) = api_type() else {
        return;
    };
    for meta in buffer.iter_meta::<gst::Meta>() {
        if meta.api() != api {
            continue;
        }
        // SAFETY: every meta of this API type has DL Streamer's layout; the structure is
        // owned by the meta, which lives as long as the buffer borrowed here.
        unsafe {
            let data = (*(meta.as_ptr() as *const GvaTensorMeta)).data;
            if !data.is_null() {
                f(gst::StructureRef::from_glib_borrow(data));
            }
        }
    }
}

/// The tensors on `buffer`, in the order they were attached. `invalid` counts the
/// confidences read as none (NaN, infinite or outside 0..1); `unreadable` gets, for each
/// tensor whose raw output was asked for and cannot be read, its name and why.
pub fn read(
    buffer: &gst::BufferRef,
    with_data: bool,
    invalid: &mut u32,
    unreadable: &mut Vec<String>,
) -> Vec<Tensor> {
    let mut tensors = Vec::new();
    for_each_structure(buffer, |s| {
        tensors.push(read_tensor(s, with_data, invalid, unreadable))
    });
    tensors
}

/// Removes from `buffer` every tensor meta for which `keep` returns false; returns how many
/// were removed.
pub fn retain(buffer: &mut gst::BufferRef, mut keep: impl FnMut(&Tensor) -> bool) -> u32 {
    let Some(api) = api_type() else {
        return 0;
    };
    let mut removed = 0;
    let mut invalid = 0;
    buffer.foreach_meta_mut(|meta| {
        if meta.api() != api {
            return ControlFlow::Continue(BufferMetaForeachAction::Keep);
        }
        // SAFETY: as in `for_each_structure`.
        let data = unsafe { (*(meta.as_ptr() as *const GvaTensorMeta)).data };
        if data.is_null() {
            return ControlFlow::Continue(BufferMetaForeachAction::Keep);
        }
        let tensor = read_tensor(
            unsafe { gst::StructureRef::from_glib_borrow(data) },
            false,
            &mut invalid,
            &mut Vec::new(),
        );
        if keep(&tensor) {
            ControlFlow::Continue(BufferMetaForeachAction::Keep)
        } else {
            removed += 1;
            ControlFlow::Continue(BufferMetaForeachAction::Remove)
        }
    });
    removed
}

/// The structure `gvainference`/`gvaclassify` would have attached for `tensor`.
fn structure(tensor: &Tensor) -> gst::Structure {
    let name = if tensor.name.is_empty() {
        "meta"
    } else {
        tensor.name.as_str()
    };
    let mut s = gst::Structure::new_empty(name);
    if let Some(v) = &tensor.attribute_name {
        s.set("attribute_name", v.as_str());
    }
    if let Some(v) = tensor.precision {
        s.set("precision", v);
    }
    if let Some(v) = tensor.layout {
        s.set("layout", v);
    }
    if let Some(dims) = &tensor.dims {
        s.set("dims", gst::Array::new(dims.iter().copied()));
    }
    for (field, value) in [
        ("model_name", &tensor.model_name),
        ("layer_name", &tensor.layer_name),
        ("format", &tensor.format),
        ("label", &tensor.label),
    ] {
        if let Some(value) = value {
            s.set(field, value.as_str());
        }
    }
    if let Some(v) = tensor.label_id {
        s.set("label_id", v);
    }
    if let Some(v) = tensor.confidence {
        s.set("confidence", v);
    }
    if let Some(kind) = &tensor.kind {
        s.set("type", kind.as_str());
    }
    if let Some(data) = &tensor.data {
        let variant = glib::Variant::array_from_fixed_array(data.as_slice());
        // `data` points into the variant's bytes, as DL Streamer's `set_data` sets it; the
        // structure keeps the variant alive.
        let pointer = variant
            .fixed_array::<u8>()
            .map_or(ptr::null(), <[u8]>::as_ptr) as glib::Pointer;
        s.set("data_buffer", variant);
        let pointer = pointer.to_value();
        // SAFETY: the structure is ours; a pointer value is copied as it is.
        unsafe {
            gst::ffi::gst_structure_set_value(
                s.as_mut_ptr(),
                c"data".as_ptr(),
                pointer.to_glib_none().0,
            );
        }
    }
    s
}

/// Attaches `tensor` as a `GstGVATensorMeta`, as `gvainference`/`gvaclassify` do. Returns
/// false when the meta could not be added.
pub fn attach(buffer: &mut gst::BufferRef, tensor: &Tensor) -> bool {
    let s = structure(tensor);
    // SAFETY: the info describes DL Streamer's layout; init left an empty structure, which
    // the meta owns and is replaced here.
    unsafe {
        let meta = gst::ffi::gst_buffer_add_meta(buffer.as_mut_ptr(), meta_info(), ptr::null_mut())
            as *mut GvaTensorMeta;
        if meta.is_null() {
            return false;
        }
        if !(*meta).data.is_null() {
            gst::ffi::gst_structure_free((*meta).data);
        }
        (*meta).data = s.into_glib_ptr();
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
            // DL Streamer registers it without tags.
            tags: &[],
            size: std::mem::size_of::<GvaTensorMeta>(),
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
    (*(meta as *mut GvaTensorMeta)).data = gst::ffi::gst_structure_new_empty(c"meta".as_ptr());
    glib::ffi::GTRUE
}

unsafe extern "C" fn free(meta: *mut gst::ffi::GstMeta, _buffer: *mut gst::ffi::GstBuffer) {
    let meta = meta as *mut GvaTensorMeta;
    if !(*meta).data.is_null() {
        gst::ffi::gst_structure_free((*meta).data);
        (*meta).data = ptr::null_mut();
    }
}

/// Copies the structure to the new buffer on every transform, as DL Streamer does.
unsafe extern "C" fn transform(
    dest: *mut gst::ffi::GstBuffer,
    meta: *mut gst::ffi::GstMeta,
    _src: *mut gst::ffi::GstBuffer,
    _type: glib::ffi::GQuark,
    _data: glib::ffi::gpointer,
) -> glib::ffi::gboolean {
    let src = meta as *mut GvaTensorMeta;
    let copy =
        gst::ffi::gst_buffer_add_meta(dest, (*meta).info, ptr::null_mut()) as *mut GvaTensorMeta;
    if copy.is_null() {
        return glib::ffi::GFALSE;
    }
    if !(*copy).data.is_null() {
        gst::ffi::gst_structure_free((*copy).data);
    }
    (*copy).data = if (*src).data.is_null() {
        ptr::null_mut()
    } else {
        gst::ffi::gst_structure_copy((*src).data)
    };
    glib::ffi::GTRUE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::frame::CLASSIFICATION_RESULT;

    fn scene() -> Tensor {
        Tensor {
            name: "scene".into(),
            kind: Some(CLASSIFICATION_RESULT.into()),
            precision: Some(10),
            layout: Some(193),
            dims: Some(vec![1, 2]),
            model_name: Some("scene-net".into()),
            layer_name: Some("prob".into()),
            label: Some("indoor".into()),
            label_id: Some(0),
            confidence: Some(0.875),
            data: Some(
                [0.875f32, 0.125]
                    .iter()
                    .flat_map(|v| v.to_ne_bytes())
                    .collect(),
            ),
            ..Tensor::default()
        }
    }

    #[test]
    fn attached_tensors_read_back_copy_with_the_buffer_and_are_removed() {
        gst::init().unwrap();
        let raw = Tensor {
            name: "inference_layer_name:prob".into(),
            precision: Some(40),
            dims: Some(vec![3]),
            data: Some(vec![1, 2, 3]),
            ..Tensor::default()
        };
        let mut buffer = gst::Buffer::with_size(4).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            assert!(attach(b, &raw));
            assert!(attach(b, &scene()));
        }
        let mut invalid = 0;
        let mut unreadable = Vec::new();
        assert_eq!(
            read(&buffer, true, &mut invalid, &mut unreadable),
            [raw.clone(), scene()]
        );
        assert!(unreadable.is_empty(), "{unreadable:?}");
        let without_data = read(&buffer, false, &mut invalid, &mut unreadable);
        assert_eq!(without_data[0].data, None);
        assert_eq!(invalid, 0);
        // The `data` pointer DL Streamer's C readers use points at the bytes.
        for_each_structure(&buffer, |s| {
            let pointer = s.get::<glib::Pointer>("data").unwrap();
            let variant = s.get::<glib::Variant>("data_buffer").unwrap();
            let bytes = variant.fixed_array::<u8>().unwrap();
            assert_eq!(pointer as *const u8, bytes.as_ptr());
        });

        let mut copy = buffer.copy();
        let removed = retain(copy.get_mut().unwrap(), |t| t.label.is_none());
        assert_eq!(removed, 1);
        assert_eq!(read(&copy, true, &mut invalid, &mut unreadable), [raw]);
        assert_eq!(
            read(&buffer, true, &mut invalid, &mut unreadable).len(),
            2,
            "the original keeps both"
        );
    }

    #[test]
    fn wrong_field_types_are_read_as_absent() {
        gst::init().unwrap();
        let s = gst::Structure::builder("classification_layer_name:prob")
            .field("label", 3i32)
            .field("confidence", 7.0f64)
            .field("dims", "1x2")
            .field("data_buffer", glib::Variant::from("not bytes"))
            .build();
        let mut invalid = 0;
        let mut unreadable = Vec::new();
        let t = read_tensor(&s, true, &mut invalid, &mut unreadable);
        assert_eq!(t.label, None);
        assert_eq!(t.confidence, None);
        assert_eq!(invalid, 1);
        assert_eq!(
            t.dims,
            Some(Vec::new()),
            "a dims field that is not an array"
        );
        assert_eq!(t.data, None);
        assert_eq!(
            unreadable,
            [
                "classification_layer_name:prob: its data_buffer is a GVariant of type s, not a \
              byte array"
            ]
        );
        // Not asked for, the data is not looked at.
        read_tensor(&s, false, &mut invalid, &mut unreadable);
        assert_eq!(unreadable.len(), 1);
    }
}
