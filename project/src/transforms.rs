//! Each source's row transform, compiled from its `columns` and `select` and the `where`s of its
//! feature sets; every expression is parsed and type-checked here, so `fathom validate` reports a
//! bad one with its path, the message and a hint.

use arrow_schema::{DataType, Field, Fields, Schema};
use fathom_featurestore::definition::{
    condition_field, filtered_field, FeatureSetConfig, FeatureSetPlan, Function, Problem, TablePlan,
};
use fathom_ingest::config::{ColumnSpec, Format, SourceConfig};
use fathom_transform::{ExprError, RowFilter, Transform};

fn problem(problems: &mut Vec<Problem>, path: impl Into<String>, message: impl Into<String>) {
    problems.push(Problem { path: path.into(), message: message.into() });
}

fn expression_problem(problems: &mut Vec<Problem>, path: String, error: ExprError, source: &str) {
    let error = error.hinted(|hint| match hint.starts_with("the source's columns") {
        true => format!("{hint}; declare others under sources.{source}.columns"),
        false => hint.to_string(),
    });
    problem(problems, path, error.describe());
}

/// The Arrow type of a declared column.
fn data_type(spec: &ColumnSpec, path: &str, problems: &mut Vec<Problem>) -> Option<DataType> {
    match spec {
        ColumnSpec::Type(name) => fathom_transform::sql_type(name).or_else(|| {
            let message = format!("unknown type {name:?} (use {})", fathom_transform::SQL_TYPES);
            problem(problems, path, message);
            None
        }),
        ColumnSpec::Nested(fields) => {
            let fields: Option<Vec<Field>> = fields
                .iter()
                .map(|(name, spec)| {
                    data_type(spec, &format!("{path}.{name}"), problems).map(|t| Field::new(name, t, true))
                })
                .collect();
            Some(DataType::Struct(Fields::from(fields?)))
        }
    }
}

/// One transform per source (empty where a source declares nothing), with its `select`s.
pub(crate) fn selects(sources: &[(String, SourceConfig)], problems: &mut Vec<Problem>) -> Vec<Transform> {
    sources
        .iter()
        .map(|(name, source)| {
            let path = format!("sources.{name}");
            let fields: Vec<Field> = source
                .columns
                .iter()
                .filter_map(|(column, spec)| {
                    data_type(spec, &format!("{path}.columns.{column}"), problems).map(|t| Field::new(column, t, true))
                })
                .collect();
            let mut transform = Transform::new(Schema::new(fields));
            for (output, sql) in &source.select {
                let here = format!("{path}.select.{output}");
                if Some(output) == source.timestamp.as_ref() || *output == source.key {
                    problem(problems, here, "is the source's key or timestamp field; choose another name");
                    continue;
                }
                if let Err(e) = transform.select(output, sql) {
                    expression_problem(problems, here, e, name);
                }
            }
            transform
        })
        .collect()
}

/// A CDC table feature set's `where`, over the table's declared and selected columns.
pub(crate) fn table_condition(
    config: &FeatureSetConfig,
    path: &str,
    transform: &Transform,
    problems: &mut Vec<Problem>,
) -> Option<RowFilter> {
    let sql = config.where_.as_ref()?;
    row_filter(sql, &format!("{path}.where"), &config.source, transform, problems)
}

/// `sql` as a condition over a CDC table's declared and selected columns; a problem at `path`
/// if it does not compile.
pub(crate) fn row_filter(
    sql: &str,
    path: &str,
    source: &str,
    transform: &Transform,
    problems: &mut Vec<Problem>,
) -> Option<RowFilter> {
    RowFilter::compile(sql, transform.selected_schema())
        .map_err(|e| expression_problem(problems, path.to_string(), e, source))
        .ok()
}

/// Adds a feature set's conditions to its source's transform and checks that what it aggregates
/// as numbers is numeric where the transform knows the type.
///
/// A condition that reads a column of the feature set's joins (`joined`: the source's columns
/// with the joined ones) goes into the returned transform, run after the joins.
pub(crate) fn feature_set(
    config: &FeatureSetConfig,
    set: &str,
    path: &str,
    transform: &mut Transform,
    joined: Option<Schema>,
    problems: &mut Vec<Problem>,
) -> Option<Transform> {
    let mut after_joins: Option<Transform> = None;
    let mut conditions: Vec<(String, String, &String, Option<&String>)> = Vec::new();
    if let Some(sql) = &config.where_ {
        conditions.push((format!("{path}.where"), condition_field(set), sql, None));
    }
    for (i, agg) in config.aggregations.iter().enumerate() {
        let Some(sql) = &agg.where_ else { continue };
        conditions.push((format!("{path}.aggregations[{i}].where"), filtered_field(set, i), sql, Some(&agg.column)));
    }
    for (here, field, sql, keep) in conditions {
        let Err(before_joins) = transform.condition(&here, &field, sql, keep.map(String::as_str)) else { continue };
        let error = match &joined {
            Some(schema) => {
                let post = after_joins.get_or_insert_with(|| Transform::new(schema.clone()));
                match post.condition(&here, &field, sql, keep.map(String::as_str)) {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            }
            None => before_joins,
        };
        expression_problem(problems, here, error, &config.source);
    }
    let known = transform.selected_schema();
    for (i, agg) in config.aggregations.iter().enumerate() {
        let Ok(field) = known.field_with_name(&agg.column) else { continue };
        let numeric = field.data_type().is_numeric() || field.data_type() == &DataType::Null;
        let needs_number = agg.functions.iter().filter_map(|f| Function::parse(f)).find(|f| f.is_numeric());
        if let (false, Some(f)) = (numeric, needs_number) {
            problem(
                problems,
                format!("{path}.aggregations[{i}].column"),
                format!(
                    "{} is {}, but {} needs numbers (hint: aggregate a numeric select, e.g. `CAST({} AS DOUBLE)`, or use count or distinct_count)",
                    agg.column,
                    field.data_type(),
                    f.name(),
                    agg.column
                ),
            );
        }
    }
    after_joins
}

/// The columns a feature set's conditions may read after its joins: its source's declared and
/// selected columns, then each join's columns as the table declares or selects them (text where
/// it does not say).
pub(crate) fn joined_schema(
    config: &FeatureSetConfig,
    source: &Transform,
    sources: &[(String, SourceConfig)],
    transforms: &[Transform],
) -> Option<Schema> {
    if config.join.is_empty() {
        return None;
    }
    let mut fields: Vec<Field> = source.selected_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    for join in &config.join {
        let table = sources.iter().position(|(n, _)| *n == join.table).map(|t| transforms[t].selected_schema());
        for column in &join.columns {
            let t = table
                .as_ref()
                .and_then(|s| s.field_with_name(column).ok())
                .map_or(DataType::Utf8, |f| f.data_type().clone());
            // a joined column replaces an event field of its name
            fields.retain(|f| f.name() != column);
            fields.push(Field::new(column, t, true));
        }
    }
    Some(Schema::new(fields))
}

/// Limits each event source's written selects to those something reads from an event's fields:
/// its feature sets' aggregated columns, latest values, entity keys and join keys. A source with
/// conditions after joins writes them all (those conditions read them back from the fields); a
/// CDC table keeps all its selects in its rows (lookups return them).
pub(crate) fn write_only_what_is_read(
    sources: &[(String, SourceConfig)],
    plans: &[FeatureSetPlan],
    plan_sources: &[usize],
    after_joins: &[(String, usize, Transform)],
    transforms: &mut [Transform],
) {
    for (s, (_, source)) in sources.iter().enumerate() {
        if source.format == Format::Debezium || after_joins.iter().any(|(_, a, _)| *a == s) {
            continue;
        }
        let mut read: Vec<&str> = Vec::new();
        for (plan, _) in plans.iter().zip(plan_sources).filter(|(_, p)| **p == s) {
            read.extend(plan.columns.iter().chain(&plan.latest).map(String::as_str));
            read.push(&plan.key_column);
            read.extend(plan.joins.iter().map(|j| j.on.as_str()));
        }
        transforms[s].write_only(|name| read.contains(&name));
    }
}

/// Every stored feature an on-demand feature may read, qualified by its feature set or table:
/// aggregations (counts `BIGINT`, the rest `DOUBLE`), derived features, latest values (typed as
/// their source declares or selects them, else text), CDC table columns as their source declares
/// them, aggregations over tables.
pub(crate) fn stored_features(
    plans: &[FeatureSetPlan],
    plan_sources: &[usize],
    table_plans: &[TablePlan],
    sources: &[(String, SourceConfig)],
    transforms: &[Transform],
) -> Vec<(String, Field)> {
    let number = |count: bool| if count { DataType::Int64 } else { DataType::Float64 };
    let mut out = Vec::new();
    for (plan, &s) in plans.iter().zip(plan_sources) {
        let columns = transforms[s].selected_schema();
        let mut add = |name: &str, t: DataType| out.push((plan.name.clone(), Field::new(name, t, true)));
        for a in &plan.aggregations {
            add(&a.name, a.function.data_type());
        }
        for name in &plan.latest {
            add(name, columns.field_with_name(name).map_or(DataType::Utf8, |f| f.data_type().clone()));
        }
        for name in plan.derived.names() {
            add(name, plan.derived.data_type(name).cloned().unwrap_or(DataType::Null));
        }
    }
    for plan in table_plans {
        for (name, _, f) in &plan.aggregations {
            out.push((plan.name.clone(), Field::new(name, number(*f == Function::Count), true)));
        }
    }
    for ((name, source), transform) in sources.iter().zip(transforms) {
        if source.format == Format::Debezium {
            for field in transform.selected_schema().fields() {
                out.push((name.clone(), field.as_ref().clone()));
            }
        }
    }
    out
}
