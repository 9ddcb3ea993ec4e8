//! Latency summaries for the bench: repetitions and percentiles, nothing fancier.

use std::time::Duration;

/// `{n, p50, p90, p99, max, mean}` in microseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Repetitions.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Nearest-rank percentile of sorted samples.
fn rank(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// Summarises samples (in microseconds); `None` when there are none.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    summarize_values(
        samples
            .iter()
            .map(|d| d.as_nanos() as f64 / 1000.0)
            .collect(),
    )
}

/// Summarises plain values (counts, KiB) in their own unit.
pub fn summarize_values(mut values: Vec<f64>) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 10.0).round() / 10.0;
    Some(Summary {
        n: values.len(),
        p50: round(rank(&values, 50.0)),
        p90: round(rank(&values, 90.0)),
        p99: round(rank(&values, 99.0)),
        max: round(*values.last().expect("non-empty")),
        mean: round(values.iter().sum::<f64>() / values.len() as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_micros(x)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize(&us(&(1..=100).collect::<Vec<_>>())).unwrap();
        assert_eq!(
            (s.n, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.mean, 50.5);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let s = summarize(&us(&[7])).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn no_samples_no_summary() {
        assert!(summarize(&[]).is_none());
    }
}
