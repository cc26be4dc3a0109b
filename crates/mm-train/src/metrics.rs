//! Metrics, computed on the host from predictions gathered over an evaluation pass:
//! classification (accuracy, top-k, confusion matrix, per-class precision, recall and F1,
//! macro-F1, AUROC binary and one-vs-rest), regression (MAE, MSE, Pearson correlation) and
//! cross-modal retrieval (Recall@K, median rank and mean reciprocal rank, in both directions).
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
