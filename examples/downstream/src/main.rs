//! mm's crates in a project of one's own: mm-data batches a data set built in code, mm-encoders
//! encodes each modality, mm-fusion fuses them with a gated unit, and plain tch adds the head
//! and the optimiser.
//!
//! Each sample has a numeric record (4 numbers) and a short text ("a red token" or "a blue
//! token"). Its label is whether the record's first number is positive, flipped when the text
//! says red. Each modality alone is independent of the label, so on its own it is right half
//! of the time; the two together decide it exactly.
//!
//! Prints the accuracy on the held-out test split, and exits with an error below 0.9.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;

use mm_data::loader::{Batch, Loader, LoaderConfig};
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::pipeline::{FeatureSpec, Pipeline, TextSpec};
use mm_data::rng::Rng;
use mm_data::text::{VocabBuilder, WordTokenizer};
use mm_data::Modality;
use mm_encoders::tabular::{TabularConfig, TabularEncoder};
use mm_encoders::text::{TextConfig, TextEncoder};
use mm_encoders::{Encoder, Input};
use mm_fusion::methods::Gated;
use mm_fusion::{Embeddings, Fusion};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const FEATURES: usize = 4;
const DIM: i64 = 16;
const EPOCHS: u64 = 20;

/// 2000 samples, the first 80 % for training and the rest for testing. Text and features are
/// written into the manifest itself, so no file is read.
fn data_set(seed: u64) -> mm_data::Result<Manifest> {
    let mut rng = Rng::new(seed);
    let mut manifest = Manifest::new(".");
    for i in 0..2000 {
        let record: Vec<f64> = (0..FEATURES).map(|_| rng.normal()).collect();
        let red = rng.chance(0.5);
        let label = (record[0] > 0.0) != red;
        let split = if i < 1600 { Split::Train } else { Split::Test };
        let sample = Sample::new(format!("s{i}"))
            .with_split(split)
            .with_features(record)
            .with_text(if red { "a red token" } else { "a blue token" })
            .with_label(if label { "yes" } else { "no" });
        manifest.push(sample)?;
    }
    Ok(manifest)
}

/// One encoder per modality, a gated multimodal unit over their embeddings, a linear head.
#[derive(Debug)]
struct Model {
    record: TabularEncoder,
    text: TextEncoder,
    fusion: Gated,
    head: nn::Linear,
}

impl Model {
    fn new(p: &nn::Path, vocab_size: usize) -> Result<Self, Box<dyn Error>> {
        let record = TabularConfig { hidden: vec![32], out: DIM, dropout: 0.0, project: None };
        let text = TextConfig { dim: Some(DIM), dropout: 0.0, ..Default::default() };
        Ok(Model {
            record: TabularEncoder::new(&(p / "record"), &record, FEATURES as i64)?,
            text: TextEncoder::new(&(p / "text"), &text, vocab_size as i64, None)?,
            // The inputs in the batch's modality order: text, then features.
            fusion: Gated::new(&(p / "fusion"), &[DIM, DIM], DIM)?,
            head: nn::linear(p / "head", DIM, 2, Default::default()),
        })
    }

    /// Class logits `[B, 2]`.
    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        let encode = |encoder: &dyn Encoder, modality| {
            let input = Input::from_batch(batch, modality).expect("the pipeline has it");
            encoder.forward_t(&input, train).pooled
        };
        let embeddings = Embeddings::new(
            vec![encode(&self.text, Modality::Text), encode(&self.record, Modality::Features)],
            batch.present.shallow_clone(),
        );
        self.fusion.forward_t(&embeddings, train).fused.apply(&self.head)
    }
}

fn loader(
    manifest: &Arc<Manifest>,
    pipeline: &Arc<Pipeline>,
    split: Split,
) -> mm_data::Result<Loader> {
    let config = match split {
        Split::Train => LoaderConfig { batch_size: 64, ..LoaderConfig::training(0) },
        _ => LoaderConfig::evaluation(),
    };
    Loader::new(manifest.clone(), split, pipeline.clone(), config)
}

fn main() -> Result<ExitCode, Box<dyn Error>> {
    tch::manual_seed(0);
    let device = Device::cuda_if_available();
    let manifest = Arc::new(data_set(0)?);

    // Records are standardised with statistics of the training split; texts become word ids.
    let tokenizer = WordTokenizer::default();
    let texts = manifest.split(Split::Train).filter_map(|s| s.text.as_deref());
    let vocab = VocabBuilder::default().build(&tokenizer, texts);
    let vocab_size = vocab.len();
    let mut pipeline = Pipeline::new(vec!["no".into(), "yes".into()]);
    pipeline.features = Some(FeatureSpec { dim: FEATURES, normalizer: None });
    pipeline.text = Some(TextSpec::words(tokenizer, vocab, 8));
    pipeline.fit_statistics(&manifest)?;
    let pipeline = Arc::new(pipeline);
    assert_eq!(pipeline.modalities(), [Modality::Text, Modality::Features]);

    let vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), vocab_size)?;
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let train = loader(&manifest, &pipeline, Split::Train)?;
    for epoch in 0..EPOCHS {
        for batch in train.epoch(epoch) {
            let batch = batch?.to_device(device);
            let labels = batch.label.as_ref().expect("every sample has a label");
            let loss = model.forward_t(&batch, true).cross_entropy_for_logits(labels);
            opt.backward_step(&loss);
        }
    }

    let (mut correct, mut total) = (0i64, 0i64);
    tch::no_grad(|| -> mm_data::Result<()> {
        for batch in loader(&manifest, &pipeline, Split::Test)?.epoch(0) {
            let batch = batch?.to_device(device);
            let labels = batch.label.as_ref().expect("every sample has a label");
            let predicted = model.forward_t(&batch, false).argmax(1, false);
            correct += predicted.eq_tensor(labels).sum(Kind::Int64).int64_value(&[]);
            total += batch.len() as i64;
        }
        Ok(())
    })?;
    let accuracy = correct as f64 / total as f64;
    println!("device: {device:?}");
    println!("accuracy: {accuracy:.3} on {total} test samples (either modality alone: 0.5)");
    Ok(if accuracy >= 0.9 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
