//! Image decoding: PNG, JPEG, BMP and WebP files (recognised by content, not by name) become
//! `[H, W, 3]` RGB `u8` arrays.
//!
//! Every image comes out as RGB whatever it was stored as, the way torchvision users write
//! `Image.open(p).convert("RGB")`: greyscale is copied into the three channels, an alpha channel
//! is dropped, 16-bit channels are scaled to 8 bits. A file that is empty, of an unknown format,
//! truncated or corrupt is an error naming the file; nothing is returned half-decoded.
//!
//! ```
//! let mut png = Vec::new();
//! image::RgbImage::from_pixel(4, 2, image::Rgb([255, 0, 0]))
//!     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
//! let pixels = mm_data::image::decode_image_bytes(&png, "red.png".as_ref())?;
//! assert_eq!(pixels.shape(), &[2, 4, 3]);
//! assert_eq!(pixels[[1, 3, 0]], 255);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Cursor;
use std::path::Path;

use ndarray::Array3;

use crate::error::{Error, Result};

/// Reads and decodes an image file into `[H, W, 3]` RGB.
pub fn decode_image(path: impl AsRef<Path>) -> Result<Array3<u8>> {
    let path = path.as_ref();
    let bytes = crate::fs::read_capped(path, crate::fs::FileKind::Image)?;
    decode_image_bytes(&bytes, path)
}

/// Decodes image bytes into `[H, W, 3]` RGB; `path` names them in errors.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<Array3<u8>> {
    if bytes.is_empty() {
        return Err(Error::decode(path, "empty file (0 bytes)"));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        Error::decode(path, "not a recognised image format (PNG, JPEG, BMP or WebP expected)")
    })?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing: refuse it here.
        return Err(Error::decode(path, "truncated JPEG (no end-of-image marker)"));
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(image::Limits::default());
    let decoded = reader
        .decode()
        .map_err(|e| Error::decode(path, format!("corrupt or truncated {format:?} image: {e}")))?;
    let rgb = decoded.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Array3::from_shape_vec((h, w, 3), rgb.into_raw())
        .map_err(|e| Error::decode(path, format!("unexpected pixel buffer: {e}")))
}

/// Whether a JPEG stream has its end-of-image marker (`FF D9`), allowing the trailing bytes
/// some cameras and editors append after it.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Converts `[H, W, 3]` `u8` pixels to `[3, H, W]` `f32` in `[0, 1]`, the layout and scale
/// image models take.
pub fn to_chw_f32(pixels: &Array3<u8>) -> Array3<f32> {
    let (h, w, c) = pixels.dim();
    let src = pixels.as_standard_layout();
    let plane = h * w;
    let mut dst = vec![0.0f32; c * plane];
    // One pass over the interleaved pixels, writing each channel's plane.
    for (i, px) in src.as_slice().expect("standard layout").chunks_exact(c.max(1)).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            dst[ch * plane + i] = f32::from(v) / 255.0;
        }
    }
    Array3::from_shape_vec((c, h, w), dst).expect("c·h·w values")
}

/// Crops `[H, W, 3]` pixels to the box (`top`, `left`, `height`, `width`) and resizes it to
/// `size = (height, width)` with a bilinear filter, anti-aliased when shrinking (as PIL's
/// `BILINEAR` resize that torchvision applies to PIL images), resampling in 8 bits as PIL
/// does; returns `[3, size.0, size.1]` `f32` in `[0, 1]`. The resize runs on SIMD code
/// (`fast_image_resize`), the step that dominates an image pipeline's time.
///
/// # Panics
/// If the box does not lie inside the image or a side is zero (a programmer error).
pub fn crop_resize_chw(
    pixels: &Array3<u8>,
    top: usize,
    left: usize,
    height: usize,
    width: usize,
    size: (usize, usize),
) -> Array3<f32> {
    use fast_image_resize::{
        images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let (h, w, c) = pixels.dim();
    assert!(
        c == 3 && height > 0 && width > 0 && top + height <= h && left + width <= w,
        "crop box outside the image"
    );
    assert!(size.0 > 0 && size.1 > 0, "output size must be positive");
    if (height, width) == size {
        let crop = pixels.slice(ndarray::s![top..top + height, left..left + width, ..]);
        return to_chw_f32(&crop.to_owned());
    }
    let src_buf = pixels.as_standard_layout();
    let src = ImageRef::new(
        w as u32,
        h as u32,
        src_buf.as_slice().expect("standard layout"),
        PixelType::U8x3,
    )
    .expect("buffer of h·w·3 bytes");
    let mut dst = Image::new(size.1 as u32, size.0 as u32, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left as f64, top as f64, width as f64, height as f64);
    thread_local! {
        static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
    }
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .expect("same pixel type, crop inside the image");
    let hwc = Array3::from_shape_vec((size.0, size.1, 3), dst.into_vec()).expect("h·w·3 bytes");
    to_chw_f32(&hwc)
}

/// Resizes `[H, W, 3]` pixels so that the shorter side is `shortest` (the longer one
/// `⌊shortest · long / short⌋`) with a bicubic filter (PIL's `BICUBIC`, resampling in 8 bits),
/// then cuts the centre `crop = (height, width)` out (top-left at half the margins, rounded
/// down): what transformers' CLIP image processor does before rescaling. Returns
/// `[3, crop.0, crop.1]` `f32` in `[0, 1]`.
///
/// # Panics
/// If a side is zero or `crop` is larger than the resized image (a programmer error; CLIP's
/// crop is never larger than its shortest side).
pub fn resize_shortest_center_crop_chw(
    pixels: &Array3<u8>,
    shortest: usize,
    crop: (usize, usize),
) -> Array3<f32> {
    use fast_image_resize::{
        images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let (h, w, c) = pixels.dim();
    assert!(c == 3 && h > 0 && w > 0 && shortest > 0, "empty image or size");
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (shortest as f64 * long as f64 / short as f64) as usize;
    let (nh, nw) = if w <= h { (new_long, shortest) } else { (shortest, new_long) };
    assert!(crop.0 <= nh && crop.1 <= nw && crop.0 > 0 && crop.1 > 0, "crop larger than the image");
    // PIL resizes horizontally, rounds to 8 bits, then vertically: two passes in that order
    // give its numbers (one pass of fast_image_resize rounds elsewhere, a level off for about
    // a quarter of the pixels).
    let pass = |src: &Array3<u8>, to: (usize, usize)| -> Array3<u8> {
        let (sh, sw, _) = src.dim();
        if (sh, sw) == to {
            return src.clone();
        }
        let buf = src.as_standard_layout();
        let from = ImageRef::new(
            sw as u32,
            sh as u32,
            buf.as_slice().expect("standard layout"),
            PixelType::U8x3,
        )
        .expect("buffer of h·w·3 bytes");
        let mut dst = Image::new(to.1 as u32, to.0 as u32, PixelType::U8x3);
        let options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
        Resizer::new().resize(&from, &mut dst, &options).expect("same pixel type");
        Array3::from_shape_vec((to.0, to.1, 3), dst.into_vec()).expect("h·w·3 bytes")
    };
    let source = pixels.as_standard_layout().into_owned();
    let resized = pass(&pass(&source, (h, nw)), (nh, nw));
    let (top, left) = ((nh - crop.0) / 2, (nw - crop.1) / 2);
    let cut = resized.slice(ndarray::s![top..top + crop.0, left..left + crop.1, ..]);
    to_chw_f32(&cut.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageFormat};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).expect("encode");
        out
    }

    fn gradient() -> image::RgbImage {
        image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([(x * 8) as u8, (y * 10) as u8, 128]))
    }

    #[test]
    fn lossless_formats_round_trip_exactly() {
        let img = DynamicImage::ImageRgb8(gradient());
        for format in [ImageFormat::Png, ImageFormat::Bmp, ImageFormat::WebP] {
            let bytes = encode(&img, format);
            let px = decode_image_bytes(&bytes, Path::new("x")).expect("decode");
            assert_eq!(px.shape(), &[24, 32, 3], "{format:?}");
            assert_eq!(
                px.as_slice().expect("contiguous"),
                gradient().as_raw().as_slice(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn jpeg_decodes_close_to_the_original() {
        let bytes = encode(&DynamicImage::ImageRgb8(gradient()), ImageFormat::Jpeg);
        let px = decode_image_bytes(&bytes, Path::new("x.jpg")).expect("decode");
        let orig = gradient();
        let mean_err: f64 = px
            .iter()
            .zip(orig.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / px.len() as f64;
        assert!(mean_err < 6.0, "mean abs error {mean_err}");
    }

    #[test]
    fn grey_and_rgba_become_rgb() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 2, image::Luma([77])));
        let px =
            decode_image_bytes(&encode(&grey, ImageFormat::Png), Path::new("g.png")).expect("grey");
        assert!(px.iter().all(|&v| v == 77));
        assert_eq!(px.shape(), &[2, 3, 3]);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            2,
            image::Rgba([10, 20, 30, 0]),
        ));
        let px =
            decode_image_bytes(&encode(&rgba, ImageFormat::Png), Path::new("a.png")).expect("rgba");
        assert_eq!(px.slice(ndarray::s![0, 0, ..]).to_vec(), vec![10, 20, 30]);
        let wide = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            1,
            1,
            image::Rgb([65535u16, 0, 32896]),
        ));
        let px = decode_image_bytes(&encode(&wide, ImageFormat::Png), Path::new("w.png"))
            .expect("16-bit");
        assert_eq!(px.as_slice().expect("contiguous"), &[255, 0, 128]);
    }

    #[test]
    fn broken_files_are_errors_that_name_the_file() {
        let img = DynamicImage::ImageRgb8(gradient());
        let msg = |b: &[u8], name: &str| {
            decode_image_bytes(b, Path::new(name)).expect_err("must fail").to_string()
        };
        assert_eq!(msg(b"", "empty.png"), "empty.png: empty file (0 bytes)");
        assert!(msg(b"hello, world", "t.png").contains("not a recognised image format"));
        for (format, name) in [
            (ImageFormat::Jpeg, "cut.jpg"),
            (ImageFormat::Png, "cut.png"),
            (ImageFormat::WebP, "cut.webp"),
        ] {
            let bytes = encode(&img, format);
            let m = msg(&bytes[..bytes.len() / 2], name);
            assert!(m.starts_with(name), "{m}");
        }
        // Cut inside the entropy-coded scan: the JPEG decoder alone would return a greyed image.
        let jpeg = encode(&img, ImageFormat::Jpeg);
        assert_eq!(
            msg(&jpeg[..jpeg.len() - 50], "tail.jpg"),
            "tail.jpg: truncated JPEG (no end-of-image marker)"
        );
        let missing = decode_image("/no/such/image.png").expect_err("missing").to_string();
        assert!(missing.contains("/no/such/image.png"), "{missing}");
    }

    #[test]
    fn chw_layout_and_scale() {
        let mut px = Array3::<u8>::zeros((2, 3, 3));
        px[[1, 2, 0]] = 255;
        px[[0, 1, 2]] = 51;
        let t = to_chw_f32(&px);
        assert_eq!(t.dim(), (3, 2, 3));
        assert_eq!(t[[0, 1, 2]], 1.0);
        assert!((t[[2, 0, 1]] - 0.2).abs() < 1e-7);
        assert_eq!(t.sum(), 1.2);
    }

    #[test]
    fn crop_resize_is_exact_at_scale_one_and_close_to_the_image_crate_elsewhere() {
        let px =
            Array3::from_shape_fn((40, 50, 3), |(y, x, c)| ((x * 5 + y * 3 + c * 60) % 256) as u8);
        // Same size: a plain crop.
        let same = crop_resize_chw(&px, 3, 4, 20, 30, (20, 30));
        assert_eq!(same, to_chw_f32(&px.slice(ndarray::s![3..23, 4..34, ..]).to_owned()));
        // Shrinking and enlarging against image's own triangle filter.
        let rgb = image::RgbImage::from_raw(50, 40, px.iter().copied().collect()).expect("rgb");
        for (oh, ow) in [(13, 17), (64, 80)] {
            let theirs = image::imageops::resize(
                &rgb,
                ow as u32,
                oh as u32,
                image::imageops::FilterType::Triangle,
            );
            let theirs =
                to_chw_f32(&Array3::from_shape_vec((oh, ow, 3), theirs.into_raw()).expect("shape"));
            let ours = crop_resize_chw(&px, 0, 0, 40, 50, (oh, ow));
            let mean_diff = (&ours - &theirs).mapv(f32::abs).mean().expect("mean");
            assert!(mean_diff < 0.01, "{oh}x{ow}: mean difference {mean_diff}");
            assert_eq!(ours.dim(), (3, oh, ow));
        }
    }
}
