use std::collections::BTreeMap;

use fathom_featurestore::definition::CONDITION_PREFIX;
use fathom_featurestore::offline::{ColumnType, Layout, SourceSchema};
use fathom_ingest::config::Format;
use fathom_project::Project;

/// The offline schema of each source: a CDC table's change log, or the key plus every event
/// field its feature sets read (numeric when a numeric aggregation reads it; joined table
/// columns are not the event's and stay in the table's change log).
pub(super) fn schemas(project: &Project) -> Vec<SourceSchema> {
    project
        .sources
        .iter()
        .enumerate()
        .map(|(i, (name, source))| {
            if source.format == Format::Debezium {
                return SourceSchema { name: name.clone(), key: source.key.clone(), layout: Layout::ChangeLog };
            }
            let mut columns: BTreeMap<String, ColumnType> = BTreeMap::new();
            for (plan, _) in project.plans.iter().zip(&project.plan_sources).filter(|(_, s)| **s == i) {
                let numeric = plan.numeric_columns();
                let read = plan.columns.iter().chain(&plan.latest).chain(std::iter::once(&plan.key_column));
                let stored = |c: &&String| !plan.is_joined(c) && !c.starts_with(CONDITION_PREFIX);
                for column in read.filter(stored) {
                    let ty = if numeric.contains(column) { ColumnType::Float } else { ColumnType::Text };
                    let entry = columns.entry(column.clone()).or_insert(ty);
                    if ty == ColumnType::Float {
                        *entry = ColumnType::Float;
                    }
                }
            }
            columns.remove(&source.key);
            if let Some(ts) = &source.timestamp {
                columns.remove(ts);
            }
            SourceSchema {
                name: name.clone(),
                key: source.key.clone(),
                layout: Layout::Events(columns.into_iter().collect()),
            }
        })
        .collect()
}
