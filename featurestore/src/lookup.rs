//! Feature values as a caller sees them: value, status and event time, as of a read time.

use serde::Serialize;
use serde_json::Value;

use crate::definition::FeatureSetPlan;
use crate::engine::{self, EntityState};

/// The status of one returned value (Feast's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// A value.
    Present,
    /// The entity has no state (never seen, or expired from the store).
    NotFound,
    /// The entity is known but the window holds nothing to compute from (e.g. a mean of no
    /// events) or the field was never set.
    NullValue,
    /// The newest event behind the value is older than the feature set's TTL.
    OutsideMaxAge,
}

/// One feature's value for one entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureValue {
    /// Feature name.
    pub name: String,
    /// The value (`null` unless present).
    pub value: Value,
    /// Status.
    pub status: Status,
    /// Event time of the newest event behind the value, ms since the epoch.
    pub event_time_ms: Option<i64>,
}

/// Every feature of `plan` for one entity as of `at_ms`, aggregations first.
pub fn feature_values(plan: &FeatureSetPlan, state: Option<&EntityState>, at_ms: i64) -> Vec<FeatureValue> {
    let Some(state) = state.filter(|s| !s.is_empty()) else {
        return plan
            .feature_names()
            .map(|name| FeatureValue {
                name: name.to_string(),
                value: Value::Null,
                status: Status::NotFound,
                event_time_ms: None,
            })
            .collect();
    };
    let expired = |ts: i64| plan.ttl_ms.is_some_and(|ttl| at_ms.saturating_sub(ts) > ttl);
    let aggregated = engine::read(plan, state, at_ms);
    let mut out = Vec::with_capacity(plan.aggregations.len() + plan.latest.len());
    for (agg, value) in plan.aggregations.iter().zip(aggregated) {
        out.push(judge(&agg.name, value.to_json(), Some(state.newest_ms), expired(state.newest_ms)));
    }
    for (name, latest) in plan.latest.iter().zip(&state.latest) {
        out.push(match latest {
            Some((ts, text)) => {
                let value = serde_json::from_str(text).unwrap_or(Value::Null);
                judge(name, value, Some(*ts), expired(*ts))
            }
            None => judge(name, Value::Null, None, false),
        });
    }
    out
}

fn judge(name: &str, value: Value, event_time_ms: Option<i64>, expired: bool) -> FeatureValue {
    let status = match (&value, expired) {
        (_, true) => Status::OutsideMaxAge,
        (Value::Null, false) => Status::NullValue,
        (_, false) => Status::Present,
    };
    let value = if expired { Value::Null } else { value };
    FeatureValue { name: name.to_string(), value, status, event_time_ms }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::definition::FeatureSetConfig;

    fn plan() -> FeatureSetPlan {
        let config: FeatureSetConfig = serde_yaml_ng::from_str(
            "entity: e\nsource: s\nttl: 1h\nfeatures: [merchant, note]\naggregations:\n  - { column: amount, functions: [count, mean], windows: [10m], period: 1m }\n",
        )
        .unwrap();
        config.compile("fs", "id", "fs", &mut Vec::new()).unwrap()
    }

    #[test]
    fn statuses_follow_presence_nulls_and_ttl() {
        let plan = plan();
        let unknown = feature_values(&plan, None, 0);
        assert!(unknown.iter().all(|v| v.status == Status::NotFound));
        let mut state = EntityState::new(&plan);
        let (amount, merchant) = (json!(4.0), json!("m1"));
        engine::apply(&plan, &mut state, 1_000, &[Some(&amount)], &[Some(&merchant), None], None);
        let now = feature_values(&plan, Some(&state), 2_000);
        let by = |name: &str| now.iter().find(|v| v.name == name).unwrap().clone();
        assert_eq!((by("amount_count_10m").value, by("amount_count_10m").status), (json!(1), Status::Present));
        assert_eq!(by("merchant").value, json!("m1"));
        assert_eq!(by("merchant").event_time_ms, Some(1_000));
        assert_eq!(by("note").status, Status::NullValue);
        let later = feature_values(&plan, Some(&state), 1_000 + 30 * 60_000);
        let mean = later.iter().find(|v| v.name == "amount_mean_10m").unwrap();
        assert_eq!((mean.status, &mean.value), (Status::NullValue, &Value::Null), "window emptied");
        let stale = feature_values(&plan, Some(&state), 1_000 + 3_600_001);
        assert!(stale
            .iter()
            .filter(|v| v.name != "note")
            .all(|v| v.status == Status::OutsideMaxAge && v.value.is_null()));
    }
}
