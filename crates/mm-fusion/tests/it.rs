//! Integration tests of mm-fusion (one target for the crate, to keep link time down).

use tch::{Kind, Tensor};

/// Smoke test: the seed's weighted sum `a·v1 + b·v2` with softmax-normalised weights, computed
/// by libtorch, against the value worked out by hand.
#[test]
fn libtorch_weighted_sum_of_two_embeddings() {
    let v1 = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
    let v2 = Tensor::from_slice(&[3.0f32, 6.0]).view([1, 2]);
    // Logits (0, ln 3) give the weights (1/4, 3/4).
    let w = Tensor::from_slice(&[0.0f32, 3f32.ln()]).softmax(0, Kind::Float);
    let fused = &v1 * w.get(0) + &v2 * w.get(1);
    let got = Vec::<f32>::try_from(fused.flatten(0, -1)).expect("f32 vector");
    for (g, want) in got.iter().zip([2.5f32, 5.0]) {
        assert!((g - want).abs() < 1e-6, "{got:?}");
    }
    assert_eq!(Tensor::cat(&[v1, v2], 1).size(), vec![1, 4]);
}
