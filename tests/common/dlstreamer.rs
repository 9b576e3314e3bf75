// SPDX-License-Identifier: MPL-2.0

//! DL Streamer's frame tensor meta as its inference elements attach it, made here without the
//! plugin's code: `GstGVATensorMeta` registered by name and layout as DL Streamer's
//! `gva_tensor_meta.c` (v2025.2.0) registers it, and structures built field by field as
//! `gvainference` (`raw_data_copy.cpp`, `copy_blob_to_gststruct.cpp`) and `gvaclassify
//! inference-region=full-frame` (`label.cpp`, the `max` method; `blob_to_meta_converter.cpp`
//! for the names; `meta_attacher.cpp` for `element_id`) build them.

use std::ffi::CStr;
use std::ptr;

use gst::glib;
use gst::glib::translate::{IntoGlib, IntoGlibPtr, ToGlibPtr};
use gst::glib::value::ToValue;

const API_NAME: &str = "GstGVATensorMetaAPI";
const IMPL_NAME: &CStr = c"GstGVATensorMeta";

/// `GVAPrecision` and `GVALayout` codes (`gva_tensor_meta.h`).
pub const FP32: i32 = 10;
pub const U8: i32 = 40;
pub const LAYOUT_ANY: i32 = 0;
pub const LAYOUT_NC: i32 = 193;

#[repr(C)]
struct GstGvaTensorMeta {
    meta: gst::ffi::GstMeta,
    data: *mut gst::ffi::GstStructure,
}

unsafe extern "C" fn init(
    meta: *mut gst::ffi::GstMeta,
    _params: glib::ffi::gpointer,
    _buffer: *mut gst::ffi::GstBuffer,
) -> glib::ffi::gboolean {
    (*(meta as *mut GstGvaTensorMeta)).data = gst::ffi::gst_structure_new_empty(c"meta".as_ptr());
    glib::ffi::GTRUE
}

unsafe extern "C" fn free(meta: *mut gst::ffi::GstMeta, _buffer: *mut gst::ffi::GstBuffer) {
    let meta = meta as *mut GstGvaTensorMeta;
    if !(*meta).data.is_null() {
        gst::ffi::gst_structure_remove_all_fields((*meta).data);
        gst::ffi::gst_structure_free((*meta).data);
        (*meta).data = ptr::null_mut();
    }
}

unsafe extern "C" fn transform(
    dest: *mut gst::ffi::GstBuffer,
    src: *mut gst::ffi::GstMeta,
    _src_buffer: *mut gst::ffi::GstBuffer,
    _type: glib::ffi::GQuark,
    _data: glib::ffi::gpointer,
) -> glib::ffi::gboolean {
    let dst = gst::ffi::gst_buffer_add_meta(dest, info(), ptr::null_mut()) as *mut GstGvaTensorMeta;
    if !(*dst).data.is_null() {
        gst::ffi::gst_structure_remove_all_fields((*dst).data);
        gst::ffi::gst_structure_free((*dst).data);
    }
    (*dst).data = gst::ffi::gst_structure_copy((*(src as *mut GstGvaTensorMeta)).data);
    glib::ffi::GTRUE
}

/// `gst_gva_tensor_meta_get_info()`: DL Streamer's registration, or whichever library
/// registered these names first in this process.
fn info() -> *const gst::ffi::GstMetaInfo {
    static INFO: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *INFO.get_or_init(|| unsafe {
        let existing = gst::ffi::gst_meta_get_info(IMPL_NAME.as_ptr());
        if !existing.is_null() {
            return existing as usize;
        }
        let api = match glib::Type::from_name(API_NAME) {
            Some(api) => api.into_glib(),
            None => {
                let mut tags: [*const std::ffi::c_char; 1] = [ptr::null()];
                gst::ffi::gst_meta_api_type_register(
                    c"GstGVATensorMetaAPI".as_ptr(),
                    tags.as_mut_ptr(),
                )
            }
        };
        gst::ffi::gst_meta_register(
            api,
            IMPL_NAME.as_ptr(),
            std::mem::size_of::<GstGvaTensorMeta>(),
            Some(init),
            Some(free),
            Some(transform),
        ) as usize
    }) as *const gst::ffi::GstMetaInfo
}

/// `TensorToFrameAttacher::attach`: a new tensor meta whose structure is `s`, with the
/// element's `model-instance-id` as `element_id`.
pub fn attach(buffer: &mut gst::BufferRef, mut s: gst::Structure, element_id: &str) {
    s.set("element_id", element_id);
    unsafe {
        let meta = gst::ffi::gst_buffer_add_meta(buffer.as_mut_ptr(), info(), ptr::null_mut())
            as *mut GstGvaTensorMeta;
        assert!(!meta.is_null(), "gst_buffer_add_meta");
        gst::ffi::gst_structure_free((*meta).data);
        (*meta).data = s.into_glib_ptr();
    }
}

/// The structures of the tensor metas on `buffer`, read as DL Streamer's
/// `VideoFrame::tensors()` reads them (by the API type's name).
pub fn structures(buffer: &gst::BufferRef) -> Vec<gst::Structure> {
    let Some(api) = glib::Type::from_name(API_NAME) else {
        return Vec::new();
    };
    buffer
        .iter_meta::<gst::Meta>()
        .filter(|meta| meta.api() == api)
        .map(|meta| unsafe {
            let data = (*(meta.as_ptr() as *const GstGvaTensorMeta)).data;
            gst::StructureRef::from_glib_borrow(data).to_owned()
        })
        .collect()
}

/// The bytes of a structure's `data_buffer`.
pub fn data_bytes(s: &gst::StructureRef) -> Vec<u8> {
    s.get::<glib::Variant>("data_buffer")
        .expect("a data_buffer variant")
        .fixed_array::<u8>()
        .expect("a byte array")
        .to_vec()
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// `copy_buffer_to_structure` and `CopyOutputBlobToGstStructure`: the raw output as a
/// byte-array GVariant in `data_buffer` with `data` pointing into it, then `layer_name`,
/// `model_name`, `precision`, `layout` and `dims` (a `GstValueArray` of uints, set with
/// `gst_structure_set_array`).
fn copy_blob(
    s: &mut gst::Structure,
    bytes: &[u8],
    model: &str,
    layer: &str,
    precision: i32,
    layout: i32,
    dims: &[u32],
) {
    let variant = glib::Variant::array_from_fixed_array(bytes);
    let pointer = variant.fixed_array::<u8>().unwrap().as_ptr() as glib::Pointer;
    s.set("data_buffer", variant);
    unsafe {
        gst::ffi::gst_structure_set_value(
            s.as_mut_ptr(),
            c"data".as_ptr(),
            pointer.to_value().to_glib_none().0,
        );
    }
    s.set("layer_name", layer);
    s.set("model_name", model);
    s.set("precision", precision);
    s.set("layout", layout);
    s.set("dims", gst::Array::new(dims.iter().copied()));
}

/// What `gvainference` attaches for one output layer: the structure
/// `inference_layer_name:<layer>` of the default `raw_data_copy` converter, and `tensor_id`.
pub fn gvainference(
    model: &str,
    layer: &str,
    precision: i32,
    layout: i32,
    dims: &[u32],
    bytes: &[u8],
) -> gst::Structure {
    let mut s = gst::Structure::new_empty(format!("inference_layer_name:{layer}"));
    s.set("converter", "raw_data_copy");
    copy_blob(&mut s, bytes, model, layer, precision, layout, dims);
    s.set("tensor_id", 0i32);
    s
}

/// What `gvaclassify inference-region=full-frame` attaches with a model-proc `label`
/// converter (`method: max`): the model-proc output fields, the raw output, then `label`,
/// `label_id` and `confidence` of the highest score, `tensor_id` and `type`. The structure is
/// named `classification_layer_name:<layer>`, or the model-proc's `attribute_name`.
pub fn gvaclassify(
    model: &str,
    layer: &str,
    attribute_name: Option<&str>,
    layout: i32,
    labels: &[&str],
    scores: &[f32],
) -> gst::Structure {
    let name = match attribute_name {
        Some(name) => name.to_owned(),
        None => format!("classification_layer_name:{layer}"),
    };
    let mut s = gst::Structure::new_empty(name);
    s.set("converter", "label");
    s.set("method", "max");
    s.set("labels", gst::Array::new(labels.iter().copied()));
    if let Some(attribute_name) = attribute_name {
        s.set("attribute_name", attribute_name);
    }
    let dims = [1, scores.len() as u32];
    copy_blob(
        &mut s,
        &f32_bytes(scores),
        model,
        layer,
        FP32,
        layout,
        &dims,
    );
    let (index, best) =
        scores.iter().enumerate().fold(
            (0, f32::MIN),
            |(i, m), (j, v)| if *v > m { (j, *v) } else { (i, m) },
        );
    s.set("label", labels[index]);
    s.set("label_id", index as i32);
    s.set("confidence", f64::from(best));
    s.set("tensor_id", 0i32);
    s.set("type", "classification_result");
    s
}
