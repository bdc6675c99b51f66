//! The monitor over the embedded store with a [`ManualClock`]: idle-window closing and delivery
//! back-off, with time moved forward instead of slept through.

use std::sync::Arc;

use fathom_featurestore::online::{EmbeddedStore, OnlineStore};
use fathom_ingest::record::{Coordinates, Record};
use fathom_monitor::profile::{FeatureProfile, NumericProfile, Profile};

use super::outbox::{Delivery, Failure, Target};
use super::*;
use crate::clock::{Clock, ManualClock};

/// Wall-clock start of the tests: a whole 10 minutes.
const T0: i64 = 1_795_168_800_000;

/// A monitor of model `m` (10-minute windows closing after 1 minute without records; one alert
/// rule giving up after 3 attempts), with its clock and the points file.
async fn monitor(dir: &std::path::Path) -> (Monitor, Arc<ManualClock>, PathBuf) {
    let profile = Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: "m".into(),
        created: "2026-01-01T00:00:00Z".into(),
        source: "test".into(),
        rows: 100,
        features: [(
            "x".to_string(),
            FeatureProfile::Numeric(NumericProfile::build((0..100).map(f64::from).collect(), 0)),
        )]
        .into(),
    };
    profile.save(&dir.join("m.json")).unwrap();
    let yaml = format!(
        r#"
project: clocked
stores:
  offline: {{ parquet: {{ path: "{d}/offline" }} }}
  dead_letters: {{ path: "{d}/dlq" }}
sources:
  tx: {{ key: id, timestamp: ts }}
entities:
  id: {{ key: id }}
feature_sets:
  ids: {{ entity: id, source: tx, features: [x] }}
models:
  m:
    features: []
    reference: "{d}/m.json"
    monitoring: {{ window: 10m, sliding: none, lateness: 1m, idle: 1m }}
    alerts:
      - {{ name: any, metric: throughput, op: ">=", threshold: 0, webhook: "http://127.0.0.1:9/hook", max_attempts: 3 }}
"#,
        d = dir.display()
    );
    let project = Arc::new(fathom_project::parse(&yaml).unwrap());
    let (name, config) = project.models.iter().next().unwrap();
    let prepared = vec![Prepared {
        name: name.clone(),
        config: config.clone(),
        profile,
        settings: settings(name, config).unwrap(),
    }];
    let store = OnlineStore::Embedded(Arc::new(EmbeddedStore::new()));
    let clock = Arc::new(ManualClock::new(T0));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let health = Arc::new(Health::default());
    let (monitor, _, _) = activate(&project, &store, &prepared, "me", &health, &dyn_clock).await.unwrap();
    (monitor, clock, monitoring_dir(&project).join("points.lp"))
}

fn prediction(i: i64) -> Record {
    let payload = format!(r#"{{"request_id":"r{i}","timestamp":{},"prediction":1,"features":{{"x":{i}}}}}"#, T0 + i);
    Record {
        source: 0,
        at: Coordinates { partition: None, offset: i },
        transport_time_ms: None,
        key: None,
        payload: payload.into(),
    }
}

fn open_windows(monitor: &Monitor) -> usize {
    monitor.models[0].monitor.state.windows.values().filter(|w| !w.closed).count()
}

#[tokio::test]
async fn an_open_window_closes_once_the_streams_are_quiet_for_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (mut monitor, clock, _) = monitor(dir.path()).await;
    monitor.handle((0..5).map(prediction).collect()).await;
    assert_eq!(open_windows(&monitor), 1);
    clock.advance(59_999);
    monitor.idle();
    assert_eq!(open_windows(&monitor), 1, "quiet for less than `idle`");
    clock.advance(1);
    monitor.idle();
    assert_eq!(open_windows(&monitor), 0, "quiet for `idle`: closed");
}

#[tokio::test]
async fn failed_deliveries_back_off_then_give_up_and_say_so_in_a_point() {
    let dir = tempfile::tempdir().unwrap();
    let (mut monitor, clock, points) = monitor(dir.path()).await;
    let mut delivery = Delivery::new("m:alert:0:1:fired".into(), "m", Target::Alert(0), "{}".into(), None);
    delivery.committed = true;
    monitor.outbox.push(delivery);
    let failure = || Err(Failure { why: "HTTP 503: busy".into(), permanent: false, status: 503 });
    monitor.delivered("m:alert:0:1:fired", failure());
    assert_eq!((monitor.outbox[0].attempts, monitor.outbox[0].due_ms), (1, T0 + 2_000));
    clock.advance(2_000);
    monitor.delivered("m:alert:0:1:fired", failure());
    assert_eq!((monitor.outbox[0].attempts, monitor.outbox[0].due_ms), (2, T0 + 2_000 + 4_000));
    monitor.delivered("m:alert:0:1:fired", failure());
    assert!(monitor.outbox.iter().all(|d| d.id != "m:alert:0:1:fired"), "max_attempts 3: given up");
    monitor.checkpoint().await.unwrap();
    let written = std::fs::read_to_string(points).unwrap();
    let line = written.lines().find(|l| l.starts_with("fathom_alert_deliveries")).expect("a delivery point");
    assert!(line.contains("outcome=failed") && line.contains("attempts=3i") && line.contains("status=503i"), "{line}");
    assert!(line.ends_with(&format!(" {}", (T0 + 2_000) * 1_000_000)), "timed by the clock: {line}");
}

#[test]
fn the_stored_checkpoint_keeps_its_postcard_layout() {
    use super::checkpoint::Checkpoint;
    let mut delivery = Delivery::new("a".into(), "m", Target::Alert(1), "{}".into(), None);
    (delivery.attempts, delivery.due_ms, delivery.committed) = (2, 7, true);
    let checkpoint = Checkpoint {
        epoch: 3,
        aborted: [2].into(),
        offsets: vec![(("t".into(), 0), 5)],
        models: Default::default(),
        outbox: vec![delivery],
    };
    // by the postcard wire format: varints, zigzag for signed integers, length-prefixed strings
    // and sequences, enum variants by index, fields in declaration order
    let golden: &[u8] = &[
        3, // epoch
        1, 2, // aborted: {2}
        1, 1, b't', 0, 10, // offsets: [(("t", 0), 5)]
        0,  // models: {}
        1,  // outbox: one delivery
        1, b'a', 1, b'm', 0, 1, 2, b'{', b'}', 2, 14, 1,
        0, // id, model, Alert(1), body, attempts, due_ms, committed, context
    ];
    assert_eq!(postcard::to_allocvec(&checkpoint).unwrap(), golden);
    assert_eq!(checkpointed_offsets(golden).unwrap(), vec![(("t".to_string(), 0), 5)]);
}
