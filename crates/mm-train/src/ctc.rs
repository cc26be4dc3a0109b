//! Decoding the output of a model trained with CTC ([`crate::loss::ctc`]): per-frame
//! log-probabilities over the classes (one of them the blank) to a label sequence.
//!
//! - [`greedy`]: the best class of every frame, repeats merged, blanks removed (best path), with
//!   the frames where each label starts and ends;
//! - [`beam_search`]: CTC prefix beam search (Hannun et al. 2014, without a language model): the
//!   labellings with the highest probability summed over all their alignments, which the best
//!   path can miss.
//!
//! Both take `[T, C]` log-probabilities as rows of a slice (host memory: decoding is sequential
//! work done once per utterance), as `torchaudio.models.decoder` and `ctcdecode` do.
//!
//! ```
//! use mm_train::ctc::{beam_search, greedy};
//! // 3 frames over {blank, a, b}: the best path (a a blank) reads "a"; beam search also finds
//! // "a", with the probability of all its alignments (a blank blank, blank a blank, ...).
//! let p = |v: [f64; 3]| v.map(f64::ln);
//! let frames = [p([0.1, 0.6, 0.3]), p([0.1, 0.6, 0.3]), p([0.8, 0.1, 0.1])];
//! let rows: Vec<f64> = frames.concat();
//! assert_eq!(greedy(&rows, 3, 0).labels, vec![1]);
//! let beams = beam_search(&rows, 3, 0, 4);
//! assert_eq!(beams[0].labels, vec![1]);
//! assert!(beams[0].log_prob > (0.6f64 * 0.6 * 0.8).ln()); // more than the best path alone
//! ```

use std::collections::HashMap;

/// A decoded label sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The labels (class ids, blank excluded).
    pub labels: Vec<usize>,
    /// For each label, its first and last frame (greedy decoding; empty from beam search).
    pub frames: Vec<(usize, usize)>,
    /// Log-probability: of the best path (greedy), or summed over the alignments (beam search).
    pub log_prob: f64,
}

/// Best-path decoding of `log_probs` (`T` rows of `classes` values).
pub fn greedy(log_probs: &[f64], classes: usize, blank: usize) -> Decoded {
    let mut labels = Vec::new();
    let mut frames: Vec<(usize, usize)> = Vec::new();
    let mut log_prob = 0.0;
    let mut previous = blank;
    for (t, row) in log_probs.chunks_exact(classes.max(1)).enumerate() {
        let (best, value) =
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |a, (c, v)| if *v > a.1 { (c, *v) } else { a });
        log_prob += value;
        if best != blank {
            if best != previous {
                labels.push(best);
                frames.push((t, t));
            } else if let Some(last) = frames.last_mut() {
                last.1 = t;
            }
        }
        previous = best;
    }
    Decoded { labels, frames, log_prob }
}

/// The fewest frames that can hold `labels` under CTC: one per label, and a blank between
/// each pair of equal neighbours.
pub fn min_steps<T: PartialEq>(labels: &[T]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// The most probable alignment (Viterbi, over CTC's blank-separated paths) of `labels` to
/// `log_probs` (`T` rows of `classes` values): each label's first and last frame, and the
/// path's log-probability; `None` when the frames cannot hold the labels ([`min_steps`]).
/// With the labels a decoder found, this times them; with a transcript, it is forced alignment.
pub fn align(log_probs: &[f64], classes: usize, blank: usize, labels: &[usize]) -> Option<Decoded> {
    let t_max = log_probs.len() / classes.max(1);
    if t_max < min_steps(labels).max(1) {
        return None;
    }
    // Extended sequence: blank, l1, blank, l2, ..., blank.
    let ext: Vec<usize> =
        std::iter::once(blank).chain(labels.iter().flat_map(|&l| [l, blank])).collect();
    let n = ext.len();
    let lp = |t: usize, c: usize| log_probs[t * classes + c];
    let mut score = vec![f64::NEG_INFINITY; n];
    let mut from = vec![0u32; t_max * n];
    score[0] = lp(0, ext[0]);
    if n > 1 {
        score[1] = lp(0, ext[1]);
    }
    for t in 1..t_max {
        let mut next = vec![f64::NEG_INFINITY; n];
        for s in 0..n {
            let mut best = (score[s], s);
            if s >= 1 && score[s - 1] > best.0 {
                best = (score[s - 1], s - 1);
            }
            if s >= 2 && ext[s] != blank && ext[s] != ext[s - 2] && score[s - 2] > best.0 {
                best = (score[s - 2], s - 2);
            }
            if best.0 > f64::NEG_INFINITY {
                next[s] = best.0 + lp(t, ext[s]);
                from[t * n + s] = best.1 as u32;
            }
        }
        score = next;
    }
    let end = if n > 1 && score[n - 2] > score[n - 1] { n - 2 } else { n - 1 };
    if score[end] == f64::NEG_INFINITY {
        return None;
    }
    let log_prob = score[end];
    let mut frames = vec![(usize::MAX, 0usize); labels.len()];
    let mut s = end;
    for t in (0..t_max).rev() {
        if s % 2 == 1 {
            let f = &mut frames[s / 2];
            f.0 = f.0.min(t);
            f.1 = f.1.max(t);
        }
        if t > 0 {
            s = from[t * n + s] as usize;
        }
    }
    Some(Decoded { labels: labels.to_vec(), frames, log_prob })
}

/// Decodes a batch of a CTC model's output: `log_probs` `[B, T, C]` (any device) and each
/// sample's valid steps `[B]`, greedily (`beam` of 0 or 1) or by prefix beam search of that
/// width; beam-search results are timed by [`align`].
pub fn decode_batch(
    log_probs: &tch::Tensor,
    lengths: &tch::Tensor,
    blank: usize,
    beam: usize,
) -> Vec<Decoded> {
    let (b, t, c) = log_probs.size3().expect("[B, T, C] log-probabilities");
    let host: Vec<f64> = Vec::try_from(
        log_probs.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double).contiguous().view([-1]),
    )
    .unwrap_or_default();
    let lengths: Vec<i64> =
        Vec::try_from(lengths.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64))
            .unwrap_or_default();
    let (t, c) = (t as usize, c as usize);
    (0..b as usize)
        .map(|j| {
            let steps = (lengths.get(j).copied().unwrap_or(0).max(0) as usize).min(t);
            let rows = &host[j * t * c..(j * t + steps) * c];
            if beam <= 1 {
                return greedy(rows, c, blank);
            }
            let best = beam_search(rows, c, blank, beam).into_iter().next().unwrap_or(Decoded {
                labels: Vec::new(),
                frames: Vec::new(),
                log_prob: 0.0,
            });
            let log_prob = best.log_prob;
            align(rows, c, blank, &best.labels).map(|a| Decoded { log_prob, ..a }).unwrap_or(best)
        })
        .collect()
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// CTC prefix beam search over `log_probs` (`T` rows of `classes` values), keeping `width`
/// prefixes per frame; returns the kept labellings, most probable first.
pub fn beam_search(log_probs: &[f64], classes: usize, blank: usize, width: usize) -> Vec<Decoded> {
    let width = width.max(1);
    // Each prefix: (log p ending in blank, log p ending in its last label).
    let mut beams: HashMap<Vec<usize>, (f64, f64)> =
        HashMap::from([(Vec::new(), (0.0, f64::NEG_INFINITY))]);
    for row in log_probs.chunks_exact(classes.max(1)) {
        let mut next: HashMap<Vec<usize>, (f64, f64)> = HashMap::new();
        for (prefix, &(pb, pnb)) in &beams {
            let total = log_add(pb, pnb);
            for (c, &lp) in row.iter().enumerate() {
                if c == blank {
                    let e = next
                        .entry(prefix.clone())
                        .or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                    e.0 = log_add(e.0, total + lp);
                    continue;
                }
                let last = prefix.last().copied();
                let mut extended = prefix.clone();
                extended.push(c);
                if last == Some(c) {
                    // A repeat extends only across a blank; without one it merges into the prefix.
                    let e = next.entry(extended).or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                    e.1 = log_add(e.1, pb + lp);
                    let same = next
                        .entry(prefix.clone())
                        .or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                    same.1 = log_add(same.1, pnb + lp);
                } else {
                    let e = next.entry(extended).or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                    e.1 = log_add(e.1, total + lp);
                }
            }
        }
        let mut ranked: Vec<(Vec<usize>, (f64, f64))> = next.into_iter().collect();
        ranked.sort_by(|a, b| {
            log_add(b.1 .0, b.1 .1).total_cmp(&log_add(a.1 .0, a.1 .1)).then_with(|| a.0.cmp(&b.0))
        });
        ranked.truncate(width);
        beams = ranked.into_iter().collect();
    }
    let mut out: Vec<Decoded> = beams
        .into_iter()
        .map(|(labels, (pb, pnb))| Decoded {
            labels,
            frames: Vec::new(),
            log_prob: log_add(pb, pnb),
        })
        .collect();
    out.sort_by(|a, b| b.log_prob.total_cmp(&a.log_prob).then_with(|| a.labels.cmp(&b.labels)));
    out
}

/// Levenshtein distance between two sequences (substitutions, insertions, deletions).
pub fn edit_distance<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> usize {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diagonal + usize::from(r != h)).min(up + 1).min(row[j] + 1);
            diagonal = up;
        }
    }
    row[hypothesis.len()]
}

/// Word error rate over utterances: the summed word edit distances over the summed reference
/// word counts (words split on white space), as `jiwer` computes it; `None` without reference
/// words.
pub fn word_error_rate(pairs: &[(&str, &str)]) -> Option<f64> {
    let (errors, words) = pairs.iter().fold((0, 0), |(e, n), (r, h)| {
        let (r, h): (Vec<&str>, Vec<&str>) =
            (r.split_whitespace().collect(), h.split_whitespace().collect());
        (e + edit_distance(&r, &h), n + r.len())
    });
    (words > 0).then(|| errors as f64 / words as f64)
}

/// Character error rate over utterances: summed character edit distances over summed reference
/// lengths (in characters); `None` for empty references.
pub fn char_error_rate(pairs: &[(&str, &str)]) -> Option<f64> {
    let (errors, chars) = pairs.iter().fold((0, 0), |(e, n), (r, h)| {
        let (r, h): (Vec<char>, Vec<char>) = (r.chars().collect(), h.chars().collect());
        (e + edit_distance(&r, &h), n + r.len())
    });
    (chars > 0).then(|| errors as f64 / chars as f64)
}

/// Error counts summed over utterances, from which [`ErrorCounts::wer`] and
/// [`ErrorCounts::cer`] follow; sums, so that counts from several shards or ranks add up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorCounts {
    /// Summed word edit distances.
    pub word_edits: usize,
    /// Summed reference words.
    pub words: usize,
    /// Summed character edit distances.
    pub char_edits: usize,
    /// Summed reference characters.
    pub chars: usize,
    /// Utterances counted.
    pub utterances: usize,
    /// Utterances whose hypothesis is the reference exactly.
    pub exact: usize,
}

impl ErrorCounts {
    /// Counts one utterance.
    pub fn add(&mut self, reference: &str, hypothesis: &str) {
        let (rw, hw): (Vec<&str>, Vec<&str>) =
            (reference.split_whitespace().collect(), hypothesis.split_whitespace().collect());
        let (rc, hc): (Vec<char>, Vec<char>) =
            (reference.chars().collect(), hypothesis.chars().collect());
        self.word_edits += edit_distance(&rw, &hw);
        self.words += rw.len();
        self.char_edits += edit_distance(&rc, &hc);
        self.chars += rc.len();
        self.utterances += 1;
        self.exact += usize::from(rw == hw);
    }

    /// Word error rate; `None` without reference words.
    pub fn wer(&self) -> Option<f64> {
        (self.words > 0).then(|| self.word_edits as f64 / self.words as f64)
    }

    /// Character error rate; `None` without reference characters.
    pub fn cer(&self) -> Option<f64> {
        (self.chars > 0).then(|| self.char_edits as f64 / self.chars as f64)
    }

    /// The counts as numbers (for an all-reduce), in field order.
    pub fn to_values(&self) -> [f64; 6] {
        [self.word_edits, self.words, self.char_edits, self.chars, self.utterances, self.exact]
            .map(|v| v as f64)
    }

    /// The counts from [`ErrorCounts::to_values`].
    pub fn from_values(v: &[f64]) -> Self {
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0).round().max(0.0) as usize;
        ErrorCounts {
            word_edits: at(0),
            words: at(1),
            char_edits: at(2),
            chars: at(3),
            utterances: at(4),
            exact: at(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(p: &[[f64; 3]]) -> Vec<f64> {
        p.iter().flat_map(|r| r.map(f64::ln)).collect()
    }

    #[test]
    fn greedy_merges_repeats_drops_blanks_and_times_each_label() {
        // frames: a a blank a b b blank  -> "a a b" with a blank between the two a's.
        let one = |c: usize| {
            let mut r = [0.05; 3];
            r[c] = 0.9;
            r
        };
        let p = rows(&[one(1), one(1), one(0), one(1), one(2), one(2), one(0)]);
        let d = greedy(&p, 3, 0);
        assert_eq!(d.labels, vec![1, 1, 2]);
        assert_eq!(d.frames, vec![(0, 1), (3, 3), (4, 5)]);
        assert!((d.log_prob - 7.0 * 0.9f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn beam_search_finds_the_labelling_the_best_path_misses() {
        // Two frames over {blank, a}: the best path is blank-blank (0.6² = 0.36, the empty
        // labelling), but "a" collects a-a, a-blank and blank-a: 0.16 + 0.24 + 0.24 = 0.64.
        let p: Vec<f64> = [[0.6, 0.4], [0.6, 0.4]].iter().flat_map(|r| r.map(f64::ln)).collect();
        assert_eq!(greedy(&p, 2, 0).labels, Vec::<usize>::new());
        let beams = beam_search(&p, 2, 0, 4);
        assert_eq!(beams[0].labels, vec![1]);
        assert!((beams[0].log_prob - 0.64f64.ln()).abs() < 1e-12, "{beams:?}");
        assert_eq!(beams[1].labels, Vec::<usize>::new());
        assert!((beams[1].log_prob - 0.36f64.ln()).abs() < 1e-12);
        // All labellings together hold all the probability.
        let total = beams.iter().map(|b| b.log_prob.exp()).sum::<f64>();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
    }

    #[test]
    fn beam_search_keeps_repeats_apart_only_across_a_blank() {
        // Three frames over {blank, a}, all certain: a a a is "a"; a blank a is "a a".
        let certain = |c: usize| if c == 0 { [1.0, 1e-12] } else { [1e-12, 1.0] };
        let p: Vec<f64> = [1, 1, 1].iter().flat_map(|&c| certain(c).map(f64::ln)).collect();
        assert_eq!(beam_search(&p, 2, 0, 3)[0].labels, vec![1]);
        let p: Vec<f64> = [1, 0, 1].iter().flat_map(|&c| certain(c).map(f64::ln)).collect();
        assert_eq!(beam_search(&p, 2, 0, 3)[0].labels, vec![1, 1]);
    }

    #[test]
    fn error_rates_count_edits_over_reference_length() {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(edit_distance(&["a"; 0], &["x", "y"]), 2);
        assert_eq!(
            edit_distance(&['k', 'i', 't', 't', 'e', 'n'], &['s', 'i', 't', 't', 'i', 'n', 'g']),
            3
        );
        // One substitution in 4 words, one deletion in 2: 2 / 6.
        let wer =
            word_error_rate(&[("one two three four", "one two tree four"), ("five six", "five")])
                .expect("words");
        assert!((wer - 2.0 / 6.0).abs() < 1e-12);
        let cer = char_error_rate(&[("abc", "abd")]).expect("chars");
        assert!((cer - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(word_error_rate(&[("", "x")]), None);
    }

    #[test]
    fn error_counts_add_up_across_parts() {
        let mut a = ErrorCounts::default();
        a.add("one two three four", "one two tree four");
        let mut b = ErrorCounts::default();
        b.add("five six", "five");
        b.add("seven", "seven");
        let sum: Vec<f64> = a.to_values().iter().zip(b.to_values()).map(|(x, y)| x + y).collect();
        let total = ErrorCounts::from_values(&sum);
        assert_eq!((total.word_edits, total.words, total.utterances, total.exact), (2, 7, 3, 1));
        assert!((total.wer().expect("words") - 2.0 / 7.0).abs() < 1e-12);
        assert_eq!(ErrorCounts::default().cer(), None);
    }

    #[test]
    fn alignment_times_each_label_and_refuses_too_few_frames() {
        // {blank, a, b}: frames favour a a blank b b; forcing "a b" must time a to 0..=1 and
        // b to 3..=4 (frame 2 the blank).
        let frames =
            [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]];
        let p = rows(&frames);
        let a = align(&p, 3, 0, &[1, 2]).expect("feasible");
        assert_eq!(a.frames, vec![(0, 1), (3, 4)]);
        assert!((a.log_prob - (0.8f64.powi(5)).ln()).abs() < 1e-9);
        // "a a" needs a blank between: 3 frames at least; 2 frames cannot hold it.
        assert_eq!(min_steps(&[1, 1]), 3);
        assert!(align(&p[..6], 3, 0, &[1, 1]).is_none());
        let aa = align(&p, 3, 0, &[1, 1]).expect("feasible");
        assert!(aa.frames[0].1 < aa.frames[1].0, "{:?}", aa.frames);
        // A batch: greedy and beam agree here, and beam results are timed.
        let t = tch::Tensor::from_slice(&p).view([1, 5, 3]);
        let lengths = tch::Tensor::from_slice(&[5i64]);
        let g = decode_batch(&t, &lengths, 0, 1);
        let b = decode_batch(&t, &lengths, 0, 8);
        assert_eq!(g[0].labels, vec![1, 2]);
        assert_eq!(b[0].labels, vec![1, 2]);
        assert_eq!(b[0].frames, vec![(0, 1), (3, 4)]);
    }
}
