"""Writes Fathom's Grafana dashboards (dashboards/*.json) from one description, so every panel
uses the same datasource, variables and query conventions. Run after changing a panel:

    python3 dashboards/generate.py

Queries are InfluxQL over the measurements in docs/monitoring.md; `$model` and `$feature` come
from `SHOW TAG VALUES`, `$timeFilter` and `$__interval` from Grafana.
"""
import json
import pathlib

HERE = pathlib.Path(__file__).parent
DATASOURCE = {"type": "influxdb", "uid": "fathom-influxdb"}
SCHEMA_VERSION = 42


def target(query, ref="A", table=False):
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "rawQuery": True,
        "query": query,
        "resultFormat": "table" if table else "time_series",
    }


def panel(pid, title, kind, queries, x, y, w=12, h=8, unit=None, table=False, description=""):
    defaults = {"unit": unit} if unit else {}
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(q, chr(ord("A") + i), table) for i, q in enumerate(queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
    }
    return p


def variable(name, query, multi=False):
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "options": [],
        "hide": 0,
    }


MODEL = variable("model", 'SHOW TAG VALUES FROM "fathom_model_drift" WITH KEY = "model"')
FEATURE = variable(
    "feature", 'SHOW TAG VALUES FROM "fathom_feature_drift" WITH KEY = "feature" WHERE "model" =~ /^$model$/', multi=True
)


def dashboard(uid, title, description, panels, variables):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fathom"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "utc",
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "title": "Fathom dashboards",
                "type": "dashboards",
                "tags": ["fathom"],
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "tooltip": "",
            }
        ],
        "panels": panels,
    }


M = "\"model\" =~ /^$model$/"
F = "\"feature\" =~ /^$feature$/"
T = "$timeFilter"
I = "time($__interval)"

fleet = dashboard(
    "fathom-fleet",
    "Fathom · fleet overview",
    "Every monitored model: drift status, traffic, latency, label coverage and alerts.",
    [
        panel(1, "Drift status per model (latest window)", "table",
              [f'SELECT last("status") AS "status", last("score") AS "score", last("features_drifted") AS "features drifted" '
               f'FROM "fathom_model_drift" WHERE "window" = \'tumbling\' AND {T} GROUP BY "model"'],
              0, 0, 12, 8, table=True),
        panel(2, "Drift score per model", "timeseries",
              [f'SELECT mean("score") FROM "fathom_model_drift" WHERE "window" = \'tumbling\' AND {T} GROUP BY {I}, "model" fill(none)'],
              12, 0, 12, 8),
        panel(3, "Predictions/s", "timeseries",
              [f'SELECT mean("throughput") FROM "fathom_serving" WHERE {T} GROUP BY {I}, "model" fill(none)'],
              0, 8, 8, 8, unit="reqps"),
        panel(4, "Latency p50 / p99", "timeseries",
              [f'SELECT mean("latency_p50") AS "p50", mean("latency_p99") AS "p99" FROM "fathom_serving" WHERE {T} GROUP BY {I}, "model" fill(none)'],
              8, 8, 8, 8, unit="ms"),
        panel(5, "Label coverage", "timeseries",
              [f'SELECT last("label_coverage") FROM "fathom_model_performance" WHERE {T} GROUP BY {I}, "model" fill(none)'],
              16, 8, 8, 8, unit="percentunit"),
        panel(6, "Active alerts (firing = 1)", "table",
              [f'SELECT last("firing") AS "firing", last("value") AS "value", last("threshold") AS "threshold" FROM "fathom_alerts" WHERE {T} GROUP BY "model", "rule"'],
              0, 16, 24, 8, table=True,
              description="The latest transition of every alert rule: 1 while it fires, 0 once resolved."),
    ],
    [],
)

model = dashboard(
    "fathom-model",
    "Fathom · model detail",
    "One model: per-feature drift by every statistic, status over time, performance, predictions and serving.",
    [
        panel(1, "Model drift status", "state-timeline",
              [f'SELECT last("status") FROM "fathom_model_drift" WHERE {M} AND "window" = \'tumbling\' AND {T} GROUP BY {I} fill(none)'],
              0, 0, 24, 5),
        panel(2, "Drift score (tumbling and sliding)", "timeseries",
              [f'SELECT mean("score") FROM "fathom_model_drift" WHERE {M} AND {T} GROUP BY {I}, "window" fill(none)'],
              0, 5, 12, 8),
        panel(3, "Feature score: (TVD + Hellinger) / 2", "timeseries",
              [f'SELECT mean("score") FROM "fathom_feature_drift" WHERE {M} AND {F} AND "window" = \'tumbling\' AND {T} GROUP BY {I}, "feature" fill(none)'],
              12, 5, 12, 8),
    ]
    + [
        panel(4 + i, title, "timeseries",
              [f'SELECT mean("{field}") FROM "fathom_feature_drift" WHERE {M} AND {F} AND "window" = \'tumbling\' AND {T} GROUP BY {I}, "feature" fill(none)'],
              (i % 3) * 8, 13 + (i // 3) * 7, 8, 7)
        for i, (field, title) in enumerate([
            ("tvd", "Total variation distance"),
            ("hellinger", "Hellinger distance"),
            ("kl", "Symmetric KL divergence"),
            ("psi", "Population stability index"),
            ("js", "Jensen–Shannon distance"),
            ("wasserstein", "Wasserstein-1 (numeric features)"),
            ("ks", "KS statistic (numeric features)"),
            ("ks_p", "KS p-value (numeric features)"),
            ("chi2_p", "χ² p-value (categorical features)"),
        ])
    ]
    + [
        panel(20, "Performance", "timeseries",
              [f'SELECT last("accuracy") AS "accuracy", last("precision") AS "precision", last("recall") AS "recall", last("f1") AS "f1", '
               f'last("roc_auc") AS "roc_auc", last("log_loss") AS "log_loss", last("mae") AS "mae", last("rmse") AS "rmse", last("r2") AS "r2" '
               f'FROM "fathom_model_performance" WHERE {M} AND {T} GROUP BY {I} fill(none)'],
              0, 34, 12, 8),
        panel(21, "Labels: coverage, labelled, expired", "timeseries",
              [f'SELECT last("label_coverage") AS "coverage", last("labelled") AS "labelled", last("expired") AS "expired" '
               f'FROM "fathom_model_performance" WHERE {M} AND {T} GROUP BY {I} fill(none)'],
              12, 34, 12, 8),
        panel(22, "Prediction distribution", "timeseries",
              [f'SELECT last("share") AS "share", last("mean") AS "mean" FROM "fathom_predictions" WHERE {M} AND {T} GROUP BY {I}, "class" fill(none)'],
              0, 42, 12, 8),
        panel(23, "Prediction drift", "timeseries",
              [f'SELECT mean("score") FROM "fathom_feature_drift" WHERE {M} AND "feature" = \'prediction\' AND {T} GROUP BY {I}, "window" fill(none)'],
              12, 42, 12, 8,
              description="Needs a `prediction` entry in the reference profile (`fathom profile --prediction COLUMN`)."),
        panel(24, "Latency percentiles", "timeseries",
              [f'SELECT mean("latency_p50") AS "p50", mean("latency_p95") AS "p95", mean("latency_p99") AS "p99" '
               f'FROM "fathom_serving" WHERE {M} AND {T} GROUP BY {I} fill(none)'],
              0, 50, 12, 8, unit="ms"),
        panel(25, "Throughput", "timeseries",
              [f'SELECT mean("throughput") FROM "fathom_serving" WHERE {M} AND {T} GROUP BY {I} fill(none)'],
              12, 50, 12, 8, unit="reqps"),
    ],
    [MODEL, FEATURE],
)

alerts = dashboard(
    "fathom-alerts",
    "Fathom · alerts and retraining",
    "Alert transitions and their deliveries, retraining triggers and their outcomes, the monitor's counters.",
    [
        panel(1, "Alert transitions", "table",
              [f'SELECT "value", "threshold" FROM "fathom_alerts" WHERE {M} AND {T} GROUP BY "rule", "state"'],
              0, 0, 12, 9, table=True),
        panel(2, "Webhook deliveries", "table",
              [f'SELECT "id", "attempts", "status" FROM "fathom_alert_deliveries" WHERE {M} AND {T} GROUP BY "rule", "outcome"'],
              12, 0, 12, 9, table=True),
        panel(3, "Retraining triggers and outcomes", "table",
              [f'SELECT "id", "reason", "run_id", "status" FROM "fathom_retrain" WHERE {M} AND {T} GROUP BY "target", "outcome"'],
              0, 9, 24, 8, table=True),
        panel(4, "Monitor counters", "timeseries",
              [f'SELECT last("joined") AS "joined", last("duplicate_labels") AS "duplicate labels", last("labels_after_expiry") AS "labels after expiry", '
               f'last("late_predictions") AS "late predictions", last("expired") AS "expired" FROM "fathom_monitor" WHERE {M} AND {T} GROUP BY {I} fill(none)'],
              0, 17, 24, 8),
    ],
    [MODEL],
)

featurestore = dashboard(
    "fathom-featurestore",
    "Fathom · feature store",
    "Ingest rate and consumer lag per source, dead letters by reason, flush latency, online keys, event-time lag per feature set, record age when written online.",
    [
        panel(1, "Ingest rate per source", "timeseries",
              [f'SELECT mean("rate") FROM "fathom_ingest" WHERE {T} GROUP BY {I}, "source" fill(none)'],
              0, 0, 12, 8, unit="reqps"),
        panel(2, "Consumer lag per topic", "timeseries",
              [f'SELECT max("lag") FROM "fathom_consumer_lag" WHERE {T} GROUP BY {I}, "topic" fill(none)'],
              12, 0, 12, 8),
        panel(3, "Dead letters by reason", "timeseries",
              [f'SELECT sum("count") FROM "fathom_dead_letters" WHERE {T} GROUP BY {I}, "source", "reason" fill(none)'],
              0, 8, 12, 8),
        panel(4, "Flush latency", "timeseries",
              [f'SELECT mean("mean_ms") AS "mean", max("max_ms") AS "max" FROM "fathom_flush" WHERE {T} GROUP BY {I} fill(none)'],
              12, 8, 12, 8, unit="ms"),
        panel(5, "Online keys", "timeseries",
              [f'SELECT last("keys") FROM "fathom_online" WHERE {T} GROUP BY {I} fill(none)'],
              0, 16, 12, 8),
        panel(6, "Event-time lag per feature set (now − newest event)", "timeseries",
              [f'SELECT last("lag_ms") FROM "fathom_freshness" WHERE {T} GROUP BY {I}, "feature_set" fill(none)'],
              12, 16, 12, 8, unit="ms"),
        panel(7, "Freshness: record age when written online", "timeseries",
              [f'SELECT max("p50_ms") AS "p50", max("p99_ms") AS "p99", max("max_ms") AS "max" FROM "fathom_online_freshness" WHERE {T} GROUP BY {I}, "source" fill(none)'],
              0, 24, 24, 8, unit="ms"),
    ],
    [],
)

for name, board in [("fleet", fleet), ("model", model), ("featurestore", featurestore), ("alerts", alerts)]:
    (HERE / f"fathom-{name}.json").write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")
