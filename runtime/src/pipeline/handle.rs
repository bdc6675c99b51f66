//! One batch: decoded, applied to the feature sets and CDC tables, flushed online.

use std::collections::BTreeMap;

use fathom_featurestore::offline::LoggedChange;
use fathom_featurestore::table::RowChange;
use fathom_ingest::config::{Format, KeyFrom, TruncatePolicy};
use fathom_ingest::deadletter::DeadLetter;
use fathom_ingest::debezium::{self, Change, ChangeOrder, Decoded, Op};
use fathom_ingest::decode::{Reason, Refusal};
use fathom_ingest::event::Event;
use fathom_ingest::record::Record;
use fathom_transform::Failure;
use serde_json::{Map, Value};

use super::{Cdc, Pipeline, PushSummary};
use crate::telemetry;

/// One batch, decoded.
struct Batch {
    /// Events of event sources.
    events: Vec<Event>,
    /// Changes of CDC tables, with the decoded change for the change log.
    changes: Vec<(RowChange, Box<Change>)>,
    /// Highest offset per (source, partition) in the batch (topic names only once per batch).
    last: BTreeMap<(usize, i32), i64>,
}

impl Pipeline {
    /// Decodes, applies and flushes one batch; refused records become dead letters.
    pub(super) async fn handle(&mut self, mut records: Vec<Record>) -> PushSummary {
        self.skip_handled(&mut records);
        self.count_in(&records);
        let mut produced: Vec<(usize, i64)> =
            records.iter().filter_map(|r| Some((r.source, r.transport_time_ms?))).collect();
        produced.sort_by_key(|(source, _)| *source);
        let mut summary = PushSummary::default();
        let Batch { mut events, changes, last } = self.decode(records, &mut summary).await;
        self.transform(&mut events, &mut summary, false).await;
        if !changes.is_empty() {
            self.apply_changes(changes).await;
        }
        self.join(&mut events).await;
        self.transform(&mut events, &mut summary, true).await;
        self.apply_events(&mut events, &mut summary).await;
        self.mark_applied(last).await;
        self.note_freshness(&produced);
        summary
    }

    /// Drops what the broker re-delivers though this process already handled it (its
    /// connection was lost before the offsets were committed): applied, written and
    /// dead-lettered once already.
    fn skip_handled(&self, records: &mut Vec<Record>) {
        let handled = &self.handled;
        let before = records.len();
        records.retain(|r| {
            r.at.partition.is_none_or(|p| handled.get(&(r.source, p)).is_none_or(|&through| r.at.offset > through))
        });
        if records.len() < before {
            telemetry::redelivered((before - records.len()) as u64);
        }
    }

    /// Counts records in, per source.
    fn count_in(&mut self, records: &[Record]) {
        let mut per_source = vec![0u64; self.project.sources.len()];
        records.iter().for_each(|r| per_source[r.source] += 1);
        for (i, n) in per_source.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            telemetry::records_in(&self.project.sources[i].0, n);
            self.stats.records[i] += n;
        }
    }

    /// Events and CDC changes decoded from the records; refused ones dead-lettered.
    async fn decode(&mut self, records: Vec<Record>, summary: &mut PushSummary) -> Batch {
        let now = chrono::Utc::now().timestamp_millis();
        let mut batch = Batch { events: Vec::with_capacity(records.len()), changes: Vec::new(), last: BTreeMap::new() };
        for record in records {
            let source = record.source;
            if let Some(partition) = record.at.partition {
                batch.last.insert((source, partition), record.at.offset);
            }
            if self.project.sources[source].1.format == Format::Debezium {
                let refusal = match self.change(&record) {
                    Ok(Cdc::Change(row, change)) => {
                        summary.accepted += 1;
                        batch.changes.push((*row, change));
                        continue;
                    }
                    Ok(Cdc::Consumed) => {
                        summary.accepted += 1;
                        continue;
                    }
                    Ok(Cdc::Truncate) => Refusal {
                        reason: Reason::Truncate,
                        message: "truncate of a CDC table (rows are not cleared; on_truncate: dead_letter)".into(),
                    },
                    Err(refusal) => refusal,
                };
                let letter = self.letter(&record.payload, source, record.at, refusal.reason, refusal.message);
                summary.refused(&letter);
                self.dead_letter(letter).await;
                continue;
            }
            match self.decoders[source].decode(record, now) {
                Ok(event) => {
                    let newest = &mut self.stats.newest_ms[source];
                    *newest = Some(newest.map_or(event.time_ms, |t| t.max(event.time_ms)));
                    batch.events.push(event)
                }
                Err((record, refusal)) => {
                    let letter = self.letter(&record.payload, source, record.at, refusal.reason, refusal.message);
                    summary.refused(&letter);
                    self.dead_letter(letter).await;
                }
            }
        }
        batch
    }

    /// Runs each source's row transform (`select`, `where`) over its events; the events it
    /// fails on are dead-lettered (`wrong_type` for a declared column of another type,
    /// `expression_error` naming the expression, `key_too_long` for an entity key a select
    /// made longer than the source's `max_key_bytes`) and leave the batch. `after_joins`: the
    /// conditions that read joined columns instead, run once the joins are done.
    async fn transform(&mut self, events: &mut Vec<Event>, summary: &mut PushSummary, after_joins: bool) {
        let project = self.project.clone();
        let mut refused: Vec<(usize, Reason, String)> = Vec::new();
        let transforms: Vec<(usize, &fathom_transform::Transform)> = match after_joins {
            false => project.transforms.iter().enumerate().filter(|(_, t)| !t.is_empty()).collect(),
            true => project.after_joins.iter().map(|(_, s, t)| (*s, t)).collect(),
        };
        for (source, transform) in transforms {
            let at: Vec<usize> = (0..events.len()).filter(|&i| events[i].source == source).collect();
            let mut rows: Vec<&mut Map<String, Value>> =
                events.iter_mut().filter(|e| e.source == source).map(|e| &mut e.fields).collect();
            for (i, failure) in transform.apply(&mut rows) {
                let reason = match failure {
                    Failure::Decode(_) => Reason::WrongType,
                    Failure::Expression { .. } => Reason::ExpressionError,
                };
                refused.push((at[i], reason, failure.to_string()));
            }
            // entity keys computed by a select obey the source's key limit, as its own key does
            let config = &project.sources[source].1;
            let selected_keys = project
                .plans
                .iter()
                .zip(&project.plan_sources)
                .filter(|(p, s)| **s == source && config.select.contains_key(&p.key_column))
                .map(|(p, _)| &p.key_column);
            for field in selected_keys.filter(|_| !after_joins) {
                for &i in &at {
                    let length = events[i].fields.get(field).and_then(Value::as_str).map_or(0, str::len);
                    if length > config.max_key_bytes && !refused.iter().any(|r| r.0 == i) {
                        let message = format!(
                            "key field {field:?} is {length} bytes, over the limit of {}",
                            config.max_key_bytes
                        );
                        refused.push((i, Reason::KeyTooLong, message));
                    }
                }
            }
        }
        if refused.is_empty() {
            return;
        }
        refused.sort_by_key(|(i, _, _)| *i);
        refused.dedup_by_key(|(i, _, _)| *i);
        for (i, reason, message) in &refused {
            let event = &events[*i];
            let letter = self.letter(&event.raw, event.source, event.at, *reason, message.clone());
            summary.refused(&letter);
            self.dead_letter(letter).await;
        }
        let mut gone = refused.iter().map(|(i, _, _)| *i).peekable();
        let mut i = 0;
        events.retain(|_| {
            let keep = gone.next_if_eq(&i).is_none();
            i += 1;
            keep
        });
    }

    /// Applies CDC changes to their tables and appends them to the offline change log.
    async fn apply_changes(&mut self, mut changes: Vec<(RowChange, Box<Change>)>) {
        let mut rows: Vec<&mut RowChange> = changes.iter_mut().map(|(row, _)| row).collect();
        let outcome =
            until_ok!(self.health, "loading table rows from the online store", self.tables.apply(&mut rows).await);
        telemetry::table_changes(&outcome);
        // an applied change's row has its unavailable columns filled in; a skipped one's
        // keep Debezium's placeholder in the log, for readers to fill in from the change
        // before it in order (as `fathom dataset` does)
        for (row, _) in changes.iter_mut().filter(|(row, _)| !row.unavailable.is_empty()) {
            if let Some(after) = row.row.as_mut() {
                for column in row.unavailable.drain(..) {
                    after.insert(column, Value::String(debezium::UNAVAILABLE_VALUE.into()));
                }
            }
        }
        let logged: Vec<LoggedChange<'_>> = changes
            .iter()
            .map(|(row, change)| LoggedChange {
                source: row.source,
                at: row.at,
                key: &row.key,
                change,
                after: row.row.as_ref(),
            })
            .collect();
        self.offline.append_changes(&logged);
    }

    /// Adds the events' joined CDC table columns.
    async fn join(&mut self, events: &mut [Event]) {
        if self.joins.iter().any(|j| !j.is_empty()) {
            let outcome = until_ok!(
                self.health,
                "loading joined table rows from the online store",
                self.tables.enrich(&self.joins, events).await
            );
            telemetry::joins(&outcome);
        }
    }

    /// Applies the events to the feature sets, dead-letters the late ones and appends them all
    /// to the offline store.
    async fn apply_events(&mut self, events: &mut [Event], summary: &mut PushSummary) {
        let outcome =
            until_ok!(self.health, "loading state from the online store", self.processor.process(events).await);
        telemetry::events(&outcome);
        let late_for = self.late(events, &outcome.late, summary).await;
        let late = late_for.iter().filter(|l| l.is_some()).count();
        summary.dead_lettered += late;
        summary.accepted += events.len() - late;
        self.offline.append(events, &late_for);
    }

    /// Per event, the feature sets that refused it as late, dead-lettered once per (event,
    /// feature set): the offline row says so, so point-in-time retrieval leaves it out of
    /// exactly those.
    async fn late(
        &mut self,
        events: &[Event],
        late: &[(usize, usize)],
        summary: &mut PushSummary,
    ) -> Vec<Option<String>> {
        let mut late_for: Vec<Option<String>> = vec![None; events.len()];
        for &(i, plan) in late {
            let event = &events[i];
            let plan = &self.processor.plans()[plan];
            let message = format!(
                "event time {} is more than {} ms behind entity {:?}'s newest event in feature set {:?}",
                event.time_ms, plan.late_after_ms, event.key, plan.name
            );
            let first = late_for[i].is_none();
            match &mut late_for[i] {
                Some(names) => {
                    names.push(',');
                    names.push_str(&plan.name);
                }
                none => *none = Some(plan.name.clone()),
            }
            let letter = self.letter(&event.raw, event.source, event.at, Reason::Late, message);
            if first {
                summary.note(&letter); // counted once per event by the caller
            }
            self.dead_letter(letter).await;
        }
        late_for
    }

    /// Records the batch's highest offsets as handled and processed, then flushes online with
    /// them.
    async fn mark_applied(&mut self, last: BTreeMap<(usize, i32), i64>) {
        let mut applied = BTreeMap::new();
        for ((source, partition), offset) in last {
            self.handled.insert((source, partition), offset);
            let topic = self.project.stream_name(source).to_string();
            self.processed.insert((topic.clone(), partition), offset + 1);
            applied.insert((topic, partition), offset);
        }
        self.flush(&applied).await;
    }

    /// A Debezium record as a row change plus the decoded change for the change log.
    pub(super) fn change(&self, record: &Record) -> Result<Cdc, Refusal> {
        let (name, config) = &self.project.sources[record.source];
        let columns = match config.key_from {
            KeyFrom::Row => std::slice::from_ref(&config.key),
            KeyFrom::Record => &[],
        };
        let placeholder = config.unavailable_value_placeholder.as_deref().unwrap_or(debezium::UNAVAILABLE_VALUE);
        let change = match debezium::decode(record.key.as_deref(), &record.payload, columns, placeholder)? {
            Decoded::Tombstone => {
                telemetry::tombstone(name);
                return Ok(Cdc::Consumed);
            }
            Decoded::Change(change) if change.op == Op::Truncate => {
                telemetry::truncate(name, change.table.as_deref());
                return Ok(match config.on_truncate {
                    TruncatePolicy::Skip => Cdc::Consumed,
                    TruncatePolicy::DeadLetter => Cdc::Truncate,
                });
            }
            Decoded::Change(change) => change,
        };
        let mut change = change;
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => fathom_ingest::decode::number_key(n).unwrap_or_else(|_| n.to_string()),
            other => other.to_string(),
        };
        // a key envelope's columns come sorted by name (serde_json maps are ordered)
        let key = change.key.values().map(text).collect::<Vec<_>>().join(":");
        fathom_ingest::decode::check_key_length(&config.key, &key, config.max_key_bytes)?;
        // the row moves to the table; the change log reads it back from there
        let row = if change.op == Op::Delete { None } else { change.after.take() };
        let row_change = RowChange {
            source: record.source,
            key,
            row,
            unavailable: std::mem::take(&mut change.unavailable),
            order: ChangeOrder::of(&change, record.at),
            at: record.at,
            snapshot: change.op == Op::Read,
        };
        Ok(Cdc::Change(Box::new(row_change), change))
    }

    pub(super) fn letter(
        &mut self,
        payload: &[u8],
        source: usize,
        at: fathom_ingest::record::Coordinates,
        reason: Reason,
        message: String,
    ) -> DeadLetter {
        *self.stats.dead.entry((source, reason.as_str())).or_insert(0) += 1;
        DeadLetter {
            source: self.project.sources[source].0.clone(),
            topic: self.project.stream_name(source).to_string(),
            partition: at.partition,
            offset: at.offset,
            reason,
            message,
            payload: payload.to_vec(),
        }
    }
}
