#!/bin/sh
# Run by the influxdb:2.x image once, right after its first-start setup (docker-entrypoint-initdb.d).
#
# Maps the InfluxQL database "$DOCKER_INFLUXDB_INIT_BUCKET" (retention policy "autogen", the default) to the
# bucket the processors write, so that InfluxQL on the v1 /query API reads that bucket: energymon report,
# energymon serve and the uplink (processor.store database: the bucket name) and Grafana's InfluxQL data source
# (dbName) all query through this mapping. The setup exports the new bucket's id as DOCKER_INFLUXDB_INIT_BUCKET_ID
# and the admin token in the CLI's active config.
set -eu
existing=$(influx v1 dbrp list --org "${DOCKER_INFLUXDB_INIT_ORG}" --db "${DOCKER_INFLUXDB_INIT_BUCKET}" \
    --hide-headers 2>/dev/null || true)
if [ -n "${existing}" ]; then
    echo "energymon: DBRP mapping for database ${DOCKER_INFLUXDB_INIT_BUCKET} exists"
    exit 0
fi
influx v1 dbrp create \
    --org "${DOCKER_INFLUXDB_INIT_ORG}" \
    --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
    --db "${DOCKER_INFLUXDB_INIT_BUCKET}" \
    --rp autogen \
    --default
echo "energymon: InfluxQL database ${DOCKER_INFLUXDB_INIT_BUCKET} (rp autogen) maps to bucket ${DOCKER_INFLUXDB_INIT_BUCKET}"
