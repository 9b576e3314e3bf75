// SPDX-License-Identifier: MPL-2.0

//! The plugin's JPEG encoder (`gstanalyticsmqtt::internals::JpegEncoder`): every supported
//! format is encoded from a frame of known colours and decoded by an independent decoder
//! (`jpeg-decoder`), and the colours must come back.
//!
//! The test frames are painted in RGB and converted to the format under test by
//! GStreamer's own `VideoConverter`, into buffers with padded strides, gaps between
//! the planes and garbage in all the bytes that are not picture: an encoder that
//! reads the wrong stride, plane or component, or gets the colour range or matrix
//! wrong, shows far larger errors than JPEG's.

use std::sync::Once;

use gst_video::prelude::*;
use gst_video::{VideoColorimetry, VideoFormat, VideoInfo};
use gstanalyticsmqtt::internals::{is_supported, JpegEncoder, JpegError, SUPPORTED_FORMATS};

/// Flat colour blocks, painted in a 4 x 2 grid. Saturated colours show swapped
/// components and wrong matrices, black and white a wrong range.
const COLOURS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [0, 0, 0],
    [230, 20, 20],
    [20, 200, 30],
    [30, 40, 220],
    [240, 220, 40],
    [200, 120, 60],
    [90, 90, 90],
];
const GRID: (usize, usize) = (4, 2);

/// Largest mean absolute error per channel inside a block that JPEG may cause.
const TOLERANCE: f64 = 6.0;
const QUALITY: u8 = 95;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| gst::init().unwrap());
}

fn block_of(x: usize, y: usize, width: usize, height: usize) -> usize {
    let col = x * GRID.0 / width;
    let row = y * GRID.1 / height;
    row * GRID.0 + col
}

/// An RGB frame of the colour blocks.
fn rgb_frame(width: u32, height: u32) -> gst_video::VideoFrame<gst_video::video_frame::Readable> {
    let info = VideoInfo::builder(VideoFormat::Rgb, width, height)
        .build()
        .unwrap();
    let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
    {
        let buffer = buffer.get_mut().unwrap();
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data_mut(0).unwrap();
        let (w, h) = (width as usize, height as usize);
        for y in 0..h {
            for x in 0..w {
                let colour = COLOURS[block_of(x, y, w, h)];
                data[y * stride + x * 3..][..3].copy_from_slice(&colour);
            }
        }
    }
    gst_video::VideoFrame::from_buffer_readable(buffer, &info).unwrap()
}

/// Layout of the frame under test.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// GStreamer's default strides and offsets.
    Default,
    /// Every stride longer than needed, a gap before and between the planes.
    Padded,
}

/// The info of a `format` frame laid out as `layout` says; its size covers the
/// padding.
fn layout_info(
    format: VideoFormat,
    (width, height): (u32, u32),
    colorimetry: Option<&str>,
    layout: Layout,
) -> VideoInfo {
    let mut builder = VideoInfo::builder(format, width, height);
    let colorimetry = colorimetry.map(|c| c.parse::<VideoColorimetry>().unwrap());
    if let Some(colorimetry) = &colorimetry {
        builder = builder.colorimetry(colorimetry);
    }
    let info = builder.build().unwrap();
    let Layout::Padded = layout else {
        return info;
    };

    let finfo = info.format_info();
    let n_planes = info.n_planes() as usize;
    let mut strides = [0i32; 4];
    let mut offsets = [0usize; 4];
    let mut end = 64;
    for plane in 0..n_planes {
        // A component in this plane gives the plane's height.
        let comp = (0..finfo.n_components())
            .find(|&c| finfo.plane()[c as usize] as usize == plane)
            .unwrap();
        let rows = info.comp_height(comp as u8) as usize;
        strides[plane] = info.stride()[plane] + 36 + 4 * plane as i32;
        offsets[plane] = end;
        end += strides[plane] as usize * rows + 100;
    }
    let mut builder = VideoInfo::builder(format, width, height)
        .stride(&strides[..n_planes])
        .offset(&offsets[..n_planes])
        .size(end);
    if let Some(colorimetry) = &colorimetry {
        builder = builder.colorimetry(colorimetry);
    }
    builder.build().unwrap()
}

/// The colour blocks as a `format` frame laid out as `info` says, every byte that
/// is not picture set to garbage.
fn test_buffer(info: &VideoInfo) -> gst::Buffer {
    let src = rgb_frame(info.width(), info.height());
    let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
    {
        let buffer = buffer.get_mut().unwrap();
        let mut map = buffer.map_writable().unwrap();
        for (i, b) in map.iter_mut().enumerate() {
            *b = if i % 3 == 0 {
                255
            } else {
                (i * 37 % 256) as u8
            };
        }
    }
    let mut dst = gst_video::VideoFrame::from_buffer_writable(buffer, info).unwrap();
    let converter = gst_video::VideoConverter::new(src.info(), info, None).unwrap();
    converter.frame(&src, &mut dst);
    dst.into_buffer()
}

/// Decoded picture: width, height, samples per pixel, samples.
struct Decoded {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

fn decode(jpeg: &[u8]) -> Decoded {
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    let pixels = decoder.decode().expect("a valid JPEG image");
    let info = decoder.info().unwrap();
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::L8 => 1,
        other => panic!("unexpected JPEG pixel format {other:?}"),
    };
    Decoded {
        width: usize::from(info.width),
        height: usize::from(info.height),
        channels,
        pixels,
    }
}

/// Pixels well inside each colour block: JPEG smears colour across the block
/// edges, chroma subsampling more so.
fn block_interiors(w: usize, h: usize) -> impl Iterator<Item = (usize, Vec<(usize, usize)>)> {
    let (bw, bh) = (w / GRID.0, h / GRID.1);
    let margin = |size: usize| (size / 4).min(8);
    (0..COLOURS.len()).map(move |block| {
        let (col, row) = (block % GRID.0, block / GRID.0);
        // Blocks start where `block_of` changes, which rounds down.
        let x0 = (col * w).div_ceil(GRID.0);
        let y0 = (row * h).div_ceil(GRID.1);
        let pixels: Vec<_> = (y0 + margin(bh)..y0 + bh - margin(bh))
            .flat_map(|y| (x0 + margin(bw)..x0 + bw - margin(bw)).map(move |x| (x, y)))
            .collect();
        assert!(pixels.len() >= 16, "block {block} too small to measure");
        assert!(pixels.iter().all(|&(x, y)| block_of(x, y, w, h) == block));
        (block, pixels)
    })
}

/// The largest mean absolute error, over blocks and channels, of the decoded
/// picture inside the blocks, and the block. Grey pictures should hold BT.601 luma.
fn worst_block_error(decoded: &Decoded) -> (f64, usize) {
    let (w, h) = (decoded.width, decoded.height);
    let mut worst = (0.0, 0);
    for (block, pixels) in block_interiors(w, h) {
        let [r, g, b] = COLOURS[block].map(f64::from);
        let expected = match decoded.channels {
            1 => vec![0.299 * r + 0.587 * g + 0.114 * b],
            _ => vec![r, g, b],
        };
        for (c, expected) in expected.into_iter().enumerate() {
            let error = pixels
                .iter()
                .map(|&(x, y)| {
                    let got = decoded.pixels[(y * w + x) * decoded.channels + c];
                    (f64::from(got) - expected).abs()
                })
                .sum::<f64>()
                / pixels.len() as f64;
            if error > worst.0 {
                worst = (error, block);
            }
        }
    }
    worst
}

/// Encodes the colour blocks as `format` and checks what comes back.
fn check(format: VideoFormat, size: (u32, u32), colorimetry: Option<&str>, layout: Layout) {
    check_info(&layout_info(format, size, colorimetry, layout));
}

fn check_info(info: &VideoInfo) {
    let buffer = test_buffer(info);
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, info).unwrap();

    let mut encoder = JpegEncoder::new(info, QUALITY).unwrap();
    let mut jpeg = Vec::new();
    encoder.encode(&frame, &mut jpeg).unwrap();

    let decoded = decode(&jpeg);
    let what = format!(
        "{} {}x{} {} strides {:?} offsets {:?}",
        info.format().to_str(),
        info.width(),
        info.height(),
        info.colorimetry(),
        info.stride(),
        info.offset(),
    );
    assert_eq!(
        (decoded.width, decoded.height),
        (info.width() as usize, info.height() as usize),
        "{what}"
    );
    let expected_channels = if info.format() == VideoFormat::Gray8 {
        1
    } else {
        3
    };
    assert_eq!(decoded.channels, expected_channels, "{what}");
    let (error, block) = worst_block_error(&decoded);
    assert!(
        error < TOLERANCE,
        "{what}: mean error {error:.1} in block {block} (colour {:?})",
        COLOURS[block]
    );
}

#[test]
fn every_format_with_padded_strides() {
    init();
    for &format in SUPPORTED_FORMATS {
        check(format, (96, 64), None, Layout::Padded);
    }
}

#[test]
fn every_format_with_default_strides() {
    init();
    for &format in SUPPORTED_FORMATS {
        check(format, (128, 64), None, Layout::Default);
    }
}

#[test]
fn every_format_at_odd_size() {
    init();
    for &format in SUPPORTED_FORMATS {
        check(format, (101, 75), None, Layout::Padded);
        check(format, (101, 75), None, Layout::Default);
    }
}

#[test]
fn yuv_colorimetries() {
    init();
    let yuv = SUPPORTED_FORMATS
        .iter()
        .filter(|f| gst_video::VideoFormatInfo::from_format(**f).is_yuv());
    for &format in yuv {
        // Full range BT.601 is compressed in place, without conversion.
        for colorimetry in ["bt709", "bt601", "bt2020", "1:4:0:0", "1:3:5:1"] {
            check(format, (96, 64), Some(colorimetry), Layout::Padded);
            check(format, (67, 41), Some(colorimetry), Layout::Default);
        }
    }
}

#[test]
fn grey_ranges() {
    init();
    for colorimetry in ["1:4:0:0", "2:4:0:0"] {
        check(
            VideoFormat::Gray8,
            (96, 64),
            Some(colorimetry),
            Layout::Padded,
        );
        check(
            VideoFormat::Gray8,
            (67, 41),
            Some(colorimetry),
            Layout::Default,
        );
    }
}

#[test]
fn rgb_100_wide_with_stride_304() {
    init();
    let info = VideoInfo::builder(VideoFormat::Rgb, 100, 64)
        .stride(&[304])
        .offset(&[0])
        .size(304 * 64)
        .build()
        .unwrap();
    assert_eq!(info.stride()[0], 304);
    check_info(&info);
}

#[test]
fn without_colour_conversion_limited_range_stays_limited() {
    init();
    let info = layout_info(VideoFormat::I420, (96, 64), Some("bt601"), Layout::Padded);
    let buffer = test_buffer(&info);
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).unwrap();
    let mut encoder = JpegEncoder::new(&info, QUALITY).unwrap();
    encoder.set_colour_conversion(false);
    let mut jpeg = Vec::new();
    encoder.encode(&frame, &mut jpeg).unwrap();
    let decoded = decode(&jpeg);
    // White is Y 235 in limited range and comes out as it is.
    let white = &decoded.pixels[(16 * 96 + 8) * 3..][..3];
    assert!(white.iter().all(|&c| (228..=242).contains(&c)), "{white:?}");

    encoder.set_colour_conversion(true);
    jpeg.clear();
    encoder.encode(&frame, &mut jpeg).unwrap();
    let decoded = decode(&jpeg);
    let white = &decoded.pixels[(16 * 96 + 8) * 3..][..3];
    assert!(white.iter().all(|&c| c >= 250), "{white:?}");
}

#[test]
fn encoder_is_reusable_and_appends() {
    init();
    for format in [VideoFormat::Nv12, VideoFormat::Bgrx, VideoFormat::Yuy2] {
        let info = layout_info(format, (101, 75), None, Layout::Padded);
        let buffer = test_buffer(&info);
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).unwrap();
        let mut encoder = JpegEncoder::new(&info, QUALITY).unwrap();

        let mut first = Vec::new();
        encoder.encode(&frame, &mut first).unwrap();
        let mut out = b"prefix".to_vec();
        encoder.encode(&frame, &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(&out[6..], &first[..], "{format:?}: second frame differs");
        assert_eq!(&first[..2], &[0xff, 0xd8], "JPEG start of image");
        assert_eq!(
            &first[first.len() - 2..],
            &[0xff, 0xd9],
            "JPEG end of image"
        );
    }
}

#[test]
fn unsupported_format_is_named() {
    init();
    let format = VideoFormat::I42010le;
    assert!(!is_supported(format));
    let info = VideoInfo::builder(format, 64, 64).build().unwrap();
    let err = JpegEncoder::new(&info, QUALITY).err().unwrap();
    assert_eq!(err, JpegError::UnsupportedFormat(format));
    assert!(err.to_string().contains("I420_10LE"), "{err}");
}

#[test]
fn invalid_quality_is_refused() {
    init();
    let info = VideoInfo::builder(VideoFormat::I420, 64, 64)
        .build()
        .unwrap();
    for quality in [0, 101] {
        assert_eq!(
            JpegEncoder::new(&info, quality).err(),
            Some(JpegError::InvalidQuality(quality))
        );
    }
    assert!(JpegEncoder::new(&info, 1).is_ok());
    assert!(JpegEncoder::new(&info, 100).is_ok());
}

#[test]
fn frame_of_other_size_is_refused() {
    init();
    let small = VideoInfo::builder(VideoFormat::I420, 64, 64)
        .build()
        .unwrap();
    let large = VideoInfo::builder(VideoFormat::I420, 128, 64)
        .build()
        .unwrap();
    let buffer = test_buffer(&small);
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &small).unwrap();
    let mut out = Vec::new();
    let err = JpegEncoder::new(&large, QUALITY)
        .unwrap()
        .encode(&frame, &mut out)
        .unwrap_err();
    assert!(matches!(err, JpegError::FrameMismatch { .. }), "{err}");
    assert!(out.is_empty());
}
