//! Word-vector files (GloVe text, word2vec binary when the name ends in `.bin`).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm_data::text::{Vocab, VocabBuilder, WordTokenizer};
use mm_encoders::vectors::{load_vectors, OovPolicy};

fuzz_target!(|data: &[u8]| {
    static VOCAB: OnceLock<Vocab> = OnceLock::new();
    let vocab = VOCAB.get_or_init(|| {
        VocabBuilder::default()
            .build(&WordTokenizer::default(), ["the cat sat on a mat", "The Dog"])
    });
    let Some((&first, rest)) = data.split_first() else { return };
    let name = if first % 2 == 0 { "vectors.txt" } else { "vectors.bin" };
    let dir = std::env::temp_dir().join(format!("mm-fuzz-vectors-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(name);
    if std::fs::write(&file, rest).is_ok() {
        let _ = load_vectors(&file, vocab, OovPolicy::Zero, 0);
    }
});
