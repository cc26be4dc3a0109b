//! Pretrained word vectors: GloVe's text format (`word v1 ... vD` per line), word2vec's text
//! format (the same after a `count dim` header line) and word2vec's binary format (a `count dim`
//! header, then per word its bytes, a space and `dim` little-endian `f32`s). The file is
//! streamed and only the vocabulary's words are kept, so a multi-gigabyte file is read with
//! memory for `vocabulary × dim` numbers.
//!
//! A word is looked up as it is, then lower-cased. Words the file lacks follow an
//! [`OovPolicy`]; `<pad>` (id 0) is always zeros.
//!
//! ```no_run
//! use mm_data::text::{VocabBuilder, WordTokenizer};
//! use mm_encoders::vectors::{load_vectors, OovPolicy};
//!
//! let vocab = VocabBuilder::default().build(&WordTokenizer::default(), ["a red circle", "a blue square"]);
//! let vectors = load_vectors("glove.6B.50d.txt".as_ref(), &vocab, OovPolicy::Random { std: 0.1 }, 0)?;
//! assert_eq!(vectors.matrix.size(), [vocab.len() as i64, 50]);
//! println!("{} of {} words found", vectors.found, vocab.len());
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use mm_data::text::Vocab;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// What the rows of words missing from the file hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "init")]
pub enum OovPolicy {
    /// Zeros.
    Zero,
    /// Normal noise with this standard deviation (seeded), so that unknown words differ.
    Random {
        /// Standard deviation.
        std: f64,
    },
    /// The mean of the vectors found (`<unk>` always gets this).
    #[default]
    Mean,
}

/// Vectors for a vocabulary.
#[derive(Debug)]
pub struct WordVectors {
    /// `[vocabulary, dim]`, row `i` for token id `i`.
    pub matrix: Tensor,
    /// Vector size.
    pub dim: i64,
    /// Vocabulary words found in the file.
    pub found: usize,
    /// Words not found (their rows follow the policy), `<pad>` and `<unk>` excluded.
    pub missing: Vec<String>,
    /// Entries read from the file.
    pub read: usize,
}

fn parse_floats(fields: &[&str], path: &Path, line: usize) -> Result<Vec<f32>> {
    fields
        .iter()
        .map(|f| {
            f.parse::<f32>().map_err(|_| Error::Parse {
                path: path.to_path_buf(),
                line,
                message: format!("{f:?} is not a number"),
            })
        })
        .collect()
}

/// Reads the vectors of `vocab`'s words from a GloVe or word2vec file (text, or binary when the
/// file name ends in `.bin`). `seed` drives [`OovPolicy::Random`].
pub fn load_vectors(path: &Path, vocab: &Vocab, oov: OovPolicy, seed: u64) -> Result<WordVectors> {
    // A regular file within the weights limit (word vectors are weights), never a FIFO.
    let (file, _) = mm_data::fs::open_capped(path, mm_data::fs::FileKind::Weights)
        .map_err(crate::weights::unreadable)?;
    let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), message: e.to_string() };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    // Token id of every vocabulary word, by exact form and lower-cased form.
    let mut wanted: HashMap<&str, i64> = HashMap::new();
    for (id, word) in vocab.tokens().iter().enumerate().skip(2) {
        wanted.insert(word.as_str(), id as i64);
    }
    let mut rows: HashMap<i64, Vec<f32>> = HashMap::new();
    let mut exact: HashMap<i64, bool> = HashMap::new();
    let mut keep = |word: &str, values: Vec<f32>, rows: &mut HashMap<i64, Vec<f32>>| {
        if let Some(&id) = wanted.get(word) {
            rows.insert(id, values);
            exact.insert(id, true);
        } else {
            let lower = word.to_lowercase();
            if let Some(&id) = wanted.get(lower.as_str()) {
                if !exact.get(&id).copied().unwrap_or(false) {
                    rows.entry(id).or_insert(values);
                }
            }
        }
    };
    let binary = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("bin"));
    let mut dim: Option<usize> = None;
    let mut read = 0usize;
    if binary {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(io)?;
        let (count, d) = parse_header(&header).ok_or_else(|| Error::Parse {
            path: path.to_path_buf(),
            line: 1,
            message: format!("expected a word2vec header `count dim`, got {:?}", header.trim_end()),
        })?;
        check_dim(d, path, 1)?;
        dim = Some(d);
        let mut buf = vec![0u8; 4 * d];
        let mut word = Vec::new();
        for entry in 0..count {
            word.clear();
            loop {
                let mut byte = [0u8; 1];
                match reader.read(&mut byte).map_err(io)? {
                    0 => {
                        return Err(Error::Parse {
                            path: path.to_path_buf(),
                            line: entry + 1,
                            message: format!("the file ends after {entry} of the {count} entries its header announces"),
                        })
                    }
                    _ if byte[0] == b' ' => break,
                    _ if byte[0] == b'\n' && word.is_empty() => {}
                    _ => word.push(byte[0]),
                }
            }
            reader.read_exact(&mut buf).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                line: entry + 1,
                message: format!("entry {} is truncated: {e}", entry + 1),
            })?;
            let values: Vec<f32> =
                buf.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            keep(&String::from_utf8_lossy(&word), values, &mut rows);
            read += 1;
        }
    } else {
        let mut line = String::new();
        let mut number = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                break;
            }
            number += 1;
            let text = line.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            if let Some((_, d)) = parse_header(text).filter(|_| number == 1) {
                check_dim(d, path, 1)?; // word2vec text header
                dim = Some(d);
                continue;
            }
            let mut fields = text.split(' ').filter(|f| !f.is_empty());
            let Some(word) = fields.next() else { continue };
            let values: Vec<&str> = fields.collect();
            match dim {
                None => {
                    check_dim(values.len(), path, number)?;
                    dim = Some(values.len());
                }
                Some(d) if d != values.len() => {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        line: number,
                        message: format!("{} numbers after {word:?}, expected {d}", values.len()),
                    })
                }
                _ => {}
            }
            if wanted.contains_key(word) || wanted.contains_key(word.to_lowercase().as_str()) {
                keep(word, parse_floats(&values, path, number)?, &mut rows);
            }
            read += 1;
        }
    }
    let dim = match dim {
        Some(d) if d > 0 => d,
        _ => {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line: 1,
                message: "no vectors in the file".to_string(),
            })
        }
    };
    let n = vocab.len();
    let mut data = vec![0f32; n * dim];
    let mut mean = vec![0f64; dim];
    for (id, v) in &rows {
        data[*id as usize * dim..(*id as usize + 1) * dim].copy_from_slice(v);
        for (m, x) in mean.iter_mut().zip(v) {
            *m += f64::from(*x);
        }
    }
    let found = rows.len();
    let mean: Vec<f32> = mean.iter().map(|m| (m / found.max(1) as f64) as f32).collect();
    let missing: Vec<String> = (2..n)
        .filter(|id| !rows.contains_key(&(*id as i64)))
        .map(|id| vocab.tokens()[id].clone())
        .collect();
    let mut matrix = Tensor::from_slice(&data).view([n as i64, dim as i64]);
    let missing_ids: Vec<i64> = (2..n as i64).filter(|id| !rows.contains_key(id)).collect();
    let mean_t = Tensor::from_slice(&mean);
    if n > 1 {
        matrix.get(1).copy_(&mean_t); // <unk>
    }
    if !missing_ids.is_empty() {
        let ids = Tensor::from_slice(&missing_ids);
        let fill = match oov {
            OovPolicy::Zero => Tensor::zeros(
                [missing_ids.len() as i64, dim as i64],
                (Kind::Float, tch::Device::Cpu),
            ),
            OovPolicy::Mean => mean_t.unsqueeze(0).repeat([missing_ids.len() as i64, 1]),
            OovPolicy::Random { std } => {
                let mut rng = mm_data::rng::Rng::new(seed);
                let noise: Vec<f32> =
                    (0..missing_ids.len() * dim).map(|_| (rng.normal() * std) as f32).collect();
                Tensor::from_slice(&noise).view([missing_ids.len() as i64, dim as i64])
            }
        };
        let _ = matrix.index_copy_(0, &ids, &fill);
    }
    Ok(WordVectors { matrix, dim: dim as i64, found, missing, read })
}

fn check_dim(d: usize, path: &Path, line: usize) -> Result<()> {
    if d > MAX_DIM {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            line,
            message: format!(
                "vectors of {d} numbers: more than the {MAX_DIM} accepted (a damaged file?)"
            ),
        });
    }
    Ok(())
}

/// The largest vector size accepted: a header announcing more is a damaged or foreign file
/// (published word vectors have at most a few thousand dimensions), and believing it would
/// allocate `vocabulary × size` floats.
pub const MAX_DIM: usize = 16_384;

fn parse_header(line: &str) -> Option<(usize, usize)> {
    let mut f = line.split_whitespace();
    let (a, b) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    f.next().is_none().then_some((a, b))
}

/// The `k` vocabulary words nearest to `word` by cosine similarity (excluding itself, `<pad>`
/// and `<unk>`), with their similarities.
pub fn nearest(vectors: &WordVectors, vocab: &Vocab, word: &str, k: usize) -> Vec<(String, f64)> {
    let id = vocab.id(word);
    if id < 2 {
        return Vec::new();
    }
    let m = &vectors.matrix;
    let norms = m.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-8);
    let unit = m / norms;
    let sims = unit.matmul(&unit.get(id).unsqueeze(1)).squeeze_dim(1);
    let sims: Vec<f32> = Vec::try_from(sims).unwrap_or_default();
    let mut order: Vec<usize> = (2..sims.len()).filter(|i| *i as i64 != id).collect();
    order.sort_by(|a, b| sims[*b].total_cmp(&sims[*a]));
    order.into_iter().take(k).map(|i| (vocab.tokens()[i].clone(), f64::from(sims[i]))).collect()
}
