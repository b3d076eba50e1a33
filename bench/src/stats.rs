//! Percentiles of measured durations.

use std::time::Duration;

/// Summary of a sample of durations.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

/// Nearest-rank percentiles (p99 of 20 samples is the largest).
pub fn summarize(samples: &[Duration]) -> Summary {
    let mut s = samples.to_vec();
    s.sort();
    let rank = |p: f64| -> Duration {
        if s.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
        s[i]
    };
    let total: Duration = s.iter().sum();
    Summary {
        n: s.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        mean: if s.is_empty() {
            Duration::ZERO
        } else {
            total / s.len() as u32
        },
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let x = summarize(&s);
        assert_eq!(x.p50, Duration::from_millis(10));
        assert_eq!(x.p99, Duration::from_millis(20));
        assert_eq!(x.n, 20);
    }
}
