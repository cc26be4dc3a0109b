//! Counted arithmetic of the benchmark models, for achieved TFLOP/s.
//!
//! Counts are multiply-accumulates (MACs) of the convolutions, linear layers and recurrent
//! cells of one sample's forward pass, layer by layer from the architecture (element-wise work,
//! pooling and normalisation are left out, as fvcore and torchvision's tables do). A training
//! step costs three forward passes (the backward pass computes gradients for both the inputs and
//! the weights of every layer) and one MAC is two floating-point operations, so a step's FLOPs
//! are `6 × MACs × batch`.
//!
//! ```
//! // torchvision lists ResNet-50 at 224×224 as 4.09 GFLOPS (its "FLOPS" are MACs).
//! let macs = mm_benches::flops::resnet50_macs(224, true);
//! assert!((macs / 1e9 - 4.09).abs() < 0.01);
//! ```

use crate::workloads::{
    Workload, AV_FRAMES, AV_IMAGE, AV_MELS, CLASSES, SEED_FEATURES, SEED_IMAGE, SEED_STEPS,
};

/// Output side of a convolution or pooling of kernel `k`, stride `s`, padding `p` (floor mode).
fn out_side(side: u64, k: u64, s: u64, p: u64) -> u64 {
    (side + 2 * p - k) / s + 1
}

/// MACs of a `k`×`k` convolution from `cin` to `cout` channels producing `side`×`side` outputs.
fn conv(k: u64, cin: u64, cout: u64, h: u64, w: u64) -> f64 {
    (k * k * cin * cout * h * w) as f64
}

/// MACs of one forward pass of a torchvision-style ResNet-50 (v1.5: stride on the 3×3) over a
/// `side`×`side` RGB image, with or without the 1000-way classifier.
pub fn resnet50_macs(side: u64, classifier: bool) -> f64 {
    let mut s = out_side(side, 7, 2, 3);
    let mut macs = conv(7, 3, 64, s, s);
    s = out_side(s, 3, 2, 1); // max pooling
    let mut inplanes = 64;
    for (stage, (planes, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].into_iter().enumerate()
    {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let out = out_side(s, 3, stride, 1);
            macs += conv(1, inplanes, planes, s, s)
                + conv(3, planes, planes, out, out)
                + conv(1, planes, planes * 4, out, out);
            if block == 0 {
                macs += conv(1, inplanes, planes * 4, out, out);
            }
            inplanes = planes * 4;
            s = out;
        }
    }
    if classifier {
        macs += (2048 * 1000) as f64;
    }
    macs
}

/// MACs of an LSTM layer over `steps` steps of `input` features with `hidden` units.
pub fn lstm_macs(input: u64, hidden: u64, steps: u64) -> f64 {
    (4 * hidden * (input + hidden) * steps) as f64
}

/// MACs of one forward pass of the seed model (per sample).
pub fn seed_macs() -> f64 {
    let (steps, features) = (SEED_STEPS as u64, SEED_FEATURES as u64);
    resnet50_macs(SEED_IMAGE as u64, false)
        + lstm_macs(features, 256, steps)
        + lstm_macs(256, 256, steps)
        + ((2048 + 256) * CLASSES as u64) as f64
}

/// MACs of one forward pass of the av-digits model (per sample, at the full 120 frames the
/// convolutions run over).
pub fn av_digits_macs() -> f64 {
    let side = AV_IMAGE as u64;
    // LeNet: conv1 5×5 padded to 6 channels, pool, conv2 5×5 to 16, pool, fc1, fc2.
    let lenet = conv(5, 3, 6, side, side)
        + {
            let s = out_side(side / 2, 5, 1, 0);
            conv(5, 6, 16, s, s)
        }
        + (16 * 5 * 5 * 120 + 120 * 84) as f64;
    // Audio CNN [16, 32]: 3×3 convolutions with ceil-mode 2×2 pooling, then a linear map of
    // each remaining step's channels × bins to 32.
    let (mut t, mut m, mut cin, mut audio) = (AV_FRAMES as u64, AV_MELS as u64, 1, 0.0);
    for c in [16, 32] {
        audio += conv(3, cin, c, t, m);
        (t, m, cin) = (t.div_ceil(2), m.div_ceil(2), c);
    }
    audio += (cin * m * cin * t) as f64;
    // Gated fusion to 64 (one tanh projection per modality, one gate) and the head [64] → 10.
    let fusion = ((84 + 32) * 64 + (84 + 32) * 2 * 64) as f64;
    let head = (64 * 64 + 64 * CLASSES as u64) as f64;
    lenet + audio + fusion + head
}

/// FLOPs of one training step of `workload` at `batch` samples.
pub fn train_step_flops(workload: Workload, batch: usize) -> f64 {
    let macs = match workload {
        Workload::Seed => seed_macs(),
        Workload::AvDigits => av_digits_macs(),
    };
    6.0 * macs * batch as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_matches_published_counts() {
        // torchvision's table: 4.09 GFLOPS (MACs) at 224; fvcore's count of the same network
        // without the classifier is 4.087 G.
        let with = resnet50_macs(224, true);
        let without = resnet50_macs(224, false);
        assert!((with / 1e9 - 4.09).abs() < 0.01, "{with}");
        assert!((without / 1e9 - 4.087).abs() < 0.01, "{without}");
        // Halving the side quarters the convolutions' work (to within the odd-size rounding).
        let ratio = resnet50_macs(224, false) / resnet50_macs(112, false);
        assert!((ratio - 4.0).abs() < 0.3, "{ratio}");
    }

    #[test]
    fn training_is_three_forward_passes() {
        assert_eq!(train_step_flops(Workload::Seed, 2), 12.0 * seed_macs());
        // The LSTM is a small share of the seed model; the ResNet dominates.
        assert!(
            seed_macs() > resnet50_macs(224, false)
                && seed_macs() < 1.01 * resnet50_macs(224, false)
        );
        assert!(av_digits_macs() > 5e6 && av_digits_macs() < 1e7, "{}", av_digits_macs());
    }
}
