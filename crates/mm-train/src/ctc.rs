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
        let (best, value) = row.iter().enumerate().fold((0, f64::NEG_INFINITY), |a, (c, v)| if *v > a.1 { (c, *v) } else { a });
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
    let mut beams: HashMap<Vec<usize>, (f64, f64)> = HashMap::from([(Vec::new(), (0.0, f64::NEG_INFINITY))]);
    for row in log_probs.chunks_exact(classes.max(1)) {
        let mut next: HashMap<Vec<usize>, (f64, f64)> = HashMap::new();
        for (prefix, &(pb, pnb)) in &beams {
            let total = log_add(pb, pnb);
            for (c, &lp) in row.iter().enumerate() {
                if c == blank {
                    let e = next.entry(prefix.clone()).or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
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
                    let same = next.entry(prefix.clone()).or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                    same.1 = log_add(same.1, pnb + lp);
                } else {
                    let e = next.entry(extended).or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                    e.1 = log_add(e.1, total + lp);
                }
            }
        }
        let mut ranked: Vec<(Vec<usize>, (f64, f64))> = next.into_iter().collect();
        ranked.sort_by(|a, b| log_add(b.1 .0, b.1 .1).total_cmp(&log_add(a.1 .0, a.1 .1)).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(width);
        beams = ranked.into_iter().collect();
    }
    let mut out: Vec<Decoded> = beams.into_iter().map(|(labels, (pb, pnb))| Decoded { labels, frames: Vec::new(), log_prob: log_add(pb, pnb) }).collect();
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
        let (r, h): (Vec<&str>, Vec<&str>) = (r.split_whitespace().collect(), h.split_whitespace().collect());
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
        assert_eq!(edit_distance(&['k', 'i', 't', 't', 'e', 'n'], &['s', 'i', 't', 't', 'i', 'n', 'g']), 3);
        // One substitution in 4 words, one deletion in 2: 2 / 6.
        let wer = word_error_rate(&[("one two three four", "one two tree four"), ("five six", "five")]).expect("words");
        assert!((wer - 2.0 / 6.0).abs() < 1e-12);
        let cer = char_error_rate(&[("abc", "abd")]).expect("chars");
        assert!((cer - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(word_error_rate(&[("", "x")]), None);
    }
}
