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
    for (agg, value) in plan.aggregations.iter().zip(&aggregated) {
        out.push(judge(&agg.name, value.to_json(), Some(state.newest_ms), expired(state.newest_ms)));
    }
    let derived: Vec<(&str, Value)> = plan.derived.names().zip(plan.derived.evaluate(&aggregated)).collect();
    for (name, latest) in plan.latest.iter().zip(&state.latest) {
        out.push(match latest {
            Some((ts, text)) => {
                let value = serde_json::from_str(text).unwrap_or(Value::Null);
                judge(name, value, Some(*ts), expired(*ts))
            }
            None => judge(name, Value::Null, None, false),
        });
    }
    // as of the newest event, like the aggregations they read
    for (name, value) in derived {
        out.push(judge(name, value, Some(state.newest_ms), expired(state.newest_ms)));
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

    #[test]
    fn derived_features_read_the_aggregations_at_read_time() {
        let config: FeatureSetConfig = serde_yaml_ng::from_str(
            "entity: e\nsource: s\nttl: 1h\naggregations:\n  - { column: amount, functions: [count, sum, max], windows: [10m], period: 1m }\nderived:\n  mean: amount_sum_10m / amount_count_10m\n  spread: amount_max_10m - amount_sum_10m / amount_count_10m\n  big: amount_max_10m > 3\n  one: 1\n",
        )
        .unwrap();
        let plan = config.compile("fs", "id", "fs", &mut Vec::new()).unwrap();
        let names: Vec<&str> = plan.feature_names().collect();
        assert_eq!(names[3..], ["big", "mean", "one", "spread"]);
        assert!(feature_values(&plan, None, 0).iter().all(|v| v.status == Status::NotFound));
        let mut state = EntityState::new(&plan);
        for (t, amount) in [(1_000, 4.0), (2_000, 1.0)] {
            engine::apply(&plan, &mut state, t, &[Some(&json!(amount))], &[], None);
        }
        let by = |values: &[FeatureValue], name: &str| values.iter().find(|v| v.name == name).unwrap().clone();
        let now = feature_values(&plan, Some(&state), 3_000);
        assert_eq!((by(&now, "mean").value, by(&now, "mean").status), (json!(2.5), Status::Present));
        assert_eq!(by(&now, "spread").value, json!(1.5));
        assert_eq!(by(&now, "big").value, json!(true));
        assert_eq!(by(&now, "one").value, json!(1), "an expression reading no aggregation");
        assert_eq!(by(&now, "mean").event_time_ms, Some(2_000));
        // the window empties: a count of 0, a division by it NULL
        let later = feature_values(&plan, Some(&state), 30 * 60_000);
        assert_eq!(by(&later, "amount_count_10m").value, json!(0));
        assert_eq!((by(&later, "mean").value, by(&later, "mean").status), (Value::Null, Status::NullValue));
        let stale = feature_values(&plan, Some(&state), 2_000 + 3_600_001);
        assert_eq!(by(&stale, "mean").status, Status::OutsideMaxAge);
    }

    #[test]
    fn a_derived_feature_over_an_unknown_feature_names_the_ones_there_are() {
        let config: FeatureSetConfig = serde_yaml_ng::from_str(
            "entity: e\nsource: s\naggregations:\n  - { column: amount, functions: [sum], windows: [10m] }\nderived:\n  x: amount_sum_1h * 2\n  amount_sum_10m: 1\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        assert!(config.compile("fs", "id", "feature_sets.fs", &mut problems).is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, "feature_sets.fs.derived.amount_sum_10m");
        assert!(problems[0].message.contains("duplicate feature"), "{problems:?}");
        assert_eq!(problems[1].path, "feature_sets.fs.derived.x");
        assert!(problems[1].message.contains("reads this set's aggregations: amount_sum_10m"), "{problems:?}");
    }
}
