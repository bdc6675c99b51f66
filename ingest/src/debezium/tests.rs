//! Envelopes shaped as the PostgreSQL connector 2.x emits them.

use serde_json::json;

use super::*;

fn source(ts_ms: i64) -> Value {
    json!({"version": "2.5.0.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms, "ts_us": ts_ms * 1000 + 123,
           "ts_ns": (ts_ms * 1000 + 123) * 1000 + 456, "snapshot": "false", "db": "shop", "schema": "public",
           "table": "customers", "txId": 771, "lsn": 24023128, "xmin": null})
}

fn change(value: &Value, key: Option<&Value>) -> Result<Decoded, Refusal> {
    let key = key.map(|k| k.to_string().into_bytes());
    decode(key.as_deref(), value.to_string().as_bytes(), &[])
}

fn unwrap(decoded: Result<Decoded, Refusal>) -> Change {
    match decoded {
        Ok(Decoded::Change(c)) => *c,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn create_with_schema_wrapper_and_key_envelope() {
    let value = json!({"schema": {"type": "struct", "name": "pg.public.customers.Envelope"},
                       "payload": {"before": null, "after": {"id": 7, "segment": "gold"}, "source": source(1_767_225_600_000),
                                   "op": "c", "ts_ms": 1_767_225_600_900i64, "transaction": null}});
    let key = json!({"schema": {"type": "struct"}, "payload": {"id": 7}});
    let c = unwrap(change(&value, Some(&key)));
    assert_eq!(c.op, Op::Create);
    assert_eq!(c.key, json!({"id": 7}).as_object().unwrap().clone());
    assert_eq!(c.after.unwrap()["segment"], json!("gold"));
    assert_eq!(c.commit_ms, 1_767_225_600_000, "commit time, not the connector's processing time");
    assert_eq!(c.commit_us, 1_767_225_600_000_123, "ts_ns/ts_us precision kept");
    assert_eq!((c.lsn, c.tx_id), (Some(24_023_128), Some(771)));
    assert_eq!(c.table.as_deref(), Some("public.customers"));
    assert_eq!(c.snapshot.as_deref(), Some("false"));
}

#[test]
fn bare_payloads_updates_with_and_without_before() {
    let mut src = source(1000);
    src.as_object_mut().unwrap().remove("ts_ns");
    src.as_object_mut().unwrap().remove("ts_us");
    let with = json!({"before": {"id": 7, "segment": "gold"}, "after": {"id": 7, "segment": "platinum"}, "source": src, "op": "u"});
    let c = unwrap(change(&with, Some(&json!({"id": 7}))));
    assert_eq!((c.op, c.commit_ms, c.commit_us), (Op::Update, 1000, 1_000_000), "Debezium 1.x: ts_ms only");
    assert!(c.before.is_some());
    let without = json!({"before": null, "after": {"id": 7, "segment": "platinum"}, "source": source(1000), "op": "u"});
    assert!(unwrap(change(&without, Some(&json!({"id": 7})))).before.is_none());
}

#[test]
fn delete_then_tombstone_and_snapshot_reads_and_truncate() {
    let delete = json!({"before": {"id": 7, "segment": "gold"}, "after": null, "source": source(2000), "op": "d"});
    let c = unwrap(change(&delete, Some(&json!({"id": 7}))));
    assert_eq!((c.op, c.after), (Op::Delete, None));
    assert_eq!(decode(Some(b"{\"id\":7}"), b"", &[]), Ok(Decoded::Tombstone));
    assert_eq!(decode(Some(b"{\"id\":7}"), b"null", &[]), Ok(Decoded::Tombstone));
    assert_eq!(decode(None, br#"{"schema": {}, "payload": null}"#, &[]), Ok(Decoded::Tombstone));

    let mut snap = source(3000);
    snap["snapshot"] = json!("last");
    let read = json!({"before": null, "after": {"id": 8}, "source": snap, "op": "r"});
    let c = unwrap(change(&read, Some(&json!({"id": 8}))));
    assert_eq!((c.op, c.snapshot.as_deref()), (Op::Read, Some("last")));

    let truncate = json!({"before": null, "after": null, "source": source(4000), "op": "t"});
    let c = unwrap(change(&truncate, None));
    assert_eq!((c.op, c.key.len()), (Op::Truncate, 0));
}

#[test]
fn configured_key_columns_come_from_the_row() {
    let value =
        json!({"before": null, "after": {"tenant": "a", "id": 7, "segment": "gold"}, "source": source(1), "op": "c"});
    let columns = vec!["tenant".to_string(), "id".to_string()];
    let Ok(Decoded::Change(c)) = decode(None, value.to_string().as_bytes(), &columns) else { panic!() };
    assert_eq!(c.key, json!({"tenant": "a", "id": 7}).as_object().unwrap().clone());
    let missing = json!({"before": null, "after": {"id": 7}, "source": source(1), "op": "c"});
    let err = decode(None, missing.to_string().as_bytes(), &columns).unwrap_err();
    assert_eq!((err.reason, err.message.as_str()), (Reason::MissingKey, "key column \"tenant\" is missing"));
}

#[test]
fn malformed_envelopes_are_refused_with_a_reason() {
    let refuse = |value: &str, key: Option<&[u8]>| decode(key, value.as_bytes(), &[]).unwrap_err();
    assert_eq!(refuse("{oops", None).reason, Reason::MalformedJson);
    let no_op = refuse(r#"{"after": {"id": 1}, "source": {"ts_ms": 1}}"#, Some(b"{\"id\":1}"));
    assert_eq!(
        (no_op.reason, no_op.message.as_str()),
        (Reason::MalformedEnvelope, "`op` is missing: not a Debezium change event")
    );
    assert_eq!(refuse(r#"{"op": "x", "source": {"ts_ms": 1}}"#, None).reason, Reason::MalformedEnvelope);
    assert_eq!(
        refuse(r#"{"op": "c", "after": null, "source": {"ts_ms": 1}}"#, Some(b"{\"id\":1}")).reason,
        Reason::MalformedEnvelope
    );
    assert_eq!(refuse(r#"{"op": "c", "after": {"id": 1}}"#, Some(b"{\"id\":1}")).reason, Reason::MalformedEnvelope);
    assert_eq!(
        refuse(r#"{"op": "c", "after": {"id": 1}, "source": {}}"#, Some(b"{\"id\":1}")).reason,
        Reason::MissingTimestamp
    );
    assert_eq!(refuse(r#"{"op": "c", "after": {"id": 1}, "source": {"ts_ms": 1}}"#, None).reason, Reason::MissingKey);
    assert_eq!(
        refuse(r#"{"op": "c", "after": [1], "source": {"ts_ms": 1}}"#, Some(b"{\"id\":1}")).reason,
        Reason::MalformedEnvelope
    );
    assert_eq!(
        refuse(r#"{"op": "c", "after": {"id": 1}, "source": {"ts_ms": 1}}"#, Some(b"7")).reason,
        Reason::MalformedEnvelope
    );
}
