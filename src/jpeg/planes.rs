// SPDX-License-Identifier: MPL-2.0

//! The samples of a raw frame, plane by plane and component by component.
//!
//! A [`Component`] is one colour component of a frame, checked to lie within its
//! plane; its rows are read in place or gathered from interleaved components.
//! [`Scratch`] holds the planes and rows built from frame to frame.

use std::os::raw::c_int;

use gst_video::prelude::*;

use super::JpegError;

/// The bytes of plane `plane` of `frame`.
pub(super) fn plane_data<'a>(
    frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
    plane: u32,
) -> Result<&'a [u8], JpegError> {
    frame
        .plane_data(plane)
        .map_err(|err| JpegError::BadLayout(format!("plane {plane}: {err}")))
}

/// The row stride of plane `plane` of `frame`, positive and within a C `int`.
pub(super) fn plane_stride(
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
pub(super) fn check_extent(
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
pub(super) struct Scratch {
    /// Y, Cb, Cr planes for frames that cannot be compressed in place.
    pub(super) planes: [Vec<u8>; 3],
    /// Rows gathered from interleaved components.
    pub(super) rows: [Vec<u8>; 2],
    /// Chroma terms of the luma of one row, for a matrix conversion.
    pub(super) offsets: Vec<u16>,
}

/// One colour component of a frame: its samples are `data[x * pstride]` in rows
/// `stride` apart.
pub(super) struct Component<'a> {
    data: &'a [u8],
    stride: usize,
    pstride: usize,
    width: usize,
    height: usize,
}

impl<'a> Component<'a> {
    pub(super) fn new(
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

    /// The samples and their row stride, if libjpeg-turbo can read `width` x
    /// `height` of them in place.
    pub(super) fn direct(&self, width: usize, height: usize) -> Option<(&'a [u8], usize)> {
        (self.pstride == 1 && self.width == width && self.height == height)
            .then_some((self.data, self.stride))
    }

    /// Row `y` (the last row past the bottom) as `width` contiguous samples,
    /// gathered into `tmp` if the component is interleaved with others.
    pub(super) fn row<'t>(&self, y: usize, tmp: &'t mut Vec<u8>) -> &'t [u8]
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
pub(super) fn fill_plane(
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
