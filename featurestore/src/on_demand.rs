//! On-demand features (Feast's on-demand feature views): SQL over fields of the request and
//! stored features, computed when a vector is read, e.g. `request.amount /
//! card_activity.amount_mean_24h`.
//!
//! A view names the request fields it takes, with their SQL types, and its features. Every
//! `<feature set or table>.<feature>` and `request.<field>` an expression reads is an input: a
//! lookup reads the stored ones with the rest of the vector (one round trip) and takes the request
//! ones from the request — beside the entity keys in `entities`, as Feast clients send them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use fathom_transform::RowExpr;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::definition::Problem;
use crate::lookup::{FeatureValue, Status};

/// Qualifier of request fields in expressions.
pub const REQUEST: &str = "request";

/// One `on_demand_features` entry, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandConfig {
    /// Request fields and their SQL types (`double`, `bigint`, `string`, …).
    #[serde(default)]
    pub request: BTreeMap<String, String>,
    /// Feature name → SQL over `request.<field>` and `<feature set or table>.<feature>`.
    pub features: BTreeMap<String, String>,
}

/// A compiled view.
#[derive(Debug, Clone)]
pub struct OnDemandView {
    /// Its name, the `<view>` of `<view>.<feature>` references.
    pub name: String,
    /// Its features, in name order.
    pub features: Vec<OnDemandFeature>,
}

/// One on-demand feature.
#[derive(Debug, Clone)]
pub struct OnDemandFeature {
    /// Feature name.
    pub name: String,
    expr: RowExpr,
    /// What it reads, in `schema`'s order: (`request` or a feature set / table, feature or field).
    pub inputs: Vec<(String, String)>,
    schema: SchemaRef,
}

impl PartialEq for OnDemandView {
    fn eq(&self, other: &OnDemandView) -> bool {
        let shape = |v: &OnDemandView| {
            v.features.iter().map(|f| (f.name.clone(), f.expr.sql().to_string())).collect::<Vec<_>>()
        };
        self.name == other.name && shape(self) == shape(other)
    }
}

impl OnDemandFeature {
    /// The type of its values.
    pub fn data_type(&self) -> &DataType {
        self.expr.data_type()
    }

    /// Its value from its inputs' (in [`OnDemandFeature::inputs`] order): request fields are
    /// `None` when the request lacks them. The status is `NOT_FOUND` when the value is NULL and
    /// a stored input was not found, else `NULL_VALUE` or `PRESENT`; the event time is the newest
    /// of the stored inputs'.
    pub fn value(&self, inputs: &[Result<Option<&Value>, &FeatureValue>]) -> FeatureValue {
        let mut object = Map::new();
        let mut not_found = false;
        let mut event_time_ms: Option<i64> = None;
        for (field, input) in self.schema.fields().iter().zip(inputs) {
            let value = match input {
                Ok(request) => request.cloned().unwrap_or(Value::Null),
                Err(stored) => {
                    not_found |= stored.status == Status::NotFound;
                    event_time_ms = event_time_ms.max(stored.event_time_ms);
                    stored.value.clone()
                }
            };
            object.insert(field.name().clone(), value);
        }
        let value = fathom_transform::evaluate_object(&self.expr, &self.schema, &object);
        let status = match (&value, not_found) {
            (Value::Null, true) => Status::NotFound,
            (Value::Null, false) => Status::NullValue,
            _ => Status::Present,
        };
        FeatureValue { name: self.name.clone(), value, status, event_time_ms }
    }
}

impl OnDemandConfig {
    /// Compiles the view `name` at `path`; `stored` is every stored feature an expression may
    /// read, qualified by its feature set or table, with its type. Every problem is pushed.
    pub fn compile(
        &self,
        name: &str,
        stored: &[(String, Field)],
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<OnDemandView> {
        let before = problems.len();
        let mut available: Vec<(String, Field)> = Vec::new();
        for (field, sql_type) in &self.request {
            match fathom_transform::sql_type(sql_type) {
                Some(t) => available.push((REQUEST.to_string(), Field::new(field, t, true))),
                None => problems.push(Problem {
                    path: format!("{path}.request.{field}"),
                    message: format!("unknown type {sql_type:?} (use {})", fathom_transform::SQL_TYPES),
                }),
            }
        }
        available.extend(stored.iter().cloned());
        if self.features.is_empty() {
            problems.push(Problem { path: format!("{path}.features"), message: "define at least one feature".into() });
        }
        let mut features = Vec::new();
        for (feature, sql) in &self.features {
            let here = format!("{path}.features.{feature}");
            let compiled = RowExpr::compile_qualified(sql, &available).and_then(|e| {
                // again over what it reads only: a lookup decodes those inputs alone
                let inputs: Vec<(String, Field)> =
                    e.column_indices().into_iter().map(|i| available[i].clone()).collect();
                RowExpr::compile_qualified(sql, &inputs).map(|e| (e, inputs))
            });
            match compiled {
                Ok((expr, inputs)) => {
                    let schema = Schema::new(
                        inputs
                            .iter()
                            .map(|(q, f)| Field::new(format!("{q}.{}", f.name()), f.data_type().clone(), true))
                            .collect::<Vec<_>>(),
                    );
                    features.push(OnDemandFeature {
                        name: feature.clone(),
                        expr,
                        inputs: inputs.into_iter().map(|(q, f)| (q, f.name().clone())).collect(),
                        schema: Arc::new(schema),
                    });
                }
                Err(e) => {
                    let e = e.hinted(|_| {
                        "write request.<field> for a request field declared under `request`, <feature_set>.<feature> for a stored feature".into()
                    });
                    problems.push(Problem { path: here, message: e.describe() });
                }
            }
        }
        (problems.len() == before).then(|| OnDemandView { name: name.to_string(), features })
    }
}
