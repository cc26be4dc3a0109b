//! A Transformer decoder that writes tokens: causal self-attention over the tokens so far,
//! cross-attention over a memory (an encoder's steps), a feed-forward block, each pre-norm, and
//! an output tied to the token embedding; a key/value cache, and greedy or beam search.
//!
//! Parameter names are those of transformers' encoder-decoder models (Whisper's decoder, BART's):
//! `embed_tokens`, `embed_positions`, `layers.N.{self_attn, self_attn_layer_norm, encoder_attn,
//! encoder_attn_layer_norm, fc1, fc2, final_layer_norm}`, `layer_norm`; so Whisper's files load
//! into it as they are (`mm_encoders::whisper`), and a caption head trains a fresh one.
//!
//! The memory's keys and values are computed once per input ([`TransformerDecoder::memory`]);
//! a [`Cache`] keeps the self-attention keys and values, so each generated token costs one
//! token's work. Memory steps can be masked (padding, or a modality absent from a sample).
//!
//! ```
//! use mm_seq::decoder::{DecoderConfig, Generation, TransformerDecoder};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config = DecoderConfig { vocab: 12, dim: 16, layers: 2, heads: 2, ffn: 32, ..DecoderConfig::default() };
//! let decoder = TransformerDecoder::new(&(vs.root() / "decoder"), &config)?;
//! let states = Tensor::randn([3, 5, 16], (Kind::Float, Device::Cpu)); // [B, S, D]
//! let memory = decoder.memory(&states, None);
//!
//! // Training: logits of each next token, every position at once.
//! let ids = Tensor::from_slice(&[10i64, 4, 5, 10, 6, 7, 10, 8, 9]).view([3, 3]);
//! assert_eq!(decoder.forward_t(&memory, &ids, true).size(), [3, 3, 12]);
//!
//! // Generation: from a start token until the end token or 8 tokens in all.
//! let greedy = decoder.generate(&memory, &Generation::new(&[10], 11, 8));
//! let beam = decoder.generate(&memory, &Generation { beam: 4, ..Generation::new(&[10], 11, 8) });
//! assert_eq!((greedy.len(), beam.len()), (3, 3));
//! assert!(greedy.iter().all(|ids| ids.len() <= 7 && !ids.contains(&11)));
//! # Ok::<(), mm_seq::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::{Error, Result};

/// The decoder's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Token ids (the output width).
    pub vocab: i64,
    /// Model width, also the memory's.
    pub dim: i64,
    /// Decoder layers.
    pub layers: i64,
    /// Attention heads (dividing `dim`).
    pub heads: i64,
    /// Feed-forward width.
    pub ffn: i64,
    /// Learned positions: the longest token sequence, start tokens included.
    pub max_positions: i64,
    /// Dropout on the embeddings and each block's output when training.
    pub dropout: f64,
    /// Whether the key projections have a bias (Whisper's do not).
    pub key_bias: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            vocab: 0,
            dim: 256,
            layers: 2,
            heads: 4,
            ffn: 1024,
            max_positions: 64,
            dropout: 0.1,
            key_bias: true,
        }
    }
}

impl DecoderConfig {
    /// Refuses sizes that cannot build a decoder, naming the field.
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("vocab", self.vocab),
            ("dim", self.dim),
            ("layers", self.layers),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("max_positions", self.max_positions),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::Config(format!("{name} = {v}: must be positive")));
        }
        if self.dim % self.heads != 0 {
            return Err(Error::Config(format!(
                "heads = {} must divide dim = {}",
                self.heads, self.dim
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("dropout = {}: must be in [0, 1)", self.dropout)));
        }
        Ok(())
    }
}

fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig { ws_init: init, bs_init: bias.then_some(nn::Init::Const(0.0)), bias },
    )
}

fn norm(p: nn::Path, d: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], Default::default())
}

/// Multi-head attention with transformers' names (`q_proj`, `k_proj`, `v_proj`, `out_proj`),
/// through libtorch's `scaled_dot_product_attention`; public for encoders built of the same
/// blocks (Whisper's).
#[derive(Debug)]
pub struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl Attention {
    /// Projections of width `d` under `p`, `heads` heads (dividing `d`).
    pub fn new(p: &nn::Path, d: i64, heads: i64, key_bias: bool) -> Self {
        Attention {
            q: linear(p / "q_proj", d, d, true),
            k: linear(p / "k_proj", d, d, key_bias),
            v: linear(p / "v_proj", d, d, true),
            out: linear(p / "out_proj", d, d, true),
            heads,
        }
    }

    /// `[B, L, D]` to `[B, heads, L, D / heads]`.
    fn split(&self, t: &Tensor) -> Tensor {
        let (b, l, d) = t.size3().expect("[B, L, D]");
        t.view([b, l, self.heads, d / self.heads]).transpose(1, 2)
    }

    /// Attention of `x` `[B, L, D]` over keys and values already split into heads
    /// ([`Attention::keys_values`]); `mask` (booleans, true where a key is seen) broadcasts to
    /// `[B, heads, L, keys]`; `causal` masks later positions instead.
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Tensor {
        let (b, l, d) = x.size3().expect("[B, L, D]");
        let q = self.split(&x.apply(&self.q));
        let context =
            Tensor::scaled_dot_product_attention(&q, k, v, mask, 0.0, causal, None, false);
        context.transpose(1, 2).reshape([b, l, d]).apply(&self.out)
    }

    /// The projections' weights and biases.
    pub fn parameters(&self) -> Vec<Tensor> {
        [&self.q, &self.k, &self.v, &self.out]
            .iter()
            .flat_map(|l| std::iter::once(&l.ws).chain(l.bs.as_ref()))
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// The keys and values of `x` `[B, S, D]`, split into heads: `[B, heads, S, D / heads]`.
    pub fn keys_values(&self, x: &Tensor) -> (Tensor, Tensor) {
        (self.split(&x.apply(&self.k)), self.split(&x.apply(&self.v)))
    }
}

#[derive(Debug)]
struct Layer {
    self_norm: nn::LayerNorm,
    self_attn: Attention,
    cross_norm: nn::LayerNorm,
    cross_attn: Attention,
    ffn_norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// What the decoder reads: the memory's steps, which of them are seen, and each layer's
/// cross-attention keys and values, computed once.
#[derive(Debug)]
pub struct Memory {
    /// `[B, S, dim]`.
    pub states: Tensor,
    /// `[B, 1, 1, S]` booleans, true at steps that are seen; `None` when all are.
    mask: Option<Tensor>,
    cross: Vec<(Tensor, Tensor)>,
}

impl Memory {
    /// Samples in the batch.
    pub fn batch(&self) -> i64 {
        self.states.size()[0]
    }

    /// The memory of the samples `index` (int64 `[N]`) picks, in its order (repeats allowed).
    pub fn select(&self, index: &Tensor) -> Memory {
        Memory {
            states: self.states.index_select(0, index),
            mask: self.mask.as_ref().map(|m| m.index_select(0, index)),
            cross: self
                .cross
                .iter()
                .map(|(k, v)| (k.index_select(0, index), v.index_select(0, index)))
                .collect(),
        }
    }
}

/// The self-attention keys and values of the tokens decoded so far, per layer.
#[derive(Debug, Default)]
pub struct Cache {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl Cache {
    /// Tokens decoded so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no token was decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the rows `index` picks (beam search follows the surviving beams).
    pub fn select(&mut self, index: &Tensor) {
        for (k, v) in &mut self.layers {
            *k = k.index_select(0, index);
            *v = v.index_select(0, index);
        }
    }
}

/// How [`TransformerDecoder::generate`] writes: from `start` until `eos` or `max_len` tokens
/// in all (start tokens included), greedily (`beam = 1`) or with a beam.
#[derive(Clone)]
pub struct Generation<'a> {
    /// The tokens every output starts from (a start-of-sequence token, Whisper's task tokens).
    pub start: &'a [i64],
    /// The end token: a hypothesis ends when it is chosen (it is not returned).
    pub eos: i64,
    /// The most tokens in all, `start` included (capped at the decoder's positions).
    pub max_len: usize,
    /// Beams; 1 is greedy decoding.
    pub beam: usize,
    /// Beam search ranks finished hypotheses by their summed log-probability over
    /// `length^length_penalty` (tokens written, the end token included where chosen); 1 is the
    /// mean, 0 the sum (which favours short outputs).
    pub length_penalty: f64,
    /// Tokens never written (transformers' `suppress_tokens`).
    pub suppress: &'a [i64],
    /// Tokens not written first (`begin_suppress_tokens`), such as the end token.
    pub begin_suppress: &'a [i64],
    /// A rule applied to the scores `[rows, vocab]` (logits when greedy, log-probabilities in
    /// beam search) after the suppressed tokens, given each row's tokens written so far: what
    /// Whisper's timestamp rules need (transformers' logits processors).
    pub rule: Option<&'a Rule>,
}

impl std::fmt::Debug for Generation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("start", &self.start)
            .field("eos", &self.eos)
            .field("max_len", &self.max_len)
            .field("beam", &self.beam)
            .field("length_penalty", &self.length_penalty)
            .field("suppress", &self.suppress)
            .field("begin_suppress", &self.begin_suppress)
            .field("rule", &self.rule.is_some())
            .finish()
    }
}

/// A rule over the scores of each step (see [`Generation::rule`]).
pub type Rule = dyn Fn(&[&[i64]], &mut Tensor);

impl<'a> Generation<'a> {
    /// Greedy decoding from `start` until `eos` or `max_len` tokens in all.
    pub fn new(start: &'a [i64], eos: i64, max_len: usize) -> Self {
        Generation {
            start,
            eos,
            max_len,
            beam: 1,
            length_penalty: 1.0,
            suppress: &[],
            begin_suppress: &[],
            rule: None,
        }
    }
}

/// The decoder (see the module documentation).
#[derive(Debug)]
pub struct TransformerDecoder {
    tokens: nn::Embedding,
    positions: nn::Embedding,
    layers: Vec<Layer>,
    norm: nn::LayerNorm,
    config: DecoderConfig,
}

impl TransformerDecoder {
    /// A decoder under `path`, randomly initialised (normal, standard deviation 0.02).
    pub fn new(path: &nn::Path, config: &DecoderConfig) -> Result<Self> {
        config.check()?;
        let d = config.dim;
        let emb = |p: nn::Path, n: i64| {
            nn::embedding(
                p,
                n,
                d,
                nn::EmbeddingConfig {
                    ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
                    ..Default::default()
                },
            )
        };
        let layers = (0..config.layers)
            .map(|i| {
                let p = path / "layers" / i;
                let attn =
                    |name: &str| Attention::new(&(&p / name), d, config.heads, config.key_bias);
                Layer {
                    self_norm: norm(&p / "self_attn_layer_norm", d),
                    self_attn: attn("self_attn"),
                    cross_norm: norm(&p / "encoder_attn_layer_norm", d),
                    cross_attn: attn("encoder_attn"),
                    ffn_norm: norm(&p / "final_layer_norm", d),
                    fc1: linear(&p / "fc1", d, config.ffn, true),
                    fc2: linear(&p / "fc2", config.ffn, d, true),
                }
            })
            .collect();
        Ok(TransformerDecoder {
            tokens: emb(path / "embed_tokens", config.vocab),
            positions: emb(path / "embed_positions", config.max_positions),
            layers,
            norm: norm(path / "layer_norm", d),
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The token embedding `[vocab, dim]` (also the output projection).
    pub fn token_embedding(&self) -> &Tensor {
        &self.tokens.ws
    }

    /// The memory the decoder reads: `states` `[B, S, dim]`, with `mask` `[B, S]` (booleans,
    /// true at steps to read; every sample must have one) or `None` for all of them.
    pub fn memory(&self, states: &Tensor, mask: Option<&Tensor>) -> Memory {
        let cross = self.layers.iter().map(|l| l.cross_attn.keys_values(states)).collect();
        Memory {
            states: states.shallow_clone(),
            mask: mask.map(|m| m.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1)),
            cross,
        }
    }

    /// Logits `[B, L, vocab]` of the token after each of `ids` `[B, L]` (teacher forcing: each
    /// position sees the ones before it), with dropout when `train`.
    pub fn forward_t(&self, memory: &Memory, ids: &Tensor, train: bool) -> Tensor {
        self.run(memory, ids, &mut Cache::default(), train)
    }

    /// Logits `[B, L, vocab]` of the next token after each of `ids` `[B, L]`, continuing from
    /// `cache` (the tokens before them), which is extended.
    ///
    /// Panics when the tokens would reach past `max_positions` or an id is out of the
    /// vocabulary (a programmer's error: [`TransformerDecoder::generate`] stays within both).
    pub fn step(&self, memory: &Memory, ids: &Tensor, cache: &mut Cache) -> Tensor {
        self.run(memory, ids, cache, false)
    }

    fn run(&self, memory: &Memory, ids: &Tensor, cache: &mut Cache, train: bool) -> Tensor {
        let (_, l) = ids.size2().expect("[B, L]");
        let device = ids.device();
        let p = self.config.dropout;
        let positions = Tensor::arange_start(cache.len, cache.len + l, (Kind::Int64, device));
        let x = ids.apply(&self.tokens) + positions.apply(&self.positions).unsqueeze(0);
        let mut x = x.dropout(p, train);
        let first = cache.layers.is_empty();
        for (i, layer) in self.layers.iter().enumerate() {
            let y = x.apply(&layer.self_norm);
            let (k, v) = layer.self_attn.keys_values(&y);
            let (k, v) = if first {
                (k, v)
            } else {
                let (pk, pv) = &cache.layers[i];
                (Tensor::cat(&[pk, &k], 2), Tensor::cat(&[pv, &v], 2))
            };
            // Causal within the new tokens; every cached token is before them all. With one new
            // token no mask is needed; with several after a cache, an explicit mask.
            let attended = if first || l == 1 {
                layer.self_attn.attend(&y, &k, &v, None, first && l > 1)
            } else {
                let total = cache.len + l;
                let rows = Tensor::arange_start(cache.len, total, (Kind::Int64, device));
                let cols = Tensor::arange(total, (Kind::Int64, device));
                let mask = cols.unsqueeze(0).le_tensor(&rows.unsqueeze(1));
                layer.self_attn.attend(&y, &k, &v, Some(&mask), false)
            };
            if first {
                cache.layers.push((k, v));
            } else {
                cache.layers[i] = (k, v);
            }
            x = &x + attended.dropout(p, train);
            let (ck, cv) = &memory.cross[i];
            let crossed = layer.cross_attn.attend(
                &x.apply(&layer.cross_norm),
                ck,
                cv,
                memory.mask.as_ref(),
                false,
            );
            x = &x + crossed.dropout(p, train);
            let ffn = x.apply(&layer.ffn_norm).apply(&layer.fc1).gelu("none").dropout(p, train);
            x = &x + ffn.apply(&layer.fc2).dropout(p, train);
        }
        cache.len += l;
        x.apply(&self.norm).matmul(&self.tokens.ws.tr())
    }

    /// Writes one token sequence per memory sample (see [`Generation`]): the tokens after the
    /// start ones, the end token excluded.
    pub fn generate(&self, memory: &Memory, how: &Generation<'_>) -> Vec<Vec<i64>> {
        let max_len = how.max_len.min(self.config.max_positions as usize);
        if how.start.is_empty() || how.start.len() >= max_len {
            return vec![Vec::new(); memory.batch() as usize];
        }
        let device = memory.states.device();
        let vocab = self.config.vocab;
        let ids = |ids: &[i64]| -> Option<Tensor> {
            let ids: Vec<i64> = ids.iter().copied().filter(|i| (0..vocab).contains(i)).collect();
            (!ids.is_empty()).then(|| Tensor::from_slice(&ids).to_device(device))
        };
        let masks = Masks { suppress: ids(how.suppress), begin: ids(how.begin_suppress) };
        let steps = max_len - how.start.len();
        if how.beam <= 1 {
            self.greedy(memory, how, steps, &masks)
        } else {
            self.beam(memory, how, steps, &masks)
        }
    }

    fn greedy(
        &self,
        memory: &Memory,
        how: &Generation<'_>,
        steps: usize,
        masks: &Masks,
    ) -> Vec<Vec<i64>> {
        let b = memory.batch();
        let device = memory.states.device();
        let mut cache = Cache::default();
        let mut ids = Tensor::from_slice(how.start).to_device(device).unsqueeze(0).repeat([b, 1]);
        let mut out = vec![Vec::new(); b as usize];
        let mut done = vec![false; b as usize];
        for step in 0..steps {
            let mut logits = self.step(memory, &ids, &mut cache).select(1, -1);
            masks.apply(&mut logits, step == 0);
            if let Some(rule) = how.rule {
                let rows: Vec<&[i64]> = out.iter().map(Vec::as_slice).collect();
                rule(&rows, &mut logits);
            }
            let next = logits.argmax(-1, false);
            let chosen =
                Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu)).unwrap_or_default();
            for (j, &t) in chosen.iter().enumerate() {
                if done[j] {
                    continue;
                }
                if t == how.eos {
                    done[j] = true;
                } else {
                    out[j].push(t);
                }
            }
            if done.iter().all(|d| *d) {
                break;
            }
            ids = next.unsqueeze(1);
        }
        out
    }

    fn beam(
        &self,
        memory: &Memory,
        how: &Generation<'_>,
        steps: usize,
        masks: &Masks,
    ) -> Vec<Vec<i64>> {
        let b = memory.batch() as usize;
        let k = how.beam;
        let device = memory.states.device();
        let rows: Vec<i64> = (0..b as i64).flat_map(|j| std::iter::repeat_n(j, k)).collect();
        let memory = memory.select(&Tensor::from_slice(&rows).to_device(device));
        let mut cache = Cache::default();
        let mut ids = Tensor::from_slice(how.start)
            .to_device(device)
            .unsqueeze(0)
            .repeat([(b * k) as i64, 1]);
        // Each row's tokens and summed log-probability; only the first beam of a sample is live
        // at the start, so the first step does not choose one token k times.
        let mut beams: Vec<(Vec<i64>, f64)> = (0..b * k)
            .map(|r| (Vec::new(), if r % k == 0 { 0.0 } else { f64::NEG_INFINITY }))
            .collect();
        let mut finished: Vec<Hypotheses> =
            (0..b).map(|_| Hypotheses::new(k, how.length_penalty)).collect();
        let vocab = self.config.vocab as usize;
        for step in 0..steps {
            let logits = self.step(&memory, &ids, &mut cache).select(1, -1);
            let mut logp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
            masks.apply(&mut logp, step == 0);
            if let Some(rule) = how.rule {
                let rows: Vec<&[i64]> = beams.iter().map(|(t, _)| t.as_slice()).collect();
                rule(&rows, &mut logp);
            }
            let scores: Vec<f32> = beams.iter().map(|(_, s)| *s as f32).collect();
            let total = logp + Tensor::from_slice(&scores).to_device(device).unsqueeze(1);
            let width = (2 * k).min(k * vocab);
            let (values, indices) =
                total.view([b as i64, (k * vocab) as i64]).topk(width as i64, -1, true, true);
            let values = Vec::<f32>::try_from(&values.to_device(tch::Device::Cpu).view([-1]))
                .unwrap_or_default();
            let indices = Vec::<i64>::try_from(&indices.to_device(tch::Device::Cpu).view([-1]))
                .unwrap_or_default();
            let mut next: Vec<(usize, i64, f64)> = Vec::with_capacity(b * k);
            for j in 0..b {
                let mut chosen = Vec::with_capacity(k);
                if !finished[j].done {
                    for (rank, c) in (width * j..width * (j + 1)).enumerate() {
                        let (score, index) = (f64::from(values[c]), indices[c] as usize);
                        let (row, token) = (j * k + index / vocab, index % vocab);
                        if score == f64::NEG_INFINITY {
                            break;
                        }
                        if token as i64 == how.eos {
                            if rank < k {
                                let length = beams[row].0.len() + 1;
                                finished[j].add(beams[row].0.clone(), score, length);
                            }
                        } else {
                            chosen.push((row, token as i64, score));
                        }
                        if chosen.len() == k {
                            break;
                        }
                    }
                    let best_live = chosen.first().map_or(f64::NEG_INFINITY, |c| c.2);
                    finished[j].check_done(best_live, beams[j * k].0.len() + 1);
                    // No live candidate left (every token suppressed or ending): nothing to grow.
                    finished[j].done |= chosen.is_empty();
                }
                // A finished sample (or one with too few live candidates) keeps dead rows.
                while chosen.len() < k {
                    chosen.push((j * k, how.eos, f64::NEG_INFINITY));
                }
                next.extend(chosen);
            }
            if finished.iter().all(|f| f.done) {
                break;
            }
            let index: Vec<i64> = next.iter().map(|(row, _, _)| *row as i64).collect();
            cache.select(&Tensor::from_slice(&index).to_device(device));
            beams = next
                .iter()
                .map(|(row, token, score)| {
                    let mut tokens = beams[*row].0.clone();
                    tokens.push(*token);
                    (tokens, *score)
                })
                .collect();
            let tokens: Vec<i64> = next.iter().map(|(_, token, _)| *token).collect();
            ids = Tensor::from_slice(&tokens).to_device(device).unsqueeze(1);
        }
        // Out of steps: the live beams compete with the finished ones.
        for (j, hyps) in finished.iter_mut().enumerate() {
            if !hyps.done {
                for (tokens, score) in &beams[j * k..(j + 1) * k] {
                    if score.is_finite() {
                        hyps.add(tokens.clone(), *score, tokens.len());
                    }
                }
            }
        }
        finished.into_iter().map(Hypotheses::best).collect()
    }
}

/// Tokens set to minus infinity before a choice.
struct Masks {
    suppress: Option<Tensor>,
    begin: Option<Tensor>,
}

impl Masks {
    fn apply(&self, logits: &mut Tensor, first: bool) {
        let begin = if first { self.begin.as_ref() } else { None };
        for m in self.suppress.iter().chain(begin) {
            let _ = logits.index_fill_(1, m, f64::NEG_INFINITY);
        }
    }
}

/// A sample's finished hypotheses: the `k` best by length-normalised score.
struct Hypotheses {
    k: usize,
    length_penalty: f64,
    kept: Vec<(f64, Vec<i64>)>,
    done: bool,
}

impl Hypotheses {
    fn new(k: usize, length_penalty: f64) -> Self {
        Hypotheses { k, length_penalty, kept: Vec::new(), done: false }
    }

    fn normalised(&self, score: f64, tokens: usize) -> f64 {
        score / (tokens.max(1) as f64).powf(self.length_penalty)
    }

    /// Adds a hypothesis of `tokens` and summed log-probability `score` over `length` tokens
    /// (the end token, not among `tokens`, counted when the hypothesis chose it).
    fn add(&mut self, tokens: Vec<i64>, score: f64, length: usize) {
        let s = self.normalised(score, length);
        self.kept.push((s, tokens));
        self.kept.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.kept.truncate(self.k);
    }

    /// Done once `k` hypotheses are finished and the best live beam (summed log-probability
    /// `best_live` over `length` tokens) cannot beat the worst of them, as transformers decides
    /// without early stopping.
    fn check_done(&mut self, best_live: f64, length: usize) {
        if self.kept.len() < self.k {
            return;
        }
        let worst = self.kept.last().map_or(f64::NEG_INFINITY, |h| h.0);
        self.done = self.normalised(best_live, length) <= worst;
    }

    fn best(self) -> Vec<i64> {
        self.kept.into_iter().next().map(|(_, t)| t).unwrap_or_default()
    }
}
