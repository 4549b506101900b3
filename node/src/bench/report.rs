//! The result of a benchmark run: latency statistics and errors, as text or JSON.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs up to one hour; slower requests are
/// clamped to the top rather than lost, so every successful request is counted.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub workload: &'static str,
    /// Requests attempted: `succeeded + errors`.
    pub total: u64,
    pub succeeded: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_secs: f64,
    /// Successful requests per second, as etcd's benchmark reports it.
    pub requests_per_sec: f64,
    pub average_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub slowest_ms: f64,
}

impl Summary {
    /// `latencies` holds one entry (µs) per successful request.
    pub fn new(
        workload: &'static str,
        latencies: &Histogram<u64>,
        errors: u64,
        first_error: Option<String>,
        elapsed: Duration,
    ) -> Self {
        let succeeded = latencies.len();
        let elapsed_secs = elapsed.as_secs_f64();
        let ms = |micros: u64| micros as f64 / 1000.0;
        let quantile = |q: f64| {
            if latencies.is_empty() {
                0.0
            } else {
                ms(latencies.value_at_quantile(q))
            }
        };
        Self {
            workload,
            total: succeeded + errors,
            succeeded,
            errors,
            first_error,
            elapsed_secs,
            requests_per_sec: if elapsed_secs > 0.0 {
                succeeded as f64 / elapsed_secs
            } else {
                0.0
            },
            average_ms: if latencies.is_empty() {
                0.0
            } else {
                latencies.mean() / 1000.0
            },
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            p99_ms: quantile(0.99),
            p99_9_ms: quantile(0.999),
            slowest_ms: if latencies.is_empty() {
                0.0
            } else {
                ms(latencies.max())
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Summary ({}):", self.workload)?;
        writeln!(f, "  Total:        {} requests", self.total)?;
        writeln!(f, "  Errors:       {}", self.errors)?;
        writeln!(f, "  Elapsed:      {:.4} s", self.elapsed_secs)?;
        writeln!(f, "  Requests/sec: {:.2}", self.requests_per_sec)?;
        writeln!(f, "  Average:      {:.3} ms", self.average_ms)?;
        writeln!(f, "  p50:          {:.3} ms", self.p50_ms)?;
        writeln!(f, "  p90:          {:.3} ms", self.p90_ms)?;
        writeln!(f, "  p99:          {:.3} ms", self.p99_ms)?;
        writeln!(f, "  p99.9:        {:.3} ms", self.p99_9_ms)?;
        write!(f, "  Slowest:      {:.3} ms", self.slowest_ms)?;
        if let Some(error) = &self.first_error {
            write!(f, "\n  First error:  {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        let mut latencies = latency_histogram();
        for micros in 1..=1000 {
            latencies.record(micros).unwrap();
        }
        Summary::new(
            "put",
            &latencies,
            2,
            Some("etcdserver: no leader (Unavailable)".into()),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn figures_come_from_the_histogram() {
        let s = sample();
        assert_eq!((s.total, s.succeeded, s.errors), (1002, 1000, 2));
        assert_eq!(s.requests_per_sec, 500.0);
        assert!((s.average_ms - 0.5005).abs() < 0.001, "{}", s.average_ms);
        assert!((s.p50_ms - 0.5).abs() < 0.001, "{}", s.p50_ms);
        assert!((s.p90_ms - 0.9).abs() < 0.001, "{}", s.p90_ms);
        assert!((s.p99_ms - 0.99).abs() < 0.001, "{}", s.p99_ms);
        assert!((s.p99_9_ms - 0.999).abs() < 0.001, "{}", s.p99_9_ms);
        assert!((s.slowest_ms - 1.0).abs() < 0.001, "{}", s.slowest_ms);
    }

    #[test]
    fn text_report_lists_every_figure_and_the_first_error() {
        let text = sample().to_string();
        for expected in [
            "Summary (put):",
            "Total:        1002 requests",
            "Errors:       2",
            "Elapsed:      2.0000 s",
            "Requests/sec: 500.00",
            "p50:          0.500 ms",
            "p99.9:        0.999 ms",
            "Slowest:      1.000 ms",
            "First error:  etcdserver: no leader (Unavailable)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn json_report_is_one_parseable_object() {
        let json = sample().to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["workload"], "put");
        assert_eq!(value["total"], 1002);
        assert_eq!(value["errors"], 2);
        assert_eq!(value["requests_per_sec"], 500.0);
        assert_eq!(value["first_error"], "etcdserver: no leader (Unavailable)");
    }

    #[test]
    fn an_all_failed_run_reports_zeros_not_nan() {
        let s = Summary::new(
            "range",
            &latency_histogram(),
            3,
            Some("boom".into()),
            Duration::ZERO,
        );
        assert_eq!((s.total, s.succeeded), (3, 0));
        assert_eq!(s.requests_per_sec, 0.0);
        assert_eq!(s.average_ms, 0.0);
        assert_eq!(s.slowest_ms, 0.0);
        assert!(!s.to_string().contains("NaN"));
        assert!(!s.to_json().contains("null"), "{}", s.to_json());
    }
}
