#!/bin/sh
# InfluxDB 2 setup hook (runs once, after the initial org/bucket/token are created): map the
# `fathom` bucket to the v1 database `fathom` / retention policy `autogen`, so the InfluxQL
# dashboards (and Fathom's v1-style queries) work through the v1-compatible API.
set -e
BUCKET_ID=$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f 1)
influx v1 dbrp create --db fathom --rp autogen --bucket-id "${BUCKET_ID}" --default
