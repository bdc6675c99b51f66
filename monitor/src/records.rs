//! Prediction and label records as they arrive on their topics (DESIGN §7), from Fathom's own
//! serving or any other producer. Errors name the field, so a dead letter says what to fix.

use std::collections::BTreeMap;

use fathom_ingest::decode::{Reason, Refusal};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a model answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// A number (regression, or a score).
    Value(f64),
    /// A class, with the probabilities per class when the model gave them.
    Class {
        /// The predicted class.
        class: String,
        /// Probability per class.
        probabilities: Option<BTreeMap<String, f64>>,
    },
}

/// A prediction record.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The request's id, the join key with labels.
    pub request_id: String,
    /// Model name.
    pub model: String,
    /// Model version (empty when the producer did not say).
    pub model_version: String,
    /// When the prediction was made, ms since the epoch.
    pub ts_ms: i64,
    /// The features the model saw, by name.
    pub features: Map<String, Value>,
    /// The answer.
    pub outcome: Outcome,
    /// Time from request to answer, ms.
    pub latency_ms: Option<f64>,
}

/// A ground-truth label.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The request it labels.
    pub request_id: String,
    /// The true value: a class (string, bool, integer) or a number.
    pub label: Value,
    /// When the truth became known, ms since the epoch.
    pub ts_ms: i64,
}

/// A class name from a JSON value: strings as they are, booleans `true`/`false`, integral numbers
/// without a fraction (`1.0` and `1` are the same class).
pub fn class_name(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            let x = n.as_f64()?;
            if x.fract() == 0.0 && x.abs() < 1e15 {
                Some(format!("{}", x as i64))
            } else {
                Some(n.to_string())
            }
        }
        _ => None,
    }
}

/// A timestamp field: RFC 3339 with a zone, or a number of ms since the epoch.
fn timestamp(object: &Map<String, Value>, field: &str) -> Result<i64, String> {
    match object.get(field) {
        Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("field `{field}`: {text:?} is not an RFC 3339 time with a zone ({e})")),
        Some(Value::Number(n)) => {
            n.as_i64().ok_or_else(|| format!("field `{field}`: {n} is not a whole number of ms since the epoch"))
        }
        Some(other) => Err(format!("field `{field}`: expected an RFC 3339 string or epoch ms, got {other}")),
        None => Err(format!("missing field `{field}`")),
    }
}

/// The record's JSON object: `malformed_json` when the bytes are not JSON, `invalid_record` when
/// they are JSON but not an object.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(invalid(format!("expected a JSON object, got {}", kind(&other)))),
        Err(e) => Err(Refusal { reason: Reason::MalformedJson, message: format!("not JSON: {e}") }),
    }
}

fn invalid(message: String) -> Refusal {
    Refusal { reason: Reason::InvalidRecord, message }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn request_id(object: &Map<String, Value>) -> Result<String, String> {
    match object.get("request_id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(_)) => Err("field `request_id` is empty".into()),
        Some(other) => Err(format!("field `request_id`: expected a string, got {}", kind(other))),
        None => Err("missing field `request_id`".into()),
    }
}

fn probabilities(value: &Value) -> Result<BTreeMap<String, f64>, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "field `prediction.probabilities`: expected an object class → probability, got {}",
            kind(value)
        ));
    };
    map.iter()
        .map(|(class, p)| match p.as_f64() {
            Some(x) if x.is_finite() => Ok((class.clone(), x)),
            _ => Err(format!("field `prediction.probabilities.{class}`: expected a number, got {p}")),
        })
        .collect()
}

/// The outcome in `prediction`: a number; a string or boolean class; or an object with `class`
/// (or `label`) and optional `probabilities`, or with `value`. With only `probabilities`, the
/// most probable class is the prediction.
fn outcome(value: &Value) -> Result<Outcome, String> {
    match value {
        Value::Number(n) => Ok(Outcome::Value(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(_) | Value::Bool(_) => {
            Ok(Outcome::Class { class: class_name(value).unwrap_or_default(), probabilities: None })
        }
        Value::Object(map) => {
            if let Some(v) = map.get("value") {
                return v
                    .as_f64()
                    .map(Outcome::Value)
                    .ok_or_else(|| format!("field `prediction.value`: expected a number, got {v}"));
            }
            let probabilities = map.get("probabilities").map(probabilities).transpose()?;
            let class = match map.get("class").or_else(|| map.get("label")) {
                Some(c) => {
                    class_name(c).ok_or_else(|| format!("field `prediction.class`: expected a class, got {c}"))?
                }
                None => match &probabilities {
                    Some(p) if !p.is_empty() => {
                        p.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, _)| c.clone()).unwrap_or_default()
                    }
                    _ => return Err("field `prediction`: an object needs `class`, `value` or `probabilities`".into()),
                },
            };
            Ok(Outcome::Class { class, probabilities })
        }
        other => Err(format!("field `prediction`: expected a number, class or object, got {}", kind(other))),
    }
}

impl Prediction {
    /// Parses a prediction record; a refusal is `malformed_json` or `invalid_record` (naming the
    /// field).
    pub fn parse(bytes: &[u8]) -> Result<Prediction, Refusal> {
        Self::from_object(object(bytes)?).map_err(invalid)
    }

    fn from_object(mut map: Map<String, Value>) -> Result<Prediction, String> {
        let request_id = request_id(&map)?;
        let ts_ms = timestamp(&map, "timestamp")?;
        let model = match map.get("model") {
            Some(Value::String(s)) => s.clone(),
            None => String::new(),
            Some(other) => return Err(format!("field `model`: expected a string, got {}", kind(other))),
        };
        let model_version = map.get("model_version").and_then(class_name).unwrap_or_default();
        let outcome = outcome(map.get("prediction").ok_or("missing field `prediction`")?)?;
        let latency_ms = match map.get("latency_ms") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("field `latency_ms`: expected a non-negative number, got {v}"))?,
            ),
        };
        let features = match map.remove("features") {
            Some(Value::Object(f)) => f,
            None | Some(Value::Null) => Map::new(),
            Some(other) => return Err(format!("field `features`: expected an object, got {}", kind(&other))),
        };
        Ok(Prediction { request_id, model, model_version, ts_ms, features, outcome, latency_ms })
    }
}

impl Label {
    /// Parses a label record; a refusal is `malformed_json` or `invalid_record` (naming the field).
    pub fn parse(bytes: &[u8]) -> Result<Label, Refusal> {
        Self::from_object(object(bytes)?).map_err(invalid)
    }

    fn from_object(map: Map<String, Value>) -> Result<Label, String> {
        let request_id = request_id(&map)?;
        let ts_ms = timestamp(&map, "timestamp")?;
        let label = match map.get("label") {
            None | Some(Value::Null) => return Err("missing field `label`".into()),
            Some(v @ (Value::String(_) | Value::Bool(_) | Value::Number(_))) => v.clone(),
            Some(other) => return Err(format!("field `label`: expected a class or a number, got {}", kind(other))),
        };
        Ok(Label { request_id, label, ts_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fathoms_records_and_other_producers_shapes() {
        let p = Prediction::parse(
            br#"{"request_id":"r1","model":"fraud","model_version":"3","timestamp":"2026-01-01T00:00:01Z",
                "features":{"amount":12.5},"prediction":{"class":1,"probabilities":{"0":0.2,"1":0.8}},"latency_ms":4.5}"#,
        )
        .unwrap();
        assert_eq!(p.ts_ms, 1_767_225_601_000);
        assert_eq!(p.model_version, "3");
        let Outcome::Class { class, probabilities } = &p.outcome else { panic!() };
        assert_eq!(class, "1");
        assert_eq!(probabilities.as_ref().unwrap()["1"], 0.8);
        let q = Prediction::parse(br#"{"request_id":7,"timestamp":1767225601000,"prediction":3.25}"#).unwrap();
        assert_eq!((q.request_id.as_str(), q.outcome), ("7", Outcome::Value(3.25)));
        let r =
            Prediction::parse(br#"{"request_id":"a","timestamp":0,"prediction":{"probabilities":{"x":0.1,"y":0.9}}}"#)
                .unwrap();
        assert!(matches!(r.outcome, Outcome::Class { ref class, .. } if class == "y"));
        let l = Label::parse(br#"{"request_id":"r1","label":true,"timestamp":"2026-01-02T00:00:00+01:00"}"#).unwrap();
        assert_eq!(class_name(&l.label).unwrap(), "true");
        assert_eq!(class_name(&serde_json::json!(1.0)).unwrap(), "1");
    }

    #[test]
    fn errors_name_the_field() {
        for (bytes, needle) in [
            (&br#"{"timestamp":0,"prediction":1}"#[..], "`request_id`"),
            (br#"{"request_id":"a","prediction":1}"#, "`timestamp`"),
            (br#"{"request_id":"a","timestamp":"yesterday","prediction":1}"#, "`timestamp`"),
            (br#"{"request_id":"a","timestamp":0}"#, "`prediction`"),
            (br#"{"request_id":"a","timestamp":0,"prediction":[1]}"#, "`prediction`"),
            (br#"{"request_id":"a","timestamp":0,"prediction":1,"latency_ms":-1}"#, "`latency_ms`"),
            (br#"{"request_id":"a","timestamp":0,"prediction":{"probabilities":{"x":"high"}}}"#, "probabilities.x"),
            (br#"[1]"#, "JSON object"),
        ] {
            let e = Prediction::parse(bytes).unwrap_err();
            assert!(e.message.contains(needle), "{e:?} should name {needle}");
            assert_eq!(e.reason, Reason::InvalidRecord, "{e:?}");
        }
        assert!(Label::parse(br#"{"request_id":"a","timestamp":0}"#).unwrap_err().message.contains("`label`"));
        assert_eq!(Prediction::parse(b"{nope").unwrap_err().reason, Reason::MalformedJson);
    }
}
