//! Envelopes shaped as the connectors emit them (PostgreSQL 2.x throughout; each connector's
//! documented `source` block for log positions).

use serde_json::json;

use super::*;

fn source(ts_ms: i64) -> Value {
    json!({"version": "2.5.0.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms, "ts_us": ts_ms * 1000 + 123,
           "ts_ns": (ts_ms * 1000 + 123) * 1000 + 456, "snapshot": "false", "db": "shop", "schema": "public",
           "table": "customers", "txId": 771, "lsn": 24023128, "xmin": null})
}

fn change(value: &Value, key: Option<&Value>) -> Result<Decoded, Refusal> {
    let key = key.map(|k| k.to_string().into_bytes());
    decode(key.as_deref(), value.to_string().as_bytes(), &[], UNAVAILABLE_VALUE)
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
    assert_eq!(decode(Some(b"{\"id\":7}"), b"", &[], UNAVAILABLE_VALUE), Ok(Decoded::Tombstone));
    assert_eq!(decode(Some(b"{\"id\":7}"), b"null", &[], UNAVAILABLE_VALUE), Ok(Decoded::Tombstone));
    assert_eq!(decode(None, br#"{"schema": {}, "payload": null}"#, &[], UNAVAILABLE_VALUE), Ok(Decoded::Tombstone));

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
    let Ok(Decoded::Change(c)) = decode(None, value.to_string().as_bytes(), &columns, UNAVAILABLE_VALUE) else {
        panic!()
    };
    assert_eq!(c.key, json!({"tenant": "a", "id": 7}).as_object().unwrap().clone());
    let missing = json!({"before": null, "after": {"id": 7}, "source": source(1), "op": "c"});
    let err = decode(None, missing.to_string().as_bytes(), &columns, UNAVAILABLE_VALUE).unwrap_err();
    assert_eq!((err.reason, err.message.as_str()), (Reason::MissingKey, "key column \"tenant\" is missing"));
}

#[test]
fn malformed_envelopes_are_refused_with_a_reason() {
    let refuse = |value: &str, key: Option<&[u8]>| decode(key, value.as_bytes(), &[], UNAVAILABLE_VALUE).unwrap_err();
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

/// The position of a change whose `source` block is `source` (a create of row 1).
fn position_of(source: Value) -> Option<LogPosition> {
    let value = json!({"before": null, "after": {"id": 1}, "op": "u", "source": source});
    unwrap(decode(None, value.to_string().as_bytes(), &["id".to_string()], UNAVAILABLE_VALUE)).position
}

#[test]
fn each_connectors_documented_source_fields_give_its_log_position() {
    use Connector::*;
    let at = |connector, parts| Some(LogPosition { connector, parts });
    // PostgreSQL: lsn (a number), or the current LSN of `sequence` (text) when lsn is absent
    assert_eq!(position_of(source(1)), at(Postgres, [24_023_128, 0, 0]));
    let sequence = json!({"connector": "postgresql", "ts_ms": 1, "sequence": "[\"24023119\",\"24023128\"]"});
    assert_eq!(position_of(sequence), at(Postgres, [24_023_128, 0, 0]));
    // MySQL / MariaDB: binlog file number, pos, row
    let mysql = json!({"version": "2.7.3.Final", "connector": "mysql", "name": "mysql-server-1", "ts_ms": 1_465_581_029_000i64,
                       "snapshot": "false", "db": "inventory", "table": "customers", "server_id": 223344, "gtid": null,
                       "file": "mysql-bin.000003", "pos": 484, "row": 0, "thread": 7, "query": null});
    assert_eq!(position_of(mysql), at(MySql, [3, 484, 0]));
    let mariadb = json!({"connector": "mariadb", "ts_ms": 1, "file": "mariadb-bin.1000000", "pos": 4, "row": 2});
    assert_eq!(position_of(mariadb), at(MySql, [1_000_000, 4, 2]), "file numbers past six digits");
    // SQL Server: LSN text of fixed-width hex groups; Db2 has the same fields
    let mssql = json!({"connector": "sqlserver", "ts_ms": 1, "change_lsn": "00000027:00000758:0003",
                       "commit_lsn": "00000027:00000758:0005", "event_serial_no": 1});
    assert_eq!(position_of(mssql), at(SqlServer, [0x0027_0000_0758_0005, 0x0027_0000_0758_0003, 1]));
    let snapshot = json!({"connector": "sqlserver", "ts_ms": 1, "snapshot": "true", "change_lsn": null,
                          "commit_lsn": "00000195:000010a0:0003", "event_serial_no": null});
    assert_eq!(position_of(snapshot), at(SqlServer, [0x0195_0000_10a0_0003, 0, 0]));
    let db2 = json!({"connector": "db2", "ts_ms": 1, "change_lsn": "00000000:0000150f:0000000000048fca",
                     "commit_lsn": "00000000:00001510:0000000000000000"});
    assert_eq!(position_of(db2), at(SqlServer, [0x1510_0000_0000_0000_0000, 0x150f_0000_0000_0004_8fca, 0]));
    // Oracle: SCNs as decimal text; a snapshot row has no commit SCN
    let oracle = json!({"connector": "oracle", "ts_ms": 1, "scn": "1513734", "commit_scn": "1513754", "ssn": 0});
    assert_eq!(position_of(oracle), at(Oracle, [1_513_754, 1_513_734, 0]));
    let snapshot = json!({"connector": "oracle", "ts_ms": 1, "snapshot": "true", "scn": "1513700", "commit_scn": null});
    assert_eq!(position_of(snapshot), at(Oracle, [1_513_700, 1_513_700, 0]));
    // MongoDB: the oplog's seconds and ordinal
    let mongodb = json!({"connector": "mongodb", "ts_ms": 1_558_965_508_000i64, "ord": 31, "rs": "rs0"});
    assert_eq!(position_of(mongodb), at(MongoDb, [1_558_965_508_000, 31, 0]));
    // no connector name: the fields tell; none of them: no position
    assert_eq!(position_of(json!({"ts_ms": 1, "file": "bin.000001", "pos": 9})), at(MySql, [1, 9, 0]));
    assert_eq!(position_of(json!({"ts_ms": 1})), None);
}

#[test]
fn positions_order_as_the_log_and_survive_their_text_form() {
    let mysql = |file: &str, pos: u64, row: u64| {
        position_of(json!({"connector": "mysql", "ts_ms": 1, "file": file, "pos": pos, "row": row})).unwrap()
    };
    let ordered =
        [mysql("bin.000009", 900, 3), mysql("bin.000010", 4, 0), mysql("bin.000010", 4, 1), mysql("bin.1000000", 1, 0)];
    assert!(ordered.windows(2).all(|w| w[0] < w[1]), "{ordered:?}");
    let texts: Vec<String> = ordered.iter().map(LogPosition::to_sortable).collect();
    assert!(texts.windows(2).all(|w| w[0] < w[1]), "text order is the log order: {texts:?}");
    for (p, t) in ordered.iter().zip(&texts) {
        assert_eq!(LogPosition::from_sortable(t).as_ref(), Some(p));
    }
}

#[test]
fn unavailable_values_are_taken_out_of_the_row_and_named() {
    let value = json!({"before": null, "op": "u", "source": source(1),
        "after": {"id": 1, "notes": "__debezium_unavailable_value", "blob": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
                  "tags": ["__debezium_unavailable_value"], "segment": "gold"}});
    let c = unwrap(decode(None, value.to_string().as_bytes(), &["id".to_string()], UNAVAILABLE_VALUE));
    assert_eq!(c.after, Some(json!({"id": 1, "segment": "gold"}).as_object().unwrap().clone()));
    let mut missing = c.unavailable.clone();
    missing.sort();
    assert_eq!(missing, ["blob", "notes", "tags"]);
    // a configured placeholder replaces Debezium's
    let value = json!({"before": null, "op": "u", "source": source(1), "after": {"id": 1, "notes": "??"}});
    let c = unwrap(decode(None, value.to_string().as_bytes(), &["id".to_string()], "??"));
    assert_eq!(c.unavailable, ["notes"]);
}

#[test]
fn mongodb_documents_arrive_as_json_strings_and_decode_as_rows() {
    // the MongoDB connector's change event (Debezium documentation): `after` is a string of
    // extended JSON, `source` has `rs`, `collection`, `ord`, and a boolean `snapshot`
    let value = json!({
        "after": "{\"_id\": {\"$numberLong\": \"1004\"},\"first_name\": \"Anne\",\"last_name\": \"Kretchmar\",\"email\": \"annek@noanswer.org\"}",
        "source": {"version": "2.7.3.Final", "connector": "mongodb", "name": "fulfillment", "ts_ms": 1_558_965_508_000i64,
                   "snapshot": false, "db": "inventory", "rs": "rs0", "collection": "customers", "ord": 31},
        "op": "c", "ts_ms": 1_558_965_515_240i64});
    let key = json!({"id": "1004"});
    let c = unwrap(change(&value, Some(&key)));
    let after = c.after.unwrap();
    assert_eq!((after["first_name"].clone(), after["_id"].clone()), (json!("Anne"), json!({"$numberLong": "1004"})));
    assert_eq!(c.key, json!({"id": "1004"}).as_object().unwrap().clone());
    assert_eq!(c.table.as_deref(), Some("inventory.customers"));
    assert_eq!(c.snapshot.as_deref(), Some("false"));
    assert_eq!(c.position, Some(LogPosition { connector: Connector::MongoDb, parts: [1_558_965_508_000, 31, 0] }));
    // a string that is not a document is refused with the reason
    let bad = json!({"after": "not json", "source": {"connector": "mongodb", "ts_ms": 1, "ord": 1}, "op": "c"});
    let refused = change(&bad, Some(&key)).unwrap_err();
    assert!(refused.message.contains("not a JSON document"), "{}", refused.message);
}
