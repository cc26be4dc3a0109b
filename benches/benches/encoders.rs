//! Forward and backward time of each encoder on CPU at a realistic batch (training mode, then
//! the sum of the pooled output backwards):
//!
//! - image: ResNet-18 and ResNet-50 on 32 images of 112×112, VGG-11 on 8 of 112×112, LeNet on
//!   256 of 28×28;
//! - text: 64 captions of up to 32 tokens over a 20 000-word vocabulary, 50-dimensional
//!   embeddings, as a bag (mean) and through a BiLSTM of 128 per direction; a 2-layer
//!   Transformer (d 128, 4 heads) over subword ids;
//! - audio: 32 clips of 100 log-mel frames × 64 bins, a 2-layer BiGRU of 128 and a 3-block CNN
//!   (32, 64, 128 channels);
//! - tabular: an MLP [128, 64] over 256 records of 32 features.
//!
//! libtorch threads: `MM_THREADS` (default 2).

#![allow(missing_docs)] // criterion_group! defines undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mm_encoders::{build, BuildContext, EncoderConfig, Input};
use tch::{nn, Device, Kind, Tensor};

fn case(c: &mut Criterion, name: &str, toml_text: &str, ctx: BuildContext, input: Input) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let config: EncoderConfig = toml::from_str(toml_text).expect("config");
    let encoder = build(&(vs.root() / "enc"), &config, &ctx).expect("encoder");
    let batch = input.values.size()[0] as u64;
    let mut group = c.benchmark_group("encoder_forward_backward");
    group.throughput(Throughput::Elements(batch));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter(|| encoder.forward_t(&input, true).pooled.sum(Kind::Float).backward());
    });
    group.finish();
}

fn encoders(c: &mut Criterion) {
    let threads = std::env::var("MM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let f = (Kind::Float, Device::Cpu);
    let none = BuildContext::default();
    case(
        c,
        "resnet18_32x112",
        "kind = \"image\"\narch = \"resnet18\"",
        none,
        Input::dense(Tensor::randn([32, 3, 112, 112], f)),
    );
    case(
        c,
        "resnet50_32x112",
        "kind = \"image\"\narch = \"resnet50\"",
        none,
        Input::dense(Tensor::randn([32, 3, 112, 112], f)),
    );
    case(
        c,
        "vgg11_8x112",
        "kind = \"image\"\narch = \"vgg11\"",
        none,
        Input::dense(Tensor::randn([8, 3, 112, 112], f)),
    );
    case(
        c,
        "lenet_256x28",
        "kind = \"image\"\narch = \"lenet\"\nin_channels = 1",
        none,
        Input::dense(Tensor::randn([256, 1, 28, 28], f)),
    );
    let ids = || Tensor::randint(20_000, [64, 32], (Kind::Int64, Device::Cpu));
    let lengths = || Tensor::randint_low(8, 33, [64], (Kind::Int64, Device::Cpu));
    let words = BuildContext { vocab_size: Some(20_000), ..Default::default() };
    case(
        c,
        "text_bag_64x32",
        "kind = \"text\"\ndim = 50",
        words,
        Input::sequence(ids(), lengths()),
    );
    case(
        c,
        "text_bilstm_64x32",
        "kind = \"text\"\ndim = 50\ncontext = { type = \"rnn\", hidden = 128, bidirectional = true }",
        words,
        Input::sequence(ids(), lengths()),
    );
    case(
        c,
        "text_transformer_64x32",
        "kind = \"text\"\ndim = 128\ncontext = { type = \"transformer\", d_model = 128, heads = 4, layers = 2, ff = 256 }",
        words,
        Input::sequence(ids(), lengths()),
    );
    let mels = BuildContext { input_dim: Some(64), ..Default::default() };
    let audio = || {
        Input::sequence(
            Tensor::randn([32, 100, 64], f),
            Tensor::randint_low(50, 101, [32], (Kind::Int64, Device::Cpu)),
        )
    };
    case(c, "audio_bigru_32x100", "kind = \"audio\"\nbackbone = { type = \"rnn\", cell = \"gru\", hidden = 128, layers = 2, bidirectional = true }", mels, audio());
    case(
        c,
        "audio_cnn_32x100",
        "kind = \"audio\"\nbackbone = { type = \"cnn\", channels = [32, 64, 128] }",
        mels,
        audio(),
    );
    let records = BuildContext { input_dim: Some(32), ..Default::default() };
    case(
        c,
        "tabular_256x32",
        "kind = \"tabular\"\nhidden = [128, 64]\nout = 64",
        records,
        Input::dense(Tensor::randn([256, 32], f)),
    );
}

criterion_group!(benches, encoders);
criterion_main!(benches);
