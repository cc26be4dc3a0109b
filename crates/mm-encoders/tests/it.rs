//! Integration tests of mm-encoders (one target for the crate, to keep link time down).

use tch::{Device, Kind, Tensor};

/// Smoke test: libtorch's 2-D convolution, the core of every image encoder, gives the sums a
/// 2x2 box filter must give on a known 3x3 image.
#[test]
fn libtorch_conv2d_box_filter() {
    let image = Tensor::arange(9, (Kind::Float, Device::Cpu)).view([1, 1, 3, 3]);
    let kernel = Tensor::ones([1, 1, 2, 2], (Kind::Float, Device::Cpu));
    let out = image.conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    // 0 1 2 / 3 4 5 / 6 7 8: the four 2x2 windows sum to 8, 12, 20, 24.
    let got = Vec::<f32>::try_from(out.flatten(0, -1)).expect("f32 vector");
    assert_eq!(got, vec![8.0, 12.0, 20.0, 24.0]);
}
