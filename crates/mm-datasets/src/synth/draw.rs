//! Rendering of the synthetic images and frames: an anti-aliased shape (from its signed
//! distance) over a noisy, cluttered background, encoded as PNG.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use mm_data::rng::Rng;

/// The shapes, in label order: two curved ones, then two with straight edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// An annulus.
    Ring,
    /// A filled square, rotated.
    Square,
    /// A filled equilateral triangle, rotated.
    Triangle,
}

impl Shape {
    /// All shapes.
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Ring, Shape::Square, Shape::Triangle];

    /// The name used in the ground-truth file.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Ring => "ring",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// Whether the outline is curved (circle, ring) rather than straight-edged.
    pub fn curved(self) -> bool {
        matches!(self, Shape::Circle | Shape::Ring)
    }

    /// Signed distance (pixels) from `(x, y)`, relative to the centre and already rotated into
    /// the shape's frame, to the outline of a shape of radius `r`; negative inside.
    fn distance(self, x: f32, y: f32, r: f32) -> f32 {
        match self {
            Shape::Circle => (x * x + y * y).sqrt() - r,
            Shape::Ring => ((x * x + y * y).sqrt() - 0.72 * r).abs() - 0.28 * r,
            Shape::Square => {
                // Half side chosen so that the area is close to the disc's.
                let h = 0.86 * r;
                let (dx, dy) = (x.abs() - h, y.abs() - h);
                let outside = (dx.max(0.0).powi(2) + dy.max(0.0).powi(2)).sqrt();
                outside + dx.max(dy).min(0.0)
            }
            Shape::Triangle => {
                // Equilateral triangle with circumradius 1.25 r: the largest distance over the
                // three edge normals (exact inside, a close bound outside: enough for a 1 px ramp).
                let inradius = 0.625 * r;
                let mut d = f32::MIN;
                for k in 0..3 {
                    let a =
                        std::f32::consts::FRAC_PI_2 + k as f32 * 2.0 * std::f32::consts::FRAC_PI_3;
                    d = d.max(-(x * a.cos() + y * a.sin()) - inradius);
                }
                d
            }
        }
    }
}

/// The colours of the shapes, saturated so that they stand out from the grey clutter.
pub const COLOURS: [(&str, [f32; 3]); 4] = [
    ("red", [0.90, 0.15, 0.10]),
    ("green", [0.10, 0.75, 0.20]),
    ("blue", [0.15, 0.30, 0.95]),
    ("yellow", [0.95, 0.85, 0.10]),
];

/// An RGB canvas with values in `[0, 1]`, row-major `[H, W, 3]`.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Width and height in pixels.
    pub size: usize,
    /// The pixels.
    pub data: Vec<f32>,
}

impl Canvas {
    /// A background of grey level `brightness` with a gentle gradient and `clutter` grey line
    /// segments, drawn with `rng`.
    pub fn background(size: usize, brightness: f32, clutter: usize, rng: &mut Rng) -> Self {
        let mut c = Canvas { size, data: vec![0.0; size * size * 3] };
        let (gx, gy) = (rng.uniform(-0.08, 0.08) as f32, rng.uniform(-0.08, 0.08) as f32);
        let tint = [
            rng.uniform(-0.03, 0.03) as f32,
            rng.uniform(-0.03, 0.03) as f32,
            rng.uniform(-0.03, 0.03) as f32,
        ];
        let s = size as f32;
        for y in 0..size {
            for x in 0..size {
                let v = brightness + gx * (x as f32 / s - 0.5) + gy * (y as f32 / s - 0.5);
                let i = (y * size + x) * 3;
                for (out, t) in c.data[i..i + 3].iter_mut().zip(tint) {
                    *out = v + t;
                }
            }
        }
        for _ in 0..clutter {
            let (x0, y0) =
                (rng.uniform(0.0, f64::from(s)) as f32, rng.uniform(0.0, f64::from(s)) as f32);
            let angle = rng.uniform(0.0, std::f64::consts::PI) as f32;
            let len = rng.uniform(0.2, 0.6) as f32 * s;
            let grey = rng.uniform(0.0, 1.0) as f32;
            let width = rng.uniform(0.6, 1.6) as f32;
            c.line(x0, y0, x0 + len * angle.cos(), y0 + len * angle.sin(), width, [grey; 3], 0.6);
        }
        c
    }

    /// Blends `colour` with opacity `alpha` times the coverage of the segment of this width.
    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        width: f32,
        colour: [f32; 3],
        alpha: f32,
    ) {
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let pad = width + 1.0;
        let (xmin, xmax) = (x0.min(x1) - pad, x0.max(x1) + pad);
        let (ymin, ymax) = (y0.min(y1) - pad, y0.max(y1) + pad);
        self.cover(xmin, ymin, xmax, ymax, colour, alpha, |px, py| {
            let t = (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0);
            let (qx, qy) = (px - (x0 + t * dx), py - (y0 + t * dy));
            (qx * qx + qy * qy).sqrt() - width / 2.0
        });
    }

    /// Draws `shape` of radius `r` centred at `(cx, cy)`, rotated by `angle`.
    pub fn shape(&mut self, shape: Shape, cx: f32, cy: f32, r: f32, angle: f32, colour: [f32; 3]) {
        let (sin, cos) = angle.sin_cos();
        let pad = 1.3 * r + 2.0;
        self.cover(cx - pad, cy - pad, cx + pad, cy + pad, colour, 1.0, |px, py| {
            let (x, y) = (px - cx, py - cy);
            shape.distance(cos * x + sin * y, -sin * x + cos * y, r)
        });
    }

    /// Blends `colour` over the pixels of a box, with a coverage of `0.5 - distance` clamped to
    /// `[0, 1]` (a one-pixel anti-aliasing ramp), measured at pixel centres.
    #[allow(clippy::too_many_arguments)]
    fn cover(
        &mut self,
        xmin: f32,
        ymin: f32,
        xmax: f32,
        ymax: f32,
        colour: [f32; 3],
        alpha: f32,
        distance: impl Fn(f32, f32) -> f32,
    ) {
        let n = self.size as f32;
        let (x0, x1) = (xmin.max(0.0).floor() as usize, xmax.min(n - 1.0).max(0.0).ceil() as usize);
        let (y0, y1) = (ymin.max(0.0).floor() as usize, ymax.min(n - 1.0).max(0.0).ceil() as usize);
        for y in y0..=y1.min(self.size - 1) {
            for x in x0..=x1.min(self.size - 1) {
                let a = alpha * (0.5 - distance(x as f32 + 0.5, y as f32 + 0.5)).clamp(0.0, 1.0);
                if a > 0.0 {
                    let i = (y * self.size + x) * 3;
                    for (out, c) in self.data[i..i + 3].iter_mut().zip(colour) {
                        *out += a * (c - *out);
                    }
                }
            }
        }
    }

    /// Adds Gaussian pixel noise of standard deviation `sigma` and quantises to 8 bits.
    pub fn to_rgb8(&self, sigma: f32, rng: &mut Rng) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| {
                let noisy = if sigma > 0.0 { v + sigma * rng.normal() as f32 } else { *v };
                (noisy.clamp(0.0, 1.0) * 255.0).round() as u8
            })
            .collect()
    }
}

/// Encodes 8-bit RGB pixels as PNG (fast compression: the files are written in bulk).
pub fn encode_png(rgb: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len() / 2);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(rgb, size as u32, size as u32, ExtendedColorType::Rgb8)
        .expect("encoding PNG to memory cannot fail for a buffer of the declared size");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_about_the_same_area_and_curved_ones_differ_from_straight() {
        let areas: Vec<f32> = Shape::ALL
            .iter()
            .map(|s| {
                let mut c = Canvas { size: 64, data: vec![0.0; 64 * 64 * 3] };
                c.shape(*s, 32.0, 32.0, 16.0, 0.3, [1.0, 1.0, 1.0]);
                c.data.iter().step_by(3).sum::<f32>()
            })
            .collect();
        let disc = std::f32::consts::PI * 16.0 * 16.0;
        assert!((areas[0] - disc).abs() / disc < 0.02, "{areas:?}");
        // Ring: 1 - (0.44/1)^2 ... of the disc; square and triangle within 40 % of the disc.
        for a in &areas[1..] {
            assert!(*a > 0.4 * disc && *a < 1.3 * disc, "{areas:?}");
        }
        assert!(
            Shape::Circle.curved()
                && Shape::Ring.curved()
                && !Shape::Square.curved()
                && !Shape::Triangle.curved()
        );
    }

    #[test]
    fn png_round_trips() {
        let mut rng = Rng::new(1);
        let c = Canvas::background(16, 0.5, 3, &mut rng);
        let rgb = c.to_rgb8(0.05, &mut rng);
        let png = encode_png(&rgb, 16);
        let back = mm_data::image::decode_image_bytes(&png, "x.png".as_ref()).unwrap();
        assert_eq!(back.as_slice().unwrap(), &rgb[..]);
    }
}
