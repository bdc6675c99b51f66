//! Records in: parsed, joined by `request_id`, counted into the windows; windows closed when idle.

use fathom_ingest::deadletter::DeadLetter;
use fathom_ingest::decode::{Reason, Refusal};
use fathom_ingest::record::Record;
use fathom_monitor::alerts::Transition;
use fathom_monitor::influx::Point;
use fathom_monitor::join::{Entry, Joined, Labelled, Predicted};
use fathom_monitor::records::{Label, Prediction};
use fathom_monitor::window::Event;

use super::{entry_key, Kind, Monitor};
use crate::pipeline::PushSummary;
use crate::RETRY;

impl Monitor {
    /// Closes the open windows of models whose streams have been quiet for their `idle`.
    pub(super) fn idle(&mut self) {
        let quiet = self.clock.since(self.last_record).as_millis() as i64;
        let mut outputs = Vec::new();
        for (i, model) in self.models.iter_mut().enumerate() {
            let open = model.monitor.state.windows.values().any(|w| !w.closed);
            if open && quiet >= model.idle_ms {
                outputs.push((i, model.monitor.advance(true)));
            }
        }
        for (i, (points, events)) in outputs {
            self.emit(i, points, events);
        }
    }

    pub(super) fn letter(&self, record: &Record, reason: Reason, message: String) -> DeadLetter {
        let (topic, model, _) = &self.streams[record.source];
        DeadLetter {
            source: self.models[*model].name.clone(),
            topic: topic.clone(),
            partition: record.at.partition,
            offset: record.at.offset,
            reason,
            message,
            payload: record.payload.clone(),
        }
    }

    /// Applies records: parse, join, count; refused ones become dead letters.
    pub(super) async fn handle(&mut self, records: Vec<Record>) -> PushSummary {
        self.last_record = self.clock.instant();
        let mut summary = PushSummary::default();
        let parsed = self.parse(records, &mut summary).await;
        self.load_entries(&parsed).await;
        let epoch = self.epoch();
        for (m, partition, record) in parsed {
            summary.accepted += 1;
            self.join(m, partition, &record, epoch);
        }
        for i in 0..self.models.len() {
            let (points, events) = self.models[i].monitor.advance(false);
            self.emit(i, points, events);
        }
        summary
    }

    /// The records not yet in the checkpoint, parsed as (model, partition, record); refused
    /// ones dead-lettered.
    async fn parse(&mut self, records: Vec<Record>, summary: &mut PushSummary) -> Vec<(usize, i32, Parsed)> {
        let mut parsed = Vec::with_capacity(records.len());
        for record in records {
            let (topic, model, kind) = self.streams[record.source].clone();
            if let Some(partition) = record.at.partition {
                let next = self.offsets.entry((topic.clone(), partition)).or_insert(0);
                if record.at.offset < *next {
                    summary.accepted += 1; // already in the checkpoint
                    continue;
                }
                *next = record.at.offset + 1;
            }
            let result = match kind {
                Kind::Predictions => Prediction::parse(&record.payload).and_then(|p| {
                    let name = &self.models[model].name;
                    if !p.model.is_empty() && &p.model != name {
                        let message = format!("field `model`: {:?} on the topic of model {name:?}", p.model);
                        return Err(Refusal { reason: Reason::InvalidRecord, message });
                    }
                    Ok(Parsed::Prediction(p))
                }),
                Kind::Labels => Label::parse(&record.payload).map(Parsed::Label),
            };
            match result {
                Ok(p) => parsed.push((model, record.at.partition.unwrap_or(-1), p)),
                Err(Refusal { reason, message }) => {
                    let letter = self.letter(&record, reason, message);
                    while let Err(e) = self.dead.send(&letter) {
                        self.health.degraded("writing a dead letter", &e.into());
                        tokio::time::sleep(RETRY).await;
                    }
                    summary.refused(&letter);
                }
            }
        }
        parsed
    }

    /// Loads the join entries not touched since the last checkpoint, in one round trip, as of
    /// the last committed epoch.
    async fn load_entries(&mut self, parsed: &[(usize, i32, Parsed)]) {
        let mut missing: Vec<String> = parsed
            .iter()
            .map(|(m, _, p)| entry_key(&self.project.name, &self.models[*m].name, p.request_id()))
            .filter(|k| !self.overlay.contains_key(k))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let loaded = loop {
            match self.store.load(&missing).await {
                Ok(v) => break v,
                Err(e) => self.health.degraded("reading join entries", &e.into()),
            }
            tokio::time::sleep(RETRY).await;
        };
        self.health.recovered();
        crate::telemetry::near_cache(&self.store);
        let (committed, aborted) = (self.committed, &self.aborted);
        for (key, bytes) in missing.into_iter().zip(loaded) {
            let entry = bytes
                .and_then(|b| postcard::from_bytes::<Entry>(&b).ok())
                .unwrap_or_default()
                .as_of(|e| e <= committed && !aborted.contains(&e));
            self.overlay.insert(key, (0, entry));
        }
    }

    /// Joins one record to its request's entry (written in `epoch`) and counts it.
    fn join(&mut self, m: usize, partition: i32, record: &Parsed, epoch: u64) {
        let key = entry_key(&self.project.name, &self.models[m].name, record.request_id());
        let model = &mut self.models[m];
        let (ttl, entry) = self.overlay.get_mut(&key).expect("loaded above");
        *ttl = model.ttl_ms;
        let joined = match record {
            Parsed::Prediction(p) => {
                let joined = entry.predict(Predicted { ts_ms: p.ts_ms, outcome: p.outcome.clone() }, epoch);
                match joined {
                    Joined::Duplicate => model.monitor.state.counters.duplicate_predictions += 1,
                    _ => model.monitor.prediction(p, partition),
                }
                joined
            }
            Parsed::Label(l) => {
                model.monitor.state.counters.labels += 1;
                model.monitor.label_seen(l.ts_ms, partition);
                let labelled = Labelled { ts_ms: l.ts_ms, label: l.label.to_string() };
                let joined = entry.label(labelled, epoch);
                if joined == Joined::Duplicate {
                    model.monitor.state.counters.duplicate_labels += 1;
                }
                joined
            }
        };
        if let Joined::Pair(predicted, labelled) = joined {
            model.monitor.pair(&predicted, &labelled);
        }
    }

    /// Queues points; turns rule transitions into deliveries (sent after the next checkpoint).
    pub(super) fn emit(&mut self, model: usize, mut points: Vec<Point>, events: Vec<Event>) {
        let now = self.clock.now_ms();
        for event in events {
            let m = &self.models[model];
            let deliveries = match event.rule {
                Some(i) => vec![self.alert(m, i, &event)],
                None if event.transition == Transition::Fired => {
                    let (delivery, record, point) = self.retrain(m, &event);
                    points.push(point);
                    vec![delivery, record]
                }
                None => Vec::new(),
            };
            for mut d in deliveries {
                if !self.outbox.iter().any(|o| o.id == d.id) {
                    d.due_ms = now;
                    self.outbox.push(d);
                }
            }
            self.urgent = true;
        }
        if let Err(e) = self.points.push(&points) {
            tracing::warn!(error = format!("{e:#}"), "monitoring points not queued");
        }
    }
}

pub(super) enum Parsed {
    Prediction(Prediction),
    Label(Label),
}

impl Parsed {
    pub(super) fn request_id(&self) -> &str {
        match self {
            Parsed::Prediction(p) => &p.request_id,
            Parsed::Label(l) => &l.request_id,
        }
    }
}
