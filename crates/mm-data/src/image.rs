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
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
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
    // One contiguous pass to scale, one transposing copy to the standard layout.
    pixels.mapv(|v| f32::from(v) / 255.0).permuted_axes([2, 0, 1]).as_standard_layout().into_owned()
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
            assert_eq!(px.as_slice().expect("contiguous"), gradient().as_raw().as_slice(), "{format:?}");
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
        let px = decode_image_bytes(&encode(&grey, ImageFormat::Png), Path::new("g.png")).expect("grey");
        assert!(px.iter().all(|&v| v == 77));
        assert_eq!(px.shape(), &[2, 3, 3]);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0])));
        let px = decode_image_bytes(&encode(&rgba, ImageFormat::Png), Path::new("a.png")).expect("rgba");
        assert_eq!(px.slice(ndarray::s![0, 0, ..]).to_vec(), vec![10, 20, 30]);
        let wide = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(1, 1, image::Rgb([65535u16, 0, 32896])));
        let px = decode_image_bytes(&encode(&wide, ImageFormat::Png), Path::new("w.png")).expect("16-bit");
        assert_eq!(px.as_slice().expect("contiguous"), &[255, 0, 128]);
    }

    #[test]
    fn broken_files_are_errors_that_name_the_file() {
        let img = DynamicImage::ImageRgb8(gradient());
        let msg = |b: &[u8], name: &str| decode_image_bytes(b, Path::new(name)).expect_err("must fail").to_string();
        assert_eq!(msg(b"", "empty.png"), "empty.png: empty file (0 bytes)");
        assert!(msg(b"hello, world", "t.png").contains("not a recognised image format"));
        for (format, name) in [(ImageFormat::Jpeg, "cut.jpg"), (ImageFormat::Png, "cut.png"), (ImageFormat::WebP, "cut.webp")] {
            let bytes = encode(&img, format);
            let m = msg(&bytes[..bytes.len() / 2], name);
            assert!(m.starts_with(name), "{m}");
        }
        // Cut inside the entropy-coded scan: the JPEG decoder alone would return a greyed image.
        let jpeg = encode(&img, ImageFormat::Jpeg);
        assert_eq!(msg(&jpeg[..jpeg.len() - 50], "tail.jpg"), "tail.jpg: truncated JPEG (no end-of-image marker)");
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
}
