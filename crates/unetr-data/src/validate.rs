//! Range checks for configuration fields, each failure naming the field, its value and what is allowed.
//! Configs run every check when they are loaded, so a bad value stops a command before any work.

use crate::error::DataError;

/// Collects every failed check of a config, so that one error lists them all.
#[derive(Debug, Default)]
pub struct Checks {
    problems: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }
    /// `lo <= v <= hi` (and finite).
    pub fn within(&mut self, field: &str, v: f64, lo: f64, hi: f64) -> &mut Self {
        if !(v.is_finite() && v >= lo && v <= hi) {
            self.problems.push(format!("{field} = {v}: must be in [{lo}, {hi}]"));
        }
        self
    }
    /// `lo <= v < hi` (and finite).
    pub fn within_open(&mut self, field: &str, v: f64, lo: f64, hi: f64) -> &mut Self {
        if !(v.is_finite() && v >= lo && v < hi) {
            self.problems.push(format!("{field} = {v}: must be in [{lo}, {hi})"));
        }
        self
    }
    /// `v > 0` (and finite).
    pub fn positive(&mut self, field: &str, v: f64) -> &mut Self {
        if !(v.is_finite() && v > 0.0) {
            self.problems.push(format!("{field} = {v}: must be positive"));
        }
        self
    }
    /// `lo <= n <= hi` for counts.
    pub fn count(&mut self, field: &str, n: u64, lo: u64, hi: u64) -> &mut Self {
        if !(lo..=hi).contains(&n) {
            self.problems.push(format!("{field} = {n}: must be in {lo}..={hi}"));
        }
        self
    }
    /// A free-form problem.
    pub fn fail(&mut self, problem: String) -> &mut Self {
        self.problems.push(problem);
        self
    }
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
    /// Ok, or one error listing every problem.
    pub fn finish(&mut self, what: &str) -> Result<(), DataError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        let list = std::mem::take(&mut self.problems);
        Err(DataError::Invalid(format!("{what}: {}", list.join("; "))))
    }
    /// The problems so far (for callers that wrap them in their own error type).
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }
}
