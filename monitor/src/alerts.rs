//! Alert rules: a metric compared with a threshold per window, firing after N consecutive
//! breaching windows, at most once per cooldown, and resolving when the metric is back to normal.
//! Only transitions are reported, and the state is plain data so the monitor can store it with
//! its checkpoint: a restart does not fire twice. Webhook bodies are signed with HMAC-SHA256
//! (`X-Fathom-Signature: sha256=<hex>`).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How the metric is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// `>=`
    #[serde(rename = ">=")]
    AtLeast,
    /// `>`
    #[serde(rename = ">")]
    Above,
    /// `<=`
    #[serde(rename = "<=")]
    AtMost,
    /// `<`
    #[serde(rename = "<")]
    Below,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// The name alerts and points show (the `rule` tag); `None`: the condition,
    /// `<metric> <op> <threshold>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The metric watched, e.g. `drift_score` or `accuracy`.
    pub metric: String,
    /// Comparison.
    pub comparison: Comparison,
    /// Threshold.
    pub threshold: f64,
    /// Breaching windows in a row before it fires (at least 1).
    pub consecutive: u32,
    /// Minimum time between two firings, ms.
    pub cooldown_ms: i64,
}

impl Rule {
    fn breached(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::AtLeast => value >= self.threshold,
            Comparison::Above => value > self.threshold,
            Comparison::AtMost => value <= self.threshold,
            Comparison::Below => value < self.threshold,
        }
    }
}

/// What a window did to a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The rule started firing: send the alert.
    Fired,
    /// The metric is back to normal: send the resolution.
    Resolved,
}

/// A rule's state, stored with the monitor's checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Breaching windows in a row so far.
    pub breaches: u32,
    /// Whether the rule is firing.
    pub firing: bool,
    /// When it last fired (window end, ms).
    pub last_fired_ms: Option<i64>,
    /// The newest window end observed, ms: older windows (a replay) change nothing.
    pub last_window_ms: Option<i64>,
}

impl RuleState {
    /// Observes the metric of the window ending at `window_end_ms`; returns a transition if
    /// there is one. Windows must come in order; a window at or before the last one observed is
    /// ignored (replayed after a restart).
    pub fn observe(&mut self, rule: &Rule, value: f64, window_end_ms: i64) -> Option<Transition> {
        if self.last_window_ms.is_some_and(|last| window_end_ms <= last) {
            return None;
        }
        self.last_window_ms = Some(window_end_ms);
        if !value.is_finite() {
            return None; // no data in this window: neither a breach nor a recovery
        }
        if !rule.breached(value) {
            self.breaches = 0;
            if self.firing {
                self.firing = false;
                return Some(Transition::Resolved);
            }
            return None;
        }
        self.breaches = self.breaches.saturating_add(1);
        let cooled = self.last_fired_ms.is_none_or(|at| window_end_ms - at >= rule.cooldown_ms);
        if !self.firing && self.breaches >= rule.consecutive.max(1) && cooled {
            self.firing = true;
            self.last_fired_ms = Some(window_end_ms);
            return Some(Transition::Fired);
        }
        None
    }
}

/// The `X-Fathom-Signature` value of a webhook body: `sha256=` and the hex HMAC-SHA256.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(consecutive: u32, cooldown_ms: i64) -> Rule {
        let metric = "drift_score".into();
        Rule { name: None, metric, comparison: Comparison::AtLeast, threshold: 0.7, consecutive, cooldown_ms }
    }

    /// Feeds values for windows 1, 2, 3, … (ms) and returns the transitions with their window.
    fn run(rule: &Rule, state: &mut RuleState, values: &[f64]) -> Vec<(usize, Transition)> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| state.observe(rule, *v, i as i64 + 1).map(|t| (i + 1, t)))
            .collect()
    }

    #[test]
    fn fires_after_consecutive_breaches_resolves_on_recovery_and_respects_the_cooldown() {
        let r = rule(2, 6);
        let mut state = RuleState::default();
        let values = [0.8, 0.2, 0.8, 0.9, 0.95, 0.9, 0.1, 0.8, 0.8, 0.3, 0.8, 0.8, 0.8];
        assert_eq!(
            run(&r, &mut state, &values),
            vec![
                (4, Transition::Fired),    // windows 3 and 4 in a row (window 1 alone was not enough)
                (7, Transition::Resolved), // back to normal
                (12, Transition::Fired),   // 8 and 9 breached again, but within the cooldown of 4
            ]
        );
    }

    #[test]
    fn nan_windows_and_replays_change_nothing() {
        let r = rule(1, 0);
        let mut state = RuleState::default();
        assert_eq!(state.observe(&r, 0.9, 10), Some(Transition::Fired));
        let stored = state.clone();
        assert_eq!(state.observe(&r, 0.1, 10), None, "the same window again (a replay)");
        assert_eq!(state.observe(&r, f64::NAN, 11), None, "no data is not a recovery");
        assert!(state.firing);
        let mut restarted: RuleState = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(restarted.observe(&r, 0.9, 10), None, "a restart replaying window 10 does not fire again");
        assert_eq!(restarted.observe(&r, 0.2, 12), Some(Transition::Resolved));
    }

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
