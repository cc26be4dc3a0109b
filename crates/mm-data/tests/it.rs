//! Integration tests of mm-data (one target for the crate, to keep link time down).

use mm_data::device::parse_device;
use tch::{Kind, Tensor};

/// Smoke test: a real libtorch op runs in this test binary (links, rpath) with a checked result.
#[test]
fn libtorch_collates_and_reduces_a_batch() {
    let device = parse_device("auto").expect("auto always resolves");
    // Two samples of three features, as a collated batch would hold them.
    let batch = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0]).view([2, 3]).to_device(device);
    let mean = batch.mean_dim(0, false, Kind::Float).to_device(tch::Device::Cpu);
    assert_eq!(Vec::<f32>::try_from(&mean).expect("f32 vector"), vec![3.0, 4.0, 5.0]);
}
