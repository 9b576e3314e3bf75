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

use std::ffi::CStr;
use std::fmt;
use std::os::raw::{c_int, c_uchar, c_ulong};

use gst_video::prelude::*;
use gst_video::{VideoColorMatrix, VideoColorRange, VideoFormat};
use once_cell::sync::Lazy;
use turbojpeg_sys as tj;

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
    quality: c_int,
    kind: Kind,
    convert_colours: bool,
    /// Destination of libjpeg-turbo, sized for the worst case so it never reallocates.
    jpeg: Vec<u8>,
    scratch: Scratch,
}

enum Kind {
    /// Packed RGB, handed to `tjCompress2` with its row stride.
    Packed { pixel_format: c_int, bpp: usize },
    /// Luma (and chroma) planes for `tjCompressFromYUVPlanes`.
    Planes {
        subsamp: c_int,
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
        let kind = if let Some((pixel_format, bpp)) = packed_rgb(format) {
            Kind::Packed { pixel_format, bpp }
        } else if finfo.is_gray() {
            Kind::Planes {
                subsamp: tj::TJSAMP_TJSAMP_GRAY as c_int,
                sub: (0, 0),
                n_components: 1,
                conversion: Conversion::new(info),
            }
        } else {
            let sub = (finfo.w_sub()[1], finfo.h_sub()[1]);
            let subsamp = match sub {
                (0, 0) => tj::TJSAMP_TJSAMP_444,
                (1, 0) => tj::TJSAMP_TJSAMP_422,
                (1, 1) => tj::TJSAMP_TJSAMP_420,
                _ => return Err(JpegError::UnsupportedFormat(format)),
            } as c_int;
            Kind::Planes {
                subsamp,
                sub,
                n_components: 3,
                conversion: Conversion::new(info),
            }
        };

        let subsamp = match kind {
            Kind::Packed { .. } => tj::TJSAMP_TJSAMP_420 as c_int,
            Kind::Planes { subsamp, .. } => subsamp,
        };
        // SAFETY: plain arithmetic on valid arguments.
        let jpeg_size = unsafe { tj::tjBufSize(width as c_int, height as c_int, subsamp) };
        if jpeg_size == c_ulong::MAX {
            return Err(JpegError::InvalidSize { width, height });
        }
        gst::debug!(
            CAT,
            "Encoding {format:?} {width}x{height} at quality {quality}: {}",
            match &kind {
                Kind::Packed { .. } => "packed RGB, converted by libjpeg-turbo".to_owned(),
                Kind::Planes {
                    sub, conversion, ..
                } => format!(
                    "from planes, chroma subsampling {sub:?}, colour conversion {}",
                    if conversion.is_some() { "on" } else { "off" }
                ),
            }
        );

        Ok(Self {
            compressor: Compressor::new()?,
            format,
            width,
            height,
            quality: c_int::from(quality),
            kind,
            convert_colours: true,
            jpeg: vec![0; jpeg_size as usize],
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

        let len = match self.kind {
            Kind::Packed { pixel_format, bpp } => self.compress_packed(frame, pixel_format, bpp)?,
            Kind::Planes { .. } => self.compress_planes(frame)?,
        };
        out.extend_from_slice(&self.jpeg[..len]);
        Ok(())
    }

    fn compress_packed(
        &mut self,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        pixel_format: c_int,
        bpp: usize,
    ) -> Result<usize, JpegError> {
        let (width, height) = (self.width as usize, self.height as usize);
        let data = plane_data(frame, 0)?;
        let stride = plane_stride(frame, 0)?;
        check_extent(0, data.len(), stride, width * bpp, height)?;

        let mut dest = self.jpeg.as_mut_ptr();
        let mut len: c_ulong = 0;
        // SAFETY: `data` holds `height` rows of `width * bpp` bytes, `stride` apart
        // (checked above). The destination holds `tjBufSize()` bytes, the most
        // libjpeg-turbo writes, and NOREALLOC keeps it from reallocating it.
        let ret = unsafe {
            tj::tjCompress2(
                self.compressor.0,
                data.as_ptr(),
                width as c_int,
                stride as c_int,
                height as c_int,
                pixel_format,
                &mut dest,
                &mut len,
                tj::TJSAMP_TJSAMP_420 as c_int,
                self.quality,
                FLAGS,
            )
        };
        self.finish(ret, dest, len)
    }

    fn compress_planes(
        &mut self,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    ) -> Result<usize, JpegError> {
        let Kind::Planes {
            subsamp,
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

        let mut ptrs = [std::ptr::null::<c_uchar>(); 3];
        let mut strides = [0 as c_int; 3];
        let scratch = &mut self.scratch;
        match conversion.as_ref().filter(|_| self.convert_colours) {
            Some(conversion) => {
                conversion.convert(&sources, dims, sub.0, scratch);
                for (c, (w, _)) in dims.iter().enumerate().take(n_components) {
                    ptrs[c] = scratch.planes[c].as_ptr();
                    strides[c] = *w as c_int;
                }
            }
            None => {
                for (c, (src, (w, h))) in sources.iter().zip(dims).enumerate() {
                    if let Some(direct) = src.direct(w, h) {
                        ptrs[c] = direct.as_ptr();
                        strides[c] = src.stride as c_int;
                    } else {
                        let plane = &mut scratch.planes[c];
                        plane.resize(w * h, 0);
                        fill_plane(src, plane, w, &mut scratch.rows[0], |s, d| {
                            d.copy_from_slice(s)
                        });
                        ptrs[c] = plane.as_ptr();
                        strides[c] = w as c_int;
                    }
                }
            }
        }

        let mut dest = self.jpeg.as_mut_ptr();
        let mut len: c_ulong = 0;
        // SAFETY: each of the `n_components` planes holds at least `dims[c].1` rows
        // of `dims[c].0` samples, `strides[c]` apart: either checked in the frame by
        // `Component::direct()` or written to scratch. The destination holds
        // `tjBufSize()` bytes and NOREALLOC keeps libjpeg-turbo from reallocating it.
        let ret = unsafe {
            tj::tjCompressFromYUVPlanes(
                self.compressor.0,
                ptrs.as_mut_ptr(),
                width as c_int,
                strides.as_ptr(),
                height as c_int,
                subsamp,
                &mut dest,
                &mut len,
                self.quality,
                FLAGS,
            )
        };
        self.finish(ret, dest, len)
    }

    fn finish(&self, ret: c_int, dest: *mut c_uchar, len: c_ulong) -> Result<usize, JpegError> {
        if ret != 0 {
            return Err(JpegError::Library(self.compressor.last_error()));
        }
        if !std::ptr::eq(dest, self.jpeg.as_ptr()) || len as usize > self.jpeg.len() {
            return Err(JpegError::Library(
                "output buffer was replaced despite NOREALLOC".into(),
            ));
        }
        Ok(len as usize)
    }
}

/// The same DCT as `jpegenc` uses by default.
const FLAGS: c_int = (tj::TJFLAG_NOREALLOC | tj::TJFLAG_FASTDCT) as c_int;

fn packed_rgb(format: VideoFormat) -> Option<(c_int, usize)> {
    let (pf, bpp) = match format {
        VideoFormat::Rgb => (tj::TJPF_TJPF_RGB, 3),
        VideoFormat::Bgr => (tj::TJPF_TJPF_BGR, 3),
        VideoFormat::Rgbx => (tj::TJPF_TJPF_RGBX, 4),
        VideoFormat::Bgrx => (tj::TJPF_TJPF_BGRX, 4),
        VideoFormat::Xrgb => (tj::TJPF_TJPF_XRGB, 4),
        VideoFormat::Xbgr => (tj::TJPF_TJPF_XBGR, 4),
        VideoFormat::Rgba => (tj::TJPF_TJPF_RGBA, 4),
        VideoFormat::Bgra => (tj::TJPF_TJPF_BGRA, 4),
        VideoFormat::Argb => (tj::TJPF_TJPF_ARGB, 4),
        VideoFormat::Abgr => (tj::TJPF_TJPF_ABGR, 4),
        _ => return None,
    };
    Some((pf as c_int, bpp))
}

fn plane_data<'a>(
    frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
    plane: u32,
) -> Result<&'a [u8], JpegError> {
    frame
        .plane_data(plane)
        .map_err(|err| JpegError::BadLayout(format!("plane {plane}: {err}")))
}

fn plane_stride(
    frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    plane: u32,
) -> Result<usize, JpegError> {
    let stride = frame.plane_stride()[plane as usize];
    usize::try_from(stride)
        .ok()
        .filter(|s| *s > 0 && *s <= c_int::MAX as usize)
        .ok_or_else(|| JpegError::BadLayout(format!("plane {plane} has stride {stride}")))
}

/// Checks that `len` bytes hold `rows` rows of `row_bytes`, `stride` apart.
fn check_extent(
    plane: u32,
    len: usize,
    stride: usize,
    row_bytes: usize,
    rows: usize,
) -> Result<(), JpegError> {
    if stride >= row_bytes && (rows - 1) * stride + row_bytes <= len {
        Ok(())
    } else {
        Err(JpegError::BadLayout(format!(
            "plane {plane} has {len} bytes with stride {stride}, \
             too few for {rows} rows of {row_bytes} bytes"
        )))
    }
}

/// Buffers kept from frame to frame.
#[derive(Default)]
struct Scratch {
    /// Y, Cb, Cr planes for frames that cannot be compressed in place.
    planes: [Vec<u8>; 3],
    /// Rows gathered from interleaved components.
    rows: [Vec<u8>; 2],
    /// Chroma terms of the luma of one row, for a matrix conversion.
    offsets: Vec<u16>,
}

/// One colour component of a frame: its samples are `data[x * pstride]` in rows
/// `stride` apart.
struct Component<'a> {
    data: &'a [u8],
    stride: usize,
    pstride: usize,
    width: usize,
    height: usize,
}

impl<'a> Component<'a> {
    fn new(
        frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
        comp: u32,
    ) -> Result<Self, JpegError> {
        let plane = frame.comp_plane(comp);
        let data = plane_data(frame, plane)?;
        let stride = plane_stride(frame, plane)?;
        let pstride = frame.comp_pstride(comp) as usize;
        let poffset = frame.comp_poffset(comp) as usize;
        let width = frame.comp_width(comp) as usize;
        let height = frame.comp_height(comp) as usize;
        check_extent(
            plane,
            data.len(),
            stride,
            poffset + (width - 1) * pstride + 1,
            height,
        )?;
        Ok(Self {
            data: &data[poffset..],
            stride,
            pstride,
            width,
            height,
        })
    }

    /// The samples, if libjpeg-turbo can read `width` x `height` of them in place.
    fn direct(&self, width: usize, height: usize) -> Option<&'a [u8]> {
        (self.pstride == 1 && self.width == width && self.height == height).then_some(self.data)
    }

    /// Row `y` (the last row past the bottom) as `width` contiguous samples,
    /// gathered into `tmp` if the component is interleaved with others.
    fn row<'t>(&self, y: usize, tmp: &'t mut Vec<u8>) -> &'t [u8]
    where
        'a: 't,
    {
        let start = y.min(self.height - 1) * self.stride;
        let src = &self.data[start..];
        if self.pstride == 1 {
            return &src[..self.width];
        }
        tmp.resize(self.width, 0);
        match self.pstride {
            2 => gather::<2>(src, tmp),
            4 => gather::<4>(src, tmp),
            n => tmp
                .iter_mut()
                .enumerate()
                .for_each(|(x, d)| *d = src[x * n]),
        }
        tmp
    }
}

/// Copies every `N`th byte of `src` to `dst`.
fn gather<const N: usize>(src: &[u8], dst: &mut [u8]) {
    let whole = (src.len() / N).min(dst.len());
    for (d, s) in dst[..whole].iter_mut().zip(src.chunks_exact(N)) {
        *d = s[0];
    }
    for (x, d) in dst.iter_mut().enumerate().skip(whole) {
        *d = src[x * N];
    }
}

/// Fills the `width` wide rows of `dst` from the rows of `src` through `op`,
/// repeating the last column and row where `src` is smaller.
#[inline(always)]
fn fill_plane(
    src: &Component,
    dst: &mut [u8],
    width: usize,
    tmp: &mut Vec<u8>,
    mut op: impl FnMut(&[u8], &mut [u8]),
) {
    for (y, out) in dst.chunks_exact_mut(width).enumerate() {
        let (body, pad) = out.split_at_mut(src.width);
        op(src.row(y, tmp), body);
        let last = body[src.width - 1];
        pad.fill(last);
    }
}

/// Fixed-point precision (bits) of the luma gain: luma stays in 16 bits, which
/// keeps the loop over the most samples wide when vectorised.
const LUMA_SHIFT: u32 = 7;
const LUMA_ROUND: u16 = 1 << (LUMA_SHIFT - 1);
/// Fixed-point precision (bits) of the chroma matrix.
const CHROMA_SHIFT: u32 = 14;
/// Added to the chroma terms of luma (Q7) to keep them positive: 64 levels.
const MIX_BIAS: i32 = 64 << LUMA_SHIFT;

/// Conversion of YUV samples to full range BT.601, the colours of JFIF.
///
/// Plain loops over rows in fixed point, which the compiler vectorises: this must
/// cost little next to the compression itself.
struct Conversion {
    /// Y' = (Y - y_offset) * y_gain, plus the chroma term if `mix` is set.
    y_offset: u8,
    y_gain: u16,
    /// (Cb', Cr') = chroma * (Cb - 128, Cr - 128) + 128.
    chroma: [[i32; 2]; 2],
    /// Luma term of the converted chroma, when the matrix is not BT.601.
    mix: Option<[i32; 2]>,
}

impl Conversion {
    /// The conversion frames of `info` need, if any.
    fn new(info: &gst_video::VideoInfo) -> Option<Self> {
        let colorimetry = info.colorimetry();
        let full_range = colorimetry.range() == VideoColorRange::Range0_255;
        let (kr, kb) = match colorimetry.matrix() {
            VideoColorMatrix::Bt709 => (0.2126, 0.0722),
            VideoColorMatrix::Bt2020 => (0.2627, 0.0593),
            VideoColorMatrix::Smpte240m => (0.212, 0.087),
            VideoColorMatrix::Fcc => (0.30, 0.11),
            // BT.601, and the guess for anything unknown.
            _ => (JFIF_KR, JFIF_KB),
        };
        let mixes = (kr, kb) != (JFIF_KR, JFIF_KB) && !info.format_info().is_gray();
        if full_range && !mixes {
            return None;
        }
        let (y_offset, y_scale, c_scale) = if full_range {
            (0, 255.0, 255.0)
        } else {
            (16, 219.0, 224.0)
        };

        // Normalised source (y, pb, pr) -> RGB -> normalised BT.601 (y', pb', pr').
        let to_rgb = |y: f64, pb: f64, pr: f64| {
            let r = y + 2.0 * (1.0 - kr) * pr;
            let b = y + 2.0 * (1.0 - kb) * pb;
            let g = (y - kr * r - kb * b) / (1.0 - kr - kb);
            (r, g, b)
        };
        let to_jfif = |(r, g, b): (f64, f64, f64)| {
            let y = JFIF_KR * r + (1.0 - JFIF_KR - JFIF_KB) * g + JFIF_KB * b;
            (
                y,
                (b - y) / (2.0 * (1.0 - JFIF_KB)),
                (r - y) / (2.0 * (1.0 - JFIF_KR)),
            )
        };
        // Images of the unit chroma vectors. Grey stays grey: y' = y + (chroma
        // terms) and the chroma does not depend on y.
        let pb = to_jfif(to_rgb(0.0, 1.0, 0.0));
        let pr = to_jfif(to_rgb(0.0, 0.0, 1.0));
        let c = [[pb.1, pr.1], [pb.2, pr.2]];
        // y' = y + pb.0 * pb + pr.0 * pr, with (pb, pr) from the converted (pb', pr').
        let det = c[0][0] * c[1][1] - c[0][1] * c[1][0];
        let mix = [
            (pb.0 * c[1][1] - pr.0 * c[1][0]) / det,
            (pr.0 * c[0][0] - pb.0 * c[0][1]) / det,
        ];

        let fix = |v: f64, shift: u32| (v * f64::from(1 << shift)).round() as i32;
        let chroma_gain = 255.0 / c_scale;
        let chroma = c.map(|row| row.map(|v| fix(v * chroma_gain, CHROMA_SHIFT)));
        let y_gain = fix(255.0 / y_scale, LUMA_SHIFT) as u16;
        // Luma stays within 16 bits: the chroma terms are less than the bias and the
        // sum is at most 255 * gain + 2 * bias + rounding.
        assert!(mix[0].abs() + mix[1].abs() < 0.45);
        assert!(255 * i32::from(y_gain) + 2 * MIX_BIAS + i32::from(LUMA_ROUND) <= 0xffff);
        let mix = mix.map(|v| fix(v, CHROMA_SHIFT));
        Some(Self {
            y_offset,
            y_gain,
            chroma,
            mix: mixes.then_some(mix),
        })
    }

    /// Luma without the chroma term.
    #[inline(always)]
    fn luma_row(&self, src: &[u8], dst: &mut [u8]) {
        let (offset, gain) = (self.y_offset, self.y_gain);
        for (d, &s) in dst.iter_mut().zip(src) {
            let y = (u16::from(s.saturating_sub(offset)) * gain + LUMA_ROUND) >> LUMA_SHIFT;
            *d = y.min(255) as u8;
        }
    }

    /// Luma with the chroma terms in `offsets` (Q7 plus `MIX_BIAS`), one per sample.
    #[inline(always)]
    fn luma_mix_row(&self, src: &[u8], offsets: &[u16], dst: &mut [u8]) {
        let (offset, gain) = (self.y_offset, self.y_gain);
        let bias = (MIX_BIAS >> LUMA_SHIFT) as i16;
        for ((d, &s), &o) in dst.iter_mut().zip(src).zip(offsets) {
            let y = (u16::from(s.saturating_sub(offset)) * gain + o + LUMA_ROUND) >> LUMA_SHIFT;
            *d = (y as i16 - bias).clamp(0, 255) as u8;
        }
    }

    #[inline(always)]
    fn chroma_row(&self, (in_b, in_r): (&[u8], &[u8]), out_b: &mut [u8], out_r: &mut [u8]) {
        let [[bb, br], [rb, rr]] = self.chroma;
        let round = (128 << CHROMA_SHIFT) + (1 << (CHROMA_SHIFT - 1));
        let samples = in_b.iter().zip(in_r);
        for ((ob, or), (&b, &r)) in out_b.iter_mut().zip(out_r.iter_mut()).zip(samples) {
            let (b, r) = (i32::from(b) - 128, i32::from(r) - 128);
            *ob = ((bb * b + br * r + round) >> CHROMA_SHIFT).clamp(0, 255) as u8;
            *or = ((rb * b + rr * r + round) >> CHROMA_SHIFT).clamp(0, 255) as u8;
        }
    }

    /// The luma term of converted chroma, repeated for the `N` luma samples that
    /// share a chroma sample.
    #[inline(always)]
    fn luma_offsets<const N: usize>(mix: [i32; 2], (cb, cr): (&[u8], &[u8]), out: &mut [u16]) {
        let [yb, yr] = mix;
        let shift = CHROMA_SHIFT - LUMA_SHIFT;
        let round = (MIX_BIAS << shift) + (1 << (shift - 1));
        for (o, (&b, &r)) in out.chunks_exact_mut(N).zip(cb.iter().zip(cr)) {
            let (b, r) = (i32::from(b) - 128, i32::from(r) - 128);
            o.fill(((yb * b + yr * r + round) >> shift) as u16);
        }
    }

    /// Fills the scratch planes (`dims` samples) with the converted `sources`, luma
    /// and, unless grey, chroma subsampled horizontally by `1 << sub_x`.
    fn convert(
        &self,
        sources: &[Component],
        dims: [(usize, usize); 3],
        sub_x: u32,
        scratch: &mut Scratch,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { self.convert_avx2(sources, dims, sub_x, scratch) };
            return;
        }
        self.convert_rows(sources, dims, sub_x, scratch);
    }

    /// The same loops, vectorised twice as wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn convert_avx2(
        &self,
        sources: &[Component],
        dims: [(usize, usize); 3],
        sub_x: u32,
        scratch: &mut Scratch,
    ) {
        self.convert_rows(sources, dims, sub_x, scratch);
    }

    #[inline(always)]
    fn convert_rows(
        &self,
        sources: &[Component],
        dims: [(usize, usize); 3],
        sub_x: u32,
        scratch: &mut Scratch,
    ) {
        let Scratch {
            planes: [luma, cb, cr],
            rows: [tmp_b, tmp_r],
            offsets,
        } = scratch;
        let planes = [&mut *luma, &mut *cb, &mut *cr];
        for ((plane, (w, h)), _) in planes.into_iter().zip(dims).zip(sources) {
            plane.resize(w * h, 0);
        }
        let (width, chroma_w) = (dims[0].0, dims[1].0);

        if let [src_b, src_r] = &sources[1..] {
            let rows = cb
                .chunks_exact_mut(chroma_w)
                .zip(cr.chunks_exact_mut(chroma_w));
            for (y, (out_b, out_r)) in rows.enumerate() {
                self.chroma_row((src_b.row(y, tmp_b), src_r.row(y, tmp_r)), out_b, out_r);
            }
        }

        // Luma rows per chroma row.
        let sub_y = dims[0].1 / dims[1].1;
        offsets.resize(chroma_w << sub_x, 0);
        // No closures here: they would not be compiled for AVX2.
        for (y, out) in luma.chunks_exact_mut(width).enumerate() {
            let src = sources[0].row(y, tmp_b);
            let (body, pad) = out.split_at_mut(src.len());
            match self.mix {
                None => self.luma_row(src, body),
                Some(mix) => {
                    if y % sub_y == 0 {
                        let start = y / sub_y * chroma_w;
                        let chroma = (&cb[start..start + chroma_w], &cr[start..start + chroma_w]);
                        match sub_x {
                            0 => Self::luma_offsets::<1>(mix, chroma, offsets),
                            _ => Self::luma_offsets::<2>(mix, chroma, offsets),
                        }
                    }
                    self.luma_mix_row(src, offsets, body);
                }
            }
            let last = body[body.len() - 1];
            pad.fill(last);
        }
    }
}

const JFIF_KR: f64 = 0.299;
const JFIF_KB: f64 = 0.114;

/// A TurboJPEG compressor instance.
struct Compressor(tj::tjhandle);

// SAFETY: a TurboJPEG instance holds no thread-local state; it may move between
// threads as long as only one uses it at a time, which `&mut self` ensures.
unsafe impl Send for Compressor {}

impl Compressor {
    fn new() -> Result<Self, JpegError> {
        // SAFETY: no preconditions; a null handle is checked below.
        let handle = unsafe { tj::tjInitCompress() };
        if handle.is_null() {
            return Err(JpegError::Library(
                "could not create a TurboJPEG compressor".into(),
            ));
        }
        Ok(Self(handle))
    }

    fn last_error(&self) -> String {
        // SAFETY: the handle is valid; the returned string is owned by it and
        // copied before the next call.
        unsafe {
            let msg = tj::tjGetErrorStr2(self.0);
            if msg.is_null() {
                "unknown error".into()
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            }
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitCompress() and is destroyed once.
        unsafe {
            tj::tjDestroy(self.0);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The integration tests run whichever conversion loops the CPU picks; the
    /// portable ones must give the same samples as the AVX2 ones.
    #[test]
    fn portable_and_avx2_conversions_agree() {
        gst::init().unwrap();
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let cases = [
            (VideoFormat::I420, "bt709"),
            (VideoFormat::Nv12, "bt601"),
            (VideoFormat::Yuy2, "bt2020"),
            (VideoFormat::Y444, "1:3:5:1"),
            (VideoFormat::Gray8, "2:4:0:0"),
        ];
        for (format, colorimetry) in cases {
            let info = gst_video::VideoInfo::builder(format, 67, 41)
                .colorimetry(&colorimetry.parse().unwrap())
                .build()
                .unwrap();
            let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
            buffer
                .get_mut()
                .unwrap()
                .map_writable()
                .unwrap()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i * 7919 % 251) as u8);
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).unwrap();
            let conversion = Conversion::new(&info).expect("a conversion");
            let n = info.format_info().n_components();
            let sources: Vec<_> = (0..n).map(|c| Component::new(&frame, c).unwrap()).collect();
            let finfo = info.format_info();
            let sub = if n == 1 {
                (0, 0)
            } else {
                (finfo.w_sub()[1], finfo.h_sub()[1])
            };
            let (cw, ch) = (67usize.div_ceil(1 << sub.0), 41usize.div_ceil(1 << sub.1));
            let dims = [(cw << sub.0, ch << sub.1), (cw, ch), (cw, ch)];

            let mut portable = Scratch::default();
            conversion.convert_rows(&sources, dims, sub.0, &mut portable);
            let mut avx2 = Scratch::default();
            // SAFETY: the CPU has AVX2, checked above.
            unsafe { conversion.convert_avx2(&sources, dims, sub.0, &mut avx2) };
            assert_eq!(portable.planes, avx2.planes, "{format:?} {colorimetry}");
            assert!(!portable.planes[0].is_empty());
        }
    }
}
