//! Prometheus metrics in the text exposition format (version 0.0.4): counters, a gauge and
//! histograms, kept in memory and written out on `GET /metrics`.
//!
//! Labels are few and fixed (the endpoint, the status code, the model), so every series is one
//! entry of a small map behind a mutex; the hot path takes it once per request and once per
//! batch.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the batch-size histogram.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations at or below each bucket's bound (not cumulative; summed when written).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in bounds.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Series {
    /// Requests by (endpoint, status code).
    requests: BTreeMap<(String, u16), u64>,
    /// Request latency by endpoint.
    latency: BTreeMap<String, Histogram>,
    /// Samples per forward pass, by model.
    batch: BTreeMap<String, Histogram>,
    /// Time of a forward pass (collate, model, results), by model.
    inference: BTreeMap<String, Histogram>,
    /// Requests waiting in each model's queue.
    queue: BTreeMap<String, i64>,
    /// Requests turned away because a model's queue was full.
    rejected: BTreeMap<String, u64>,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Series) -> R) -> R {
        // A panic while the lock was held cannot leave a series half-written: each update
        // is a single assignment.
        let mut guard = self.series.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// One request answered.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.with(|s| {
            *s.requests.entry((endpoint.to_string(), status)).or_default() += 1;
            s.latency.entry(endpoint.to_string()).or_default().observe(&LATENCY_BUCKETS, seconds);
        });
    }

    /// One forward pass of `model` over `samples` samples, which took `seconds`.
    pub fn batch(&self, model: &str, samples: usize, seconds: f64) {
        self.with(|s| {
            s.batch.entry(model.to_string()).or_default().observe(&BATCH_BUCKETS, samples as f64);
            s.inference.entry(model.to_string()).or_default().observe(&LATENCY_BUCKETS, seconds);
        });
    }

    /// `model`'s queue grew (`+1`) or shrank (`-1`).
    pub fn queue(&self, model: &str, change: i64) {
        self.with(|s| *s.queue.entry(model.to_string()).or_default() += change);
    }

    /// A request for `model` was refused: its queue was full.
    pub fn rejected(&self, model: &str) {
        self.with(|s| *s.rejected.entry(model.to_string()).or_default() += 1);
    }

    /// Requests now waiting in `model`'s queue.
    pub fn queue_depth(&self, model: &str) -> i64 {
        self.with(|s| s.queue.get(model).copied().unwrap_or(0))
    }

    /// Everything, in Prometheus' text format.
    pub fn render(&self) -> String {
        let s = self.with(|s| {
            (
                s.requests.clone(),
                s.latency.clone(),
                s.batch.clone(),
                s.inference.clone(),
                s.queue.clone(),
                s.rejected.clone(),
            )
        });
        let (requests, latency, batch, inference, queue, rejected) = s;
        let mut out = String::new();
        out.push_str("# HELP mm_requests_total Requests answered, by endpoint and status code.\n");
        out.push_str("# TYPE mm_requests_total counter\n");
        for ((endpoint, status), n) in &requests {
            let _ = writeln!(
                out,
                "mm_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP mm_request_duration_seconds Time from a request's arrival to its answer.\n",
        );
        out.push_str("# TYPE mm_request_duration_seconds histogram\n");
        for (endpoint, h) in &latency {
            h.write(
                &mut out,
                "mm_request_duration_seconds",
                &format!("endpoint=\"{endpoint}\""),
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP mm_batch_size Samples per forward pass.\n");
        out.push_str("# TYPE mm_batch_size histogram\n");
        for (model, h) in &batch {
            h.write(&mut out, "mm_batch_size", &format!("model=\"{model}\""), &BATCH_BUCKETS);
        }
        out.push_str(
            "# HELP mm_inference_duration_seconds Time of a forward pass: collating, the model, the results.\n",
        );
        out.push_str("# TYPE mm_inference_duration_seconds histogram\n");
        for (model, h) in &inference {
            h.write(
                &mut out,
                "mm_inference_duration_seconds",
                &format!("model=\"{model}\""),
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP mm_queue_depth Requests waiting for a forward pass.\n");
        out.push_str("# TYPE mm_queue_depth gauge\n");
        for (model, n) in &queue {
            let _ = writeln!(out, "mm_queue_depth{{model=\"{model}\"}} {n}");
        }
        out.push_str(
            "# HELP mm_rejected_total Requests refused with 503 because the queue was full.\n",
        );
        out.push_str("# TYPE mm_rejected_total counter\n");
        for (model, n) in &rejected {
            let _ = writeln!(out, "mm_rejected_total{{model=\"{model}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn histograms_are_cumulative_and_counters_add_up() {
        let m = Metrics::default();
        m.request("/v1/predict", 200, 0.003);
        m.request("/v1/predict", 200, 0.2);
        m.request("/v1/predict", 503, 0.0001);
        m.batch("digits", 3, 0.01);
        m.queue("digits", 1);
        m.queue("digits", 1);
        m.queue("digits", -1);
        let text = m.render();
        assert!(
            text.contains("mm_requests_total{endpoint=\"/v1/predict\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("mm_requests_total{endpoint=\"/v1/predict\",status=\"503\"} 1"));
        // 0.0001 and 0.003 are at or below 5 ms; all three below 0.25 s.
        assert!(
            text.contains(
                "mm_request_duration_seconds_bucket{endpoint=\"/v1/predict\",le=\"0.005\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "mm_request_duration_seconds_bucket{endpoint=\"/v1/predict\",le=\"0.25\"} 3"
        ));
        assert!(text.contains("mm_request_duration_seconds_count{endpoint=\"/v1/predict\"} 3"));
        assert!(text.contains("mm_batch_size_bucket{model=\"digits\",le=\"2\"} 0"));
        assert!(text.contains("mm_batch_size_bucket{model=\"digits\",le=\"4\"} 1"));
        assert!(text.contains("mm_queue_depth{model=\"digits\"} 1"));
        assert_eq!(m.queue_depth("digits"), 1);
    }
}
