//! Medians and spread of repeated measurements.

use serde_json::{json, Value};

/// Order statistics of a sample (nearest-rank quantiles on the sorted
/// values; the median of an even count is the mean of the middle two).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p25: f64,
    pub p75: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return Summary {
                n: 0,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                p25: f64::NAN,
                p75: f64::NAN,
            };
        }
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            n,
            median,
            min: v[0],
            max: v[n - 1],
            p25: quantile_sorted(&v, 0.25),
            p75: quantile_sorted(&v, 0.75),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n,
            "median": num(self.median),
            "min": num(self.min),
            "max": num(self.max),
            "p25": num(self.p25),
            "p75": num(self.p75),
        })
    }

    /// `median [min–max]` with `digits` decimals.
    pub fn cell(&self, digits: usize) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        if self.n == 1 {
            return format!("{:.*}", digits, self.median);
        }
        format!(
            "{:.*} [{:.*}–{:.*}]",
            digits, self.median, digits, self.min, digits, self.max
        )
    }
}

/// Nearest-rank quantile of sorted values (`q` in 0..=1).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Quantile of unsorted values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    quantile_sorted(&v, q)
}

/// A JSON number, or null when not finite (JSON has no NaN).
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        // Round to 4 decimals: the figures are not more precise than that.
        json!((x * 1e4).round() / 1e4)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!((s.p25, s.p75), (1.0, 3.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(num(f64::NAN), Value::Null);
    }
}
