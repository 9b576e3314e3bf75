// SPDX-License-Identifier: MPL-2.0

//! The libjpeg-turbo calls, through its TurboJPEG API (`turbojpeg-sys`).
//!
//! [`Compressor`] owns a TurboJPEG instance and the buffer it writes into, sized
//! for the largest image so that libjpeg-turbo never reallocates it. Its methods
//! are safe: before each call they check that every row libjpeg-turbo reads lies
//! within the samples handed to it.

use std::ffi::CStr;
use std::os::raw::{c_int, c_uchar, c_ulong};

use gst_video::VideoFormat;
use turbojpeg_sys as tj;

use super::planes::check_extent;
use super::JpegError;

/// The same DCT as `jpegenc` uses by default.
const FLAGS: c_int = (tj::TJFLAG_NOREALLOC | tj::TJFLAG_FASTDCT) as c_int;

/// Chroma subsampling of a JPEG image.
#[derive(Clone, Copy)]
pub(super) enum Subsampling {
    /// Luma only.
    Gray,
    Yuv444,
    Yuv422,
    Yuv420,
}

impl Subsampling {
    /// Colour with the chroma subsampled by `1 << sub.0` horizontally and
    /// `1 << sub.1` vertically, if JPEG images can have that.
    pub(super) fn colour(sub: (u32, u32)) -> Option<Self> {
        match sub {
            (0, 0) => Some(Self::Yuv444),
            (1, 0) => Some(Self::Yuv422),
            (1, 1) => Some(Self::Yuv420),
            _ => None,
        }
    }

    fn tj(self) -> c_int {
        (match self {
            Self::Gray => tj::TJSAMP_TJSAMP_GRAY,
            Self::Yuv444 => tj::TJSAMP_TJSAMP_444,
            Self::Yuv422 => tj::TJSAMP_TJSAMP_422,
            Self::Yuv420 => tj::TJSAMP_TJSAMP_420,
        }) as c_int
    }

    fn n_components(self) -> usize {
        match self {
            Self::Gray => 1,
            _ => 3,
        }
    }
}

/// A packed RGB layout libjpeg-turbo reads.
#[derive(Clone, Copy)]
pub(super) struct PixelFormat {
    tj: c_int,
    /// Bytes per pixel.
    bpp: usize,
}

/// The libjpeg-turbo pixel format of `format`, if it is packed RGB.
pub(super) fn packed_rgb(format: VideoFormat) -> Option<PixelFormat> {
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
    Some(PixelFormat {
        tj: pf as c_int,
        bpp,
    })
}

/// A TurboJPEG compressor of images of one size, subsampling and quality.
pub(super) struct Compressor {
    handle: tj::tjhandle,
    width: c_int,
    height: c_int,
    subsampling: Subsampling,
    quality: c_int,
    /// Destination of libjpeg-turbo, sized for the worst case so it never reallocates.
    jpeg: Vec<u8>,
}

// SAFETY: a TurboJPEG instance holds no thread-local state; it may move between
// threads as long as only one uses it at a time, which `&mut self` ensures.
unsafe impl Send for Compressor {}

impl Compressor {
    /// Prepares the compression of `width` x `height` images at `quality` (1 to 100).
    pub(super) fn new(
        width: u32,
        height: u32,
        subsampling: Subsampling,
        quality: u8,
    ) -> Result<Self, JpegError> {
        let invalid_size = || JpegError::InvalidSize { width, height };
        let w = c_int::try_from(width).map_err(|_| invalid_size())?;
        let h = c_int::try_from(height).map_err(|_| invalid_size())?;
        // SAFETY: plain arithmetic on valid arguments.
        let jpeg_size = unsafe { tj::tjBufSize(w, h, subsampling.tj()) };
        if jpeg_size == c_ulong::MAX {
            return Err(invalid_size());
        }
        // SAFETY: no preconditions; a null handle is checked below.
        let handle = unsafe { tj::tjInitCompress() };
        if handle.is_null() {
            return Err(JpegError::Library(
                "could not create a TurboJPEG compressor".into(),
            ));
        }
        Ok(Self {
            handle,
            width: w,
            height: h,
            subsampling,
            quality: c_int::from(quality),
            jpeg: vec![0; jpeg_size as usize],
        })
    }

    /// Compresses the packed RGB image in `data`, rows `stride` bytes apart, and
    /// returns the JPEG image.
    pub(super) fn compress_packed(
        &mut self,
        data: &[u8],
        stride: usize,
        pixel_format: PixelFormat,
    ) -> Result<&[u8], JpegError> {
        let row_bytes = self.width as usize * pixel_format.bpp;
        let stride = checked_stride(0, data, stride, row_bytes, self.height as usize)?;

        let mut dest = self.jpeg.as_mut_ptr();
        let mut len: c_ulong = 0;
        // SAFETY: `data` holds `height` rows of `width * bpp` bytes, `stride` apart
        // (checked above). The destination holds `tjBufSize()` bytes for this size
        // and subsampling, the most libjpeg-turbo writes, and NOREALLOC keeps it
        // from reallocating it.
        let ret = unsafe {
            tj::tjCompress2(
                self.handle,
                data.as_ptr(),
                self.width,
                stride,
                self.height,
                pixel_format.tj,
                &mut dest,
                &mut len,
                self.subsampling.tj(),
                self.quality,
                FLAGS,
            )
        };
        self.finish(ret, dest, len)
    }

    /// Compresses the luma (and chroma) planes, each given as its samples and
    /// row stride, and returns the JPEG image.
    pub(super) fn compress_planes(
        &mut self,
        planes: &[(&[u8], usize)],
    ) -> Result<&[u8], JpegError> {
        let subsamp = self.subsampling.tj();
        if planes.len() != self.subsampling.n_components() {
            return Err(JpegError::BadLayout(format!(
                "{} planes for a JPEG image of {} components",
                planes.len(),
                self.subsampling.n_components()
            )));
        }
        let mut ptrs = [std::ptr::null::<c_uchar>(); 3];
        let mut strides = [0 as c_int; 3];
        for (c, &(data, stride)) in planes.iter().enumerate() {
            let comp = c as c_int;
            // SAFETY: plain arithmetic on valid arguments.
            let (w, h) = unsafe {
                (
                    tj::tjPlaneWidth(comp, self.width, subsamp),
                    tj::tjPlaneHeight(comp, self.height, subsamp),
                )
            };
            let (Ok(w), Ok(h)) = (usize::try_from(w), usize::try_from(h)) else {
                return Err(JpegError::Library(format!("no size of plane {c}")));
            };
            strides[c] = checked_stride(c as u32, data, stride, w, h)?;
            ptrs[c] = data.as_ptr();
        }

        let mut dest = self.jpeg.as_mut_ptr();
        let mut len: c_ulong = 0;
        // SAFETY: each of the planes holds the rows of the plane sizes libjpeg-turbo
        // reads (`tjPlaneWidth()` x `tjPlaneHeight()`), `strides[c]` apart, checked
        // above, and there are as many planes as the subsampling has components. The
        // destination holds `tjBufSize()` bytes for this size and subsampling and
        // NOREALLOC keeps libjpeg-turbo from reallocating it.
        let ret = unsafe {
            tj::tjCompressFromYUVPlanes(
                self.handle,
                ptrs.as_mut_ptr(),
                self.width,
                strides.as_ptr(),
                self.height,
                subsamp,
                &mut dest,
                &mut len,
                self.quality,
                FLAGS,
            )
        };
        self.finish(ret, dest, len)
    }

    fn finish(&self, ret: c_int, dest: *mut c_uchar, len: c_ulong) -> Result<&[u8], JpegError> {
        if ret != 0 {
            return Err(JpegError::Library(self.last_error()));
        }
        if !std::ptr::eq(dest, self.jpeg.as_ptr()) || len as usize > self.jpeg.len() {
            return Err(JpegError::Library(
                "output buffer was replaced despite NOREALLOC".into(),
            ));
        }
        Ok(&self.jpeg[..len as usize])
    }

    fn last_error(&self) -> String {
        // SAFETY: the handle is valid; the returned string is owned by it and
        // copied before the next call.
        unsafe {
            let msg = tj::tjGetErrorStr2(self.handle);
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
            tj::tjDestroy(self.handle);
        }
    }
}

/// Checks that `data` holds `rows` rows of `row_bytes`, `stride` apart, and
/// returns the stride as libjpeg-turbo takes it.
fn checked_stride(
    plane: u32,
    data: &[u8],
    stride: usize,
    row_bytes: usize,
    rows: usize,
) -> Result<c_int, JpegError> {
    check_extent(plane, data.len(), stride, row_bytes, rows)?;
    c_int::try_from(stride)
        .map_err(|_| JpegError::BadLayout(format!("plane {plane} has stride {stride}")))
}
