//! Feature vectors: lists of feature references across feature sets and CDC tables, resolved
//! once and read for many entity rows in one store round trip.
//!
//! A reference is `<feature_set>.<feature>`, `<feature_set>.*` (every feature of the set, in
//! its order) or `<table>.<column>` for a CDC table's current row (`customers.segment`). Each
//! feature set is keyed by its entity's key field and each table by its key column, so an
//! entity row names the keys it needs: `{"card_id": "c1", "customer_id": "42"}`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::definition::{FeatureSetPlan, TablePlan};
use crate::lookup::{self, FeatureValue, Status};
use crate::on_demand::{OnDemandFeature, OnDemandView, REQUEST};
use crate::online::{self, OnlineError, OnlineStore};
use crate::table::{self, aggregate};

/// What references resolve against.
#[derive(Debug, Clone, Copy)]
pub struct Catalog<'a> {
    /// Project name (store key prefix).
    pub project: &'a str,
    /// Feature sets over event streams.
    pub plans: &'a [FeatureSetPlan],
    /// Aggregations over CDC tables.
    pub table_plans: &'a [TablePlan],
    /// CDC tables: (source name, key column).
    pub tables: &'a [(String, String)],
    /// On-demand feature views.
    pub on_demand: &'a [OnDemandView],
}

/// Where a feature's value lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Holder {
    /// A feature set over events (index into `plans`).
    Events(usize),
    /// An aggregation over a table (index into `table_plans`).
    Table(usize),
    /// A table's rows (index into `tables`).
    Rows(usize),
    /// An on-demand view (index into `on_demand`): computed from other holders' features and
    /// the request.
    OnDemand(usize),
}

/// A resolved list of features.
#[derive(Debug, Clone, PartialEq)]
pub struct Vector {
    /// Full names, `<set or table>.<feature>`, in request order.
    pub names: Vec<String>,
    /// Per name: holder and the feature's name inside it.
    pub(crate) refs: Vec<(Holder, String)>,
    /// Entity key fields an entity row must give, sorted.
    pub keys: Vec<String>,
    /// Request fields its on-demand features read, sorted.
    pub request: Vec<String>,
    /// Stored features its on-demand features read (read with the rest, not returned).
    pub(crate) inputs: Vec<(Holder, String)>,
}

impl Vector {
    /// What a training set computes: its features (on-demand ones as placeholders, so indices
    /// match [`Vector::names`]), then the stored inputs of its on-demand features.
    pub(crate) fn computed(&self) -> Vec<(Holder, String)> {
        self.refs.iter().chain(&self.inputs).cloned().collect()
    }
}

impl Catalog<'_> {
    /// The entity key field of a stored holder (an on-demand view has none).
    pub(crate) fn key_of(&self, holder: &Holder) -> &str {
        match holder {
            Holder::Events(p) => &self.plans[*p].key_column,
            Holder::Table(p) => &self.table_plans[*p].key_column,
            Holder::Rows(t) => &self.tables[*t].1,
            Holder::OnDemand(_) => "",
        }
    }

    pub(crate) fn holder(&self, name: &str) -> Option<Holder> {
        if let Some(p) = self.plans.iter().position(|p| p.name == name) {
            return Some(Holder::Events(p));
        }
        if let Some(p) = self.table_plans.iter().position(|p| p.name == name) {
            return Some(Holder::Table(p));
        }
        if let Some(t) = self.tables.iter().position(|(t, _)| t == name) {
            return Some(Holder::Rows(t));
        }
        self.on_demand.iter().position(|v| v.name == name).map(Holder::OnDemand)
    }

    fn features_of(&self, holder: &Holder) -> Option<Vec<String>> {
        match holder {
            Holder::Events(p) => Some(self.plans[*p].feature_names().map(String::from).collect()),
            Holder::Table(p) => Some(self.table_plans[*p].aggregations.iter().map(|a| a.0.clone()).collect()),
            Holder::Rows(_) => None, // a table's columns are whatever its rows hold
            Holder::OnDemand(v) => Some(self.on_demand[*v].features.iter().map(|f| f.name.clone()).collect()),
        }
    }

    pub(crate) fn on_demand_feature(&self, view: usize, feature: &str) -> &OnDemandFeature {
        self.on_demand[view].features.iter().find(|f| f.name == feature).expect("resolved")
    }

    /// Resolves references; the error names the first reference that does not resolve.
    pub fn resolve(&self, references: &[String]) -> Result<Vector, String> {
        let mut vector =
            Vector { names: Vec::new(), refs: Vec::new(), keys: Vec::new(), request: Vec::new(), inputs: Vec::new() };
        for reference in references {
            let Some((set, feature)) = reference.split_once('.') else {
                return Err(format!("{reference:?} is not a feature reference (write <feature_set>.<feature>, <feature_set>.* or <table>.<column>)"));
            };
            let holder =
                self.holder(set).ok_or_else(|| format!("{reference:?}: no feature set or CDC table named {set:?}"))?;
            let features = match (self.features_of(&holder), feature) {
                (Some(all), "*") => all,
                (None, "*") => return Err(format!("{reference:?}: a CDC table's columns must be named one by one")),
                (Some(all), f) if !all.iter().any(|a| a == f) => {
                    return Err(format!(
                        "{reference:?}: feature set {set:?} has no feature {f:?} (it has {})",
                        all.join(", ")
                    ))
                }
                (_, f) => vec![f.to_string()],
            };
            for feature in features {
                if let Holder::OnDemand(v) = holder {
                    for (qualifier, input) in &self.on_demand_feature(v, &feature).inputs {
                        if qualifier == REQUEST {
                            vector.request.push(input.clone());
                            continue;
                        }
                        let stored = self.holder(qualifier).expect("compiled against the catalog");
                        vector.keys.push(self.key_of(&stored).to_string());
                        vector.inputs.push((stored, input.clone()));
                    }
                } else {
                    vector.keys.push(self.key_of(&holder).to_string());
                }
                vector.names.push(format!("{set}.{feature}"));
                vector.refs.push((holder.clone(), feature));
            }
        }
        for list in [&mut vector.keys, &mut vector.request] {
            list.sort();
            list.dedup();
        }
        Ok(vector)
    }

    /// Per feature of `vector`: whether its values are always numbers (aggregations; latest
    /// values and table columns may hold anything).
    pub fn numeric(&self, vector: &Vector) -> Vec<bool> {
        vector
            .refs
            .iter()
            .map(|(holder, feature)| match holder {
                Holder::Events(p) => self.plans[*p].aggregations.iter().any(|a| a.name == *feature),
                Holder::Table(_) => true,
                Holder::Rows(_) => false,
                Holder::OnDemand(v) => self.on_demand_feature(*v, feature).data_type().is_numeric(),
            })
            .collect()
    }

    /// Every feature of `vector` for each entity row (key field → key), as of `at_ms`: one
    /// store round trip for all rows. Rows must give every key in [`Vector::keys`]; `requests`
    /// (one per row, or none) the request fields of its on-demand features.
    pub async fn read(
        &self,
        store: &OnlineStore,
        vector: &Vector,
        rows: &[BTreeMap<String, String>],
        requests: &[Map<String, Value>],
        at_ms: i64,
    ) -> Result<Vec<Vec<FeatureValue>>, OnlineError> {
        // each (holder, entity key) once
        let mut wanted: BTreeMap<(Holder, &str), usize> = BTreeMap::new();
        for row in rows {
            let stored = vector.refs.iter().chain(&vector.inputs).filter(|(h, _)| !matches!(h, Holder::OnDemand(_)));
            for (holder, _) in stored {
                let key = row[self.key_of(holder)].as_str();
                let next = wanted.len();
                wanted.entry((holder.clone(), key)).or_insert(next);
            }
        }
        let mut order: Vec<(&(Holder, &str), &usize)> = wanted.iter().collect();
        order.sort_by_key(|(_, i)| **i);
        let keys: Vec<String> = order
            .iter()
            .map(|((holder, key), _)| match holder {
                Holder::Events(p) => online::entity_key(self.project, &self.plans[*p].name, key),
                Holder::Table(p) => online::entity_key(self.project, &self.table_plans[*p].name, key),
                Holder::Rows(t) => table::row_key(self.project, &self.tables[*t].0, key),
                Holder::OnDemand(_) => unreachable!("not stored"),
            })
            .collect();
        let stored = store.load(&keys).await?;
        // every value of each (holder, key), by feature name
        let values: Vec<BTreeMap<String, FeatureValue>> = order
            .iter()
            .zip(&stored)
            .map(|(((holder, _), _), bytes)| {
                let bytes = bytes.as_deref();
                let all = match holder {
                    Holder::Events(p) => {
                        let plan = &self.plans[*p];
                        lookup::feature_values(plan, bytes.and_then(|b| online::decode(plan, b)).as_ref(), at_ms)
                    }
                    Holder::Table(p) => {
                        let plan = &self.table_plans[*p];
                        aggregate::group_values(
                            plan,
                            bytes.and_then(|b| aggregate::GroupState::decode(plan, b)).as_ref(),
                        )
                    }
                    Holder::Rows(_) => table::row_values(bytes.and_then(table::decode).as_ref()),
                    Holder::OnDemand(_) => unreachable!("not stored"),
                };
                all.into_iter().map(|v| (v.name.clone(), v)).collect()
            })
            .collect();
        let not_found = |feature: &str| FeatureValue {
            name: feature.to_string(),
            value: Value::Null,
            status: Status::NotFound,
            event_time_ms: None,
        };
        let stored = |row: &BTreeMap<String, String>, holder: &Holder, feature: &str| {
            let at = wanted[&(holder.clone(), row[self.key_of(holder)].as_str())];
            values[at].get(feature).cloned().unwrap_or_else(|| not_found(feature))
        };
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                vector
                    .refs
                    .iter()
                    .map(|(holder, feature)| {
                        let Holder::OnDemand(v) = holder else { return stored(row, holder, feature) };
                        let on_demand = self.on_demand_feature(*v, feature);
                        let from_store: Vec<FeatureValue> = on_demand
                            .inputs
                            .iter()
                            .filter(|(q, _)| q != REQUEST)
                            .map(|(q, name)| stored(row, &self.holder(q).expect("resolved"), name))
                            .collect();
                        let (request, mut from_store) = (requests.get(i), from_store.iter());
                        let inputs: Vec<Result<Option<&Value>, &FeatureValue>> = on_demand
                            .inputs
                            .iter()
                            .map(|(q, name)| match q == REQUEST {
                                true => Ok(request.and_then(|r| r.get(name))),
                                false => Err(from_store.next().expect("one per stored input")),
                            })
                            .collect();
                        on_demand.value(&inputs)
                    })
                    .collect()
            })
            .collect())
    }
}
