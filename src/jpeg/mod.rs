// SPDX-License-Identifier: MPL-2.0

//! JPEG encoding of single raw video frames.
//!
//! [`JpegEncoder`] wraps a TurboJPEG compressor (libjpeg-turbo, linked through
//! `turbojpeg-sys` and pkg-config; on Debian the `libturbojpeg0-dev` package).
//! It is made once per stream from the negotiated [`gst_video::VideoInfo`] and then
//! encodes frame after frame, reusing its compressor and buffers.
//!
//! - Packed RGB formats are handed to libjpeg-turbo as they are (row stride
//!   honoured); it converts to YCbCr and subsamples to 4:2:0.
//! - Planar YUV is compressed straight from the planes, without a colour conversion,
//!   when the frame already is what JPEG (JFIF) expects: full range, BT.601.
//!   Otherwise (the usual limited range video, BT.709, ...) the samples are
//!   converted into scratch planes first so that the picture keeps its colours
//!   (unless [`JpegEncoder::set_colour_conversion`] turns that off, as `jpegenc`
//!   does). Semi-planar (NV12, ...) and packed (YUY2, ...) YUV go through scratch
//!   planes too. The chroma subsampling of the source is kept.
//! - Grey is encoded as a one-component JPEG. Alpha is ignored.
//!
//! `examples/jpeg_bench.rs` compares the cost with `jpegenc`.
//!
//! This file holds the public API and the flow of a stream: set-up, then frame
//! after frame. The pieces live apart:
//! - `planes`: the samples of a frame, component by component (safe code);
//! - `convert`: the colour conversion, with its AVX2 path;
//! - `turbo`: the libjpeg-turbo calls behind a safe `Compressor`.
//!
//! Only the AVX2 path of `convert` and the FFI in `turbo` are not safe code.

mod convert;
mod planes;
mod turbo;

use std::fmt;

use gst_video::prelude::*;
use gst_video::VideoFormat;
use once_cell::sync::Lazy;

use convert::Conversion;
use planes::{fill_plane, plane_data, plane_stride, Component, Scratch};
use turbo::{Compressor, PixelFormat, Subsampling};

/// Encoder set-up and failures: `GST_DEBUG=mqttpublish-jpeg:6`.
static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "mqttpublish-jpeg",
        gst::DebugColorFlags::empty(),
        Some("JPEG encoding of raw frames (libjpeg-turbo)"),
    )
});

/// Raw video formats that [`JpegEncoder`] accepts, best first (for caps).
pub const SUPPORTED_FORMATS: &[VideoFormat] = &[
    VideoFormat::I420,
    VideoFormat::Yv12,
    VideoFormat::Nv12,
    VideoFormat::Nv21,
    VideoFormat::Y42b,
    VideoFormat::Y444,
    VideoFormat::Nv16,
    VideoFormat::Nv61,
    VideoFormat::Nv24,
    VideoFormat::Yuy2,
    VideoFormat::Uyvy,
    VideoFormat::Yvyu,
    VideoFormat::Gray8,
    VideoFormat::Rgb,
    VideoFormat::Bgr,
    VideoFormat::Rgbx,
    VideoFormat::Bgrx,
    VideoFormat::Xrgb,
    VideoFormat::Xbgr,
    VideoFormat::Rgba,
    VideoFormat::Bgra,
    VideoFormat::Argb,
    VideoFormat::Abgr,
];

/// Whether [`JpegEncoder`] can encode frames of `format`.
pub fn is_supported(format: VideoFormat) -> bool {
    SUPPORTED_FORMATS.contains(&format)
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JpegError {
    /// The raw video format has no JPEG encoding here.
    UnsupportedFormat(VideoFormat),
    /// JPEG images are 1 to 65535 pixels wide and high.
    InvalidSize { width: u32, height: u32 },
    /// Quality is 1 to 100.
    InvalidQuality(u8),
    /// The frame does not have the format or size the encoder was made for.
    FrameMismatch {
        expected: (VideoFormat, u32, u32),
        actual: (VideoFormat, u32, u32),
    },
    /// A plane of the frame is too small for its stride and height.
    BadLayout(String),
    /// libjpeg-turbo reported an error.
    Library(String),
}

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedFormat(format) => write!(
                f,
                "raw video format {} cannot be encoded as JPEG (supported: {})",
                format.to_str(),
                SUPPORTED_FORMATS
                    .iter()
                    .map(|f| f.to_str().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::InvalidSize { width, height } => write!(
                f,
                "frame size {width}x{height} cannot be encoded as JPEG (1 to 65535 pixels each way)"
            ),
            Self::InvalidQuality(q) => write!(f, "JPEG quality {q} is not in 1..=100"),
            Self::FrameMismatch { expected, actual } => write!(
                f,
                "frame is {} {}x{} but the JPEG encoder was set up for {} {}x{}",
                actual.0.to_str(),
                actual.1,
                actual.2,
                expected.0.to_str(),
                expected.1,
                expected.2
            ),
            Self::BadLayout(what) => write!(f, "frame layout is invalid: {what}"),
            Self::Library(msg) => write!(f, "libjpeg-turbo failed: {msg}"),
        }
    }
}

impl std::error::Error for JpegError {}

/// Reusable JPEG encoder for frames of one format and size.
pub struct JpegEncoder {
    compressor: Compressor,
    format: VideoFormat,
    width: u32,
    height: u32,
    kind: Kind,
    convert_colours: bool,
    scratch: Scratch,
}

enum Kind {
    /// Packed RGB, handed to `tjCompress2` with its row stride.
    Packed(PixelFormat),
    /// Luma (and chroma) planes for `tjCompressFromYUVPlanes`.
    Planes {
        /// log2 of the chroma subsampling, horizontally and vertically.
        sub: (u32, u32),
        n_components: usize,
        conversion: Option<Conversion>,
    },
}

impl JpegEncoder {
    /// Prepares the encoding of frames described by `info` at `quality` (1 to 100).
    pub fn new(info: &gst_video::VideoInfo, quality: u8) -> Result<Self, JpegError> {
        let format = info.format();
        let (width, height) = (info.width(), info.height());
        if !is_supported(format) {
            return Err(JpegError::UnsupportedFormat(format));
        }
        if !(1..=65535).contains(&width) || !(1..=65535).contains(&height) {
            return Err(JpegError::InvalidSize { width, height });
        }
        if !(1..=100).contains(&quality) {
            return Err(JpegError::InvalidQuality(quality));
        }

        let finfo = info.format_info();
        let (kind, subsampling) = if let Some(pixel_format) = turbo::packed_rgb(format) {
            (Kind::Packed(pixel_format), Subsampling::Yuv420)
        } else if finfo.is_gray() {
            let kind = Kind::Planes {
                sub: (0, 0),
                n_components: 1,
                conversion: Conversion::new(info),
            };
            (kind, Subsampling::Gray)
        } else {
            let sub = (finfo.w_sub()[1], finfo.h_sub()[1]);
            let subsampling =
                Subsampling::colour(sub).ok_or(JpegError::UnsupportedFormat(format))?;
            let kind = Kind::Planes {
                sub,
                n_components: 3,
                conversion: Conversion::new(info),
            };
            (kind, subsampling)
        };

        let compressor = Compressor::new(width, height, subsampling, quality)?;
        gst::debug!(
            CAT,
            "Encoding {format:?} {width}x{height} at quality {quality}: {}",
            match &kind {
                Kind::Packed(_) => "packed RGB, converted by libjpeg-turbo".to_owned(),
                Kind::Planes {
                    sub, conversion, ..
                } => format!(
                    "from planes, chroma subsampling {sub:?}, colour conversion {}",
                    if conversion.is_some() { "on" } else { "off" }
                ),
            }
        );

        Ok(Self {
            compressor,
            format,
            width,
            height,
            kind,
            convert_colours: true,
            scratch: Scratch::default(),
        })
    }

    /// Whether YUV frames are converted to the colours JPEG viewers assume (full
    /// range, BT.601) when they have others, as the usual limited range video does.
    /// On by default. Off, the samples are compressed as they are, like `jpegenc`
    /// does: a little cheaper, but such pictures look washed out and hues shift.
    pub fn set_colour_conversion(&mut self, convert: bool) {
        self.convert_colours = convert;
    }

    /// Encodes `frame` and appends the JPEG image to `out`.
    pub fn encode(
        &mut self,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegError> {
        let actual = (frame.format(), frame.width(), frame.height());
        if actual != (self.format, self.width, self.height) {
            return Err(JpegError::FrameMismatch {
                expected: (self.format, self.width, self.height),
                actual,
            });
        }

        let jpeg = match self.kind {
            Kind::Packed(pixel_format) => self.compress_packed(frame, pixel_format)?,
            Kind::Planes { .. } => self.compress_planes(frame)?,
        };
        out.extend_from_slice(jpeg);
        Ok(())
    }

    fn compress_packed(
        &mut self,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        pixel_format: PixelFormat,
    ) -> Result<&[u8], JpegError> {
        let data = plane_data(frame, 0)?;
        let stride = plane_stride(frame, 0)?;
        self.compressor.compress_packed(data, stride, pixel_format)
    }

    fn compress_planes(
        &mut self,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    ) -> Result<&[u8], JpegError> {
        let Kind::Planes {
            sub,
            n_components,
            ref conversion,
        } = self.kind
        else {
            unreachable!()
        };
        let (width, height) = (self.width as usize, self.height as usize);
        // Plane sizes libjpeg-turbo reads: luma padded to whole chroma samples.
        let chroma_w = width.div_ceil(1 << sub.0);
        let chroma_h = height.div_ceil(1 << sub.1);
        let dims = [
            (chroma_w << sub.0, chroma_h << sub.1),
            (chroma_w, chroma_h),
            (chroma_w, chroma_h),
        ];

        let mut sources = Vec::with_capacity(3);
        for c in 0..n_components {
            sources.push(Component::new(frame, c as u32)?);
        }

        // Each plane as its samples and row stride.
        let mut planes: [(&[u8], usize); 3] = [(&[], 0); 3];
        match conversion.as_ref().filter(|_| self.convert_colours) {
            Some(conversion) => {
                let scratch = &mut self.scratch;
                conversion.convert(&sources, dims, sub.0, scratch);
                for (c, (w, _)) in dims.iter().enumerate().take(n_components) {
                    planes[c] = (&scratch.planes[c], *w);
                }
            }
            None => {
                let Scratch {
                    planes: scratch,
                    rows,
                    ..
                } = &mut self.scratch;
                let components = sources.iter().zip(dims).zip(scratch.iter_mut());
                for (c, ((src, (w, h)), plane)) in components.enumerate() {
                    planes[c] = match src.direct(w, h) {
                        Some(direct) => direct,
                        None => {
                            plane.resize(w * h, 0);
                            fill_plane(src, plane, w, &mut rows[0], |s, d| d.copy_from_slice(s));
                            (plane, w)
                        }
                    };
                }
            }
        }
        self.compressor.compress_planes(&planes[..n_components])
    }
}
