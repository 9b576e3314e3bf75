// SPDX-License-Identifier: MPL-2.0

//! Colour conversion of YUV samples to the colours of JFIF: full range, BT.601.
//!
//! Plain fixed-point loops over rows that the compiler vectorises, compiled a
//! second time for AVX2 where the CPU has it: that path is the one `unsafe` here.

use gst_video::{VideoColorMatrix, VideoColorRange};

use super::planes::{Component, Scratch};

/// Fixed-point precision (bits) of the luma gain: luma stays in 16 bits, which
/// keeps the loop over the most samples wide when vectorised.
const LUMA_SHIFT: u32 = 7;
const LUMA_ROUND: u16 = 1 << (LUMA_SHIFT - 1);
/// Fixed-point precision (bits) of the chroma matrix.
const CHROMA_SHIFT: u32 = 14;
/// Added to the chroma terms of luma (Q7) to keep them positive: 64 levels.
const MIX_BIAS: i32 = 64 << LUMA_SHIFT;

/// Luma weights of red and blue in BT.601, the matrix of JFIF.
const JFIF_KR: f64 = 0.299;
const JFIF_KB: f64 = 0.114;

/// Conversion of YUV samples to full range BT.601, the colours of JFIF.
///
/// Plain loops over rows in fixed point, which the compiler vectorises: this must
/// cost little next to the compression itself.
pub(super) struct Conversion {
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
    pub(super) fn new(info: &gst_video::VideoInfo) -> Option<Self> {
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
    pub(super) fn convert(
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use gst_video::VideoFormat;

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
