//! Metrics, computed on the host from predictions gathered over an evaluation pass:
//! classification (accuracy, top-k, confusion matrix, per-class precision, recall and F1,
//! macro-F1, AUROC binary and one-vs-rest), regression (MAE, MSE, Pearson correlation) and
//! cross-modal retrieval (Recall@K, median rank and mean reciprocal rank, in both directions)
//! and generated text (corpus BLEU, CIDEr-D).
//!
//! Conventions (scikit-learn's where it has one): a class with no true and no predicted sample
//! is left out of macro averages; precision or recall with a zero denominator is 0; AUROC counts
//! ties as one half, and one-vs-rest skips classes with no positive or no negative sample.
//!
//! ```
//! use mm_train::metrics::{accuracy, confusion_matrix, macro_f1};
//!
//! let truth = [0, 0, 1, 1, 2];
//! let pred = [0, 1, 1, 1, 0];
//! assert_eq!(accuracy(&pred, &truth), 0.6);
//! assert_eq!(confusion_matrix(&pred, &truth, 3), vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
//! // F1: class 0 = 0.5, class 1 = 0.8, class 2 = 0.
//! assert!((macro_f1(&pred, &truth, 3) - 1.3 / 3.0).abs() < 1e-12);
//! ```

/// Share of `pred[i] == truth[i]` (0 for no samples).
pub fn accuracy(pred: &[usize], truth: &[usize]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    pred.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / truth.len() as f64
}

/// The class with the highest score in each row of `scores` (`n × C`, row-major).
pub fn argmax(scores: &[f32], classes: usize) -> Vec<usize> {
    scores
        .chunks(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |best, (i, &s)| if s > best.1 { (i, s) } else { best },
                )
                .0
        })
        .collect()
}

/// Share of samples whose true class is among the `k` highest scores (ties broken by class
/// order).
pub fn top_k(scores: &[f32], classes: usize, truth: &[usize], k: usize) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    let hits = scores
        .chunks(classes.max(1))
        .zip(truth)
        .filter(|(row, &t)| {
            let s = row[t];
            // Rank of the true class: classes strictly above it, plus equal ones before it.
            let above =
                row.iter().enumerate().filter(|(i, &x)| x > s || (x == s && *i < t)).count();
            above < k
        })
        .count();
    hits as f64 / truth.len() as f64
}

/// `C × C` counts: row = true class, column = predicted class.
pub fn confusion_matrix(pred: &[usize], truth: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&p, &t) in pred.iter().zip(truth) {
        if p < classes && t < classes {
            m[t][p] += 1;
        }
    }
    m
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    /// TP / (TP + FP), 0 when nothing was predicted as the class.
    pub precision: f64,
    /// TP / (TP + FN), 0 when the class has no sample.
    pub recall: f64,
    /// Harmonic mean of the two, 0 when both are 0.
    pub f1: f64,
    /// Samples of the class.
    pub support: usize,
}

/// Per-class precision, recall, F1 and support.
pub fn per_class(pred: &[usize], truth: &[usize], classes: usize) -> Vec<ClassScores> {
    let m = confusion_matrix(pred, truth, classes);
    (0..classes)
        .map(|c| {
            let tp = m[c][c] as f64;
            let predicted: usize = (0..classes).map(|t| m[t][c]).sum();
            let support: usize = m[c].iter().sum();
            let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
            let recall = if support == 0 { 0.0 } else { tp / support as f64 };
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassScores { precision, recall, f1, support }
        })
        .collect()
}

/// Mean F1 over the classes that occur in `truth` or `pred`.
pub fn macro_f1(pred: &[usize], truth: &[usize], classes: usize) -> f64 {
    let scores = per_class(pred, truth, classes);
    let used: Vec<f64> = (0..classes)
        .filter(|&c| truth.contains(&c) || pred.contains(&c))
        .map(|c| scores[c].f1)
        .collect();
    if used.is_empty() {
        0.0
    } else {
        used.iter().sum::<f64>() / used.len() as f64
    }
}

/// Area under the ROC curve for binary labels (Mann-Whitney U, ties count one half); `None`
/// when one of the two classes is absent. mm-data's, which the synthetic data set's ceilings
/// use too.
pub use mm_data::stats::auroc;

/// One-vs-rest AUROC per class from `n × C` scores (`None` for a class with no positive or no
/// negative sample), and their mean over the classes that have one.
pub fn auroc_ovr(
    scores: &[f32],
    classes: usize,
    truth: &[usize],
) -> (Vec<Option<f64>>, Option<f64>) {
    let per: Vec<Option<f64>> = (0..classes)
        .map(|c| {
            let s: Vec<f64> = scores.chunks(classes).map(|row| f64::from(row[c])).collect();
            let p: Vec<bool> = truth.iter().map(|&t| t == c).collect();
            auroc(&s, &p)
        })
        .collect();
    let defined: Vec<f64> = per.iter().flatten().copied().collect();
    let mean = (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    (per, mean)
}

/// Mean absolute error.
pub fn mae(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter().zip(truth).map(|(p, t)| (p - t).abs()).sum::<f64>() / truth.len().max(1) as f64
}

/// Mean squared error.
pub fn mse(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum::<f64>() / truth.len().max(1) as f64
}

/// Pearson correlation; `None` when either side is constant.
pub fn pearson(pred: &[f64], truth: &[f64]) -> Option<f64> {
    let n = truth.len() as f64;
    if n < 2.0 {
        return None;
    }
    let (mp, mt) = (pred.iter().sum::<f64>() / n, truth.iter().sum::<f64>() / n);
    let cov: f64 = pred.iter().zip(truth).map(|(p, t)| (p - mp) * (t - mt)).sum();
    let vp: f64 = pred.iter().map(|p| (p - mp).powi(2)).sum();
    let vt: f64 = truth.iter().map(|t| (t - mt).powi(2)).sum();
    (vp > 0.0 && vt > 0.0).then(|| cov / (vp * vt).sqrt())
}

/// Retrieval scores in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    /// Recall@1, @5, @10: share of queries whose match ranks in the top K.
    pub recall: [f64; 3],
    /// Median rank of the match (1 = first).
    pub median_rank: f64,
    /// Mean of 1 / rank.
    pub mrr: f64,
}

/// Ranks (1-based) of item `i` for query `i` in an `n × n` similarity matrix (row-major;
/// ties count against the match: an item as similar as the match ranks before it).
pub fn match_ranks(similarity: &[f32], n: usize) -> Vec<usize> {
    similarity
        .chunks(n.max(1))
        .take(n)
        .enumerate()
        .map(|(i, row)| 1 + row.iter().enumerate().filter(|(j, &s)| *j != i && s >= row[i]).count())
        .collect()
}

fn summarise(ranks: &[usize]) -> Retrieval {
    let n = ranks.len().max(1) as f64;
    let recall = [1, 5, 10].map(|k| ranks.iter().filter(|&&r| r <= k).count() as f64 / n);
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    let median_rank = match sorted.len() {
        0 => 0.0,
        l if l % 2 == 1 => sorted[l / 2] as f64,
        l => (sorted[l / 2 - 1] + sorted[l / 2]) as f64 / 2.0,
    };
    let mrr = ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n;
    Retrieval { recall, median_rank, mrr }
}

/// Category-level retrieval in one direction: an item of the gallery is relevant to a query
/// when it carries the query's label (the usual measure where pairs are formed by class, as in
/// audio-visual digits).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassRetrieval {
    /// Share of queries with a relevant item in the top 1, 5, 10.
    pub recall: [f64; 3],
    /// Mean average precision over the queries that have a relevant item.
    pub map: f64,
}

/// Category-level retrieval one way: `similarity[i][j]` (row-major, `n × n`) compares query `i`
/// with gallery item `j`; `query_labels[i]` and `gallery_labels[j]` say what is relevant.
/// Ties in similarity are ranked by gallery index.
pub fn class_retrieval(
    similarity: &[f32],
    n: usize,
    query_labels: &[i64],
    gallery_labels: &[i64],
) -> ClassRetrieval {
    let (mut hits, mut ap_sum, mut with_relevant) = ([0usize; 3], 0.0, 0usize);
    for (i, row) in similarity.chunks(n.max(1)).take(n).enumerate() {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let relevant: Vec<bool> =
            order.iter().map(|&j| gallery_labels[j] == query_labels[i]).collect();
        for (k, cut) in [1usize, 5, 10].iter().enumerate() {
            hits[k] += usize::from(relevant.iter().take(*cut).any(|r| *r));
        }
        let (mut found, mut precision_sum) = (0usize, 0.0);
        for (rank, r) in relevant.iter().enumerate() {
            if *r {
                found += 1;
                precision_sum += found as f64 / (rank + 1) as f64;
            }
        }
        if found > 0 {
            ap_sum += precision_sum / found as f64;
            with_relevant += 1;
        }
    }
    let q = n.max(1) as f64;
    ClassRetrieval { recall: hits.map(|h| h as f64 / q), map: ap_sum / with_relevant.max(1) as f64 }
}

/// `similarity` (`n × n`, row-major) transposed: the other direction of retrieval.
pub fn transpose(similarity: &[f32], n: usize) -> Vec<f32> {
    let mut transposed = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            transposed[j * n + i] = similarity[i * n + j];
        }
    }
    transposed
}

/// Retrieval from `a` to `b` and from `b` to `a`, where `similarity[i][j]` compares `a_i` with
/// `b_j` (`n × n`, row-major) and `a_i` matches `b_i`.
pub fn retrieval(similarity: &[f32], n: usize) -> (Retrieval, Retrieval) {
    let forward = summarise(&match_ranks(similarity, n));
    let backward = summarise(&match_ranks(&transpose(similarity, n), n));
    (forward, backward)
}

/// Every n-gram of `words` of length `n`, with its count.
fn ngrams(words: &[String], n: usize) -> std::collections::HashMap<&[String], usize> {
    let mut counts = std::collections::HashMap::new();
    if n > 0 {
        for gram in words.windows(n) {
            *counts.entry(gram).or_default() += 1;
        }
    }
    counts
}

/// Corpus BLEU (Papineni et al. 2002) over words: n-gram precisions for n = 1 to `max_n`,
/// each hypothesis's counts clipped by the most any one of its references holds, summed over
/// the corpus, their geometric mean times the brevity penalty, the reference length taken as
/// the closest to each hypothesis's (the shorter on a tie), as coco-caption's scorer does. No
/// smoothing: a corpus with no matching n-gram of some order scores 0. In [0, 1].
///
/// ```
/// use mm_train::metrics::bleu;
///
/// let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
/// let hyp = vec![words("a red square on the left")];
/// let refs = vec![vec![words("a red square on the left")]];
/// assert!((bleu(&hyp, &refs, 4) - 1.0).abs() < 1e-12);
/// let short = vec![words("a red square")];
/// // Every n-gram matches, but the hypothesis is half as long: exp(1 - 6 / 3).
/// assert!((bleu(&short, &refs, 3) - (-1f64).exp()).abs() < 1e-12);
/// ```
pub fn bleu(hyps: &[Vec<String>], refs: &[Vec<Vec<String>>], max_n: usize) -> f64 {
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    let mut matched = vec![0usize; max_n];
    let mut total = vec![0usize; max_n];
    for (hyp, references) in hyps.iter().zip(refs) {
        hyp_len += hyp.len();
        ref_len += references
            .iter()
            .map(Vec::len)
            .min_by_key(|l| (l.abs_diff(hyp.len()), *l))
            .unwrap_or(0);
        for n in 1..=max_n {
            let mut most: std::collections::HashMap<&[String], usize> =
                std::collections::HashMap::new();
            for r in references {
                for (gram, c) in ngrams(r, n) {
                    let m = most.entry(gram).or_default();
                    *m = (*m).max(c);
                }
            }
            for (gram, c) in ngrams(hyp, n) {
                matched[n - 1] += c.min(most.get(gram).copied().unwrap_or(0));
            }
            total[n - 1] += hyp.len().saturating_sub(n - 1);
        }
    }
    if hyp_len == 0 || max_n == 0 || matched.iter().zip(&total).any(|(m, t)| *m == 0 || *t == 0) {
        return 0.0;
    }
    let log_precision =
        matched.iter().zip(&total).map(|(m, t)| (*m as f64 / *t as f64).ln()).sum::<f64>()
            / max_n as f64;
    let brevity = if hyp_len >= ref_len { 0.0 } else { 1.0 - ref_len as f64 / hyp_len as f64 };
    (log_precision + brevity).exp()
}

/// Weights of n-grams.
type Weights<'a> = std::collections::HashMap<&'a [String], f64>;

/// A sentence's TF-IDF vectors for n = 1 to 4, their norms and its length (as coco-caption
/// counts it: its bigrams).
fn cider_vectors<'a>(
    words: &'a [String],
    df: &Weights<'_>,
    log_docs: f64,
) -> (Vec<Weights<'a>>, [f64; 4], usize) {
    let mut vectors = Vec::with_capacity(4);
    let mut norms = [0.0; 4];
    for n in 1..=4 {
        let v: std::collections::HashMap<&[String], f64> = ngrams(words, n)
            .into_iter()
            .map(|(g, c)| {
                (g, c as f64 * (log_docs - df.get(g).copied().unwrap_or(1.0).max(1.0).ln()))
            })
            .collect();
        norms[n - 1] = v.values().map(|x| x * x).sum::<f64>().sqrt();
        vectors.push(v);
    }
    (vectors, norms, words.len().saturating_sub(1))
}

/// CIDEr-D (Vedantam et al. 2015) as coco-caption computes it: n-grams for n = 1 to 4 weighted
/// by TF-IDF, the document frequencies counted over the references of the evaluated set (one
/// document per sample); a hypothesis's n-gram weights clipped by the reference's, a Gaussian
/// penalty on the length difference (σ = 6), the cosine averaged over n and over the references,
/// times 10, averaged over the samples. 0 for no overlap; a set of hypotheses equal to their one
/// reference scores 10 when every sample's n-grams are rare, less when they are common to
/// most samples (a common n-gram weighs little).
///
/// ```
/// use mm_train::metrics::cider_d;
///
/// let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
/// let refs = vec![vec![words("a red square")], vec![words("two blue circles")]];
/// let same = vec![words("a red square"), words("two blue circles")];
/// let swapped = vec![words("two blue circles"), words("a red square")];
/// assert!(cider_d(&same, &refs) > 5.0);
/// assert_eq!(cider_d(&swapped, &refs), 0.0);
/// ```
pub fn cider_d(hyps: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> f64 {
    let samples = hyps.len().min(refs.len());
    if samples == 0 {
        return 0.0;
    }
    let mut df: std::collections::HashMap<&[String], f64> = std::collections::HashMap::new();
    for references in &refs[..samples] {
        let mut seen = std::collections::HashSet::new();
        for r in references {
            for n in 1..=4 {
                seen.extend(ngrams(r, n).into_keys());
            }
        }
        for g in seen {
            *df.entry(g).or_default() += 1.0;
        }
    }
    let log_docs = (samples as f64).ln();
    let sigma: f64 = 6.0;
    let mut sum = 0.0;
    for (hyp, references) in hyps.iter().zip(refs).take(samples) {
        let (hv, hn, hl) = cider_vectors(hyp, &df, log_docs);
        let mut score = 0.0;
        for r in references {
            let (rv, rn, rl) = cider_vectors(r, &df, log_docs);
            let delta = hl as f64 - rl as f64;
            let penalty = (-(delta * delta) / (2.0 * sigma * sigma)).exp();
            let mut per_n = 0.0;
            for n in 0..4 {
                if hn[n] == 0.0 || rn[n] == 0.0 {
                    continue;
                }
                let dot: f64 =
                    hv[n].iter().filter_map(|(g, w)| rv[n].get(g).map(|rw| w.min(*rw) * rw)).sum();
                per_n += dot / (hn[n] * rn[n]) * penalty;
            }
            score += per_n / 4.0 * 10.0;
        }
        sum += score / references.len().max(1) as f64;
    }
    sum / samples as f64
}
