#!/bin/sh
# Issue the certificates the compose stack mounts (deploy/docker-compose.yml), with openssl:
#   ca.pem ca.key                  the stack's own CA (keep ca.key offline once the stack is set up)
#   server.pem server.key          the brokers: mosquitto, emqx.energymon.local, emqx1/emqx2.energymon.local,
#                                  localhost, 127.0.0.1
#   gw-line1.pem gw-line1.key      gateway of compose/plant.yaml (CN = gateway.id = MQTT user name)
#   gw-cluster.pem gw-cluster.key  gateway of compose/cluster-plant.yaml
#   processor.pem processor.key    every processor (CN = processor)
#   energymon.acl                  deploy/mosquitto/acl with ENTERPRISE set to the uscc of compose/plant.yaml
# Usage: sh deploy/compose/make-certs.sh [OUT_DIR]   (default: deploy/compose/certs)
# Existing files are kept; delete OUT_DIR to issue new ones. The private keys are mode 0644 because the
# containers read them under their own user ids (mosquitto 1883, energymon 10001, emqx 1000); OUT_DIR
# itself is mode 0700, so on the host only its owner can read them.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/certs}
days=${CERT_DAYS:-825}
mkdir -p "$out"
chmod 0700 "$out"
cd "$out"

issue() {  # issue NAME CN [subjectAltName]
    [ -f "$1.pem" ] && return 0
    openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    if [ -n "${3:-}" ]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$3" > "$1.ext"
    else
        printf 'extendedKeyUsage=clientAuth\n' > "$1.ext"
    fi
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days "$days" \
        -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
    chmod 0644 "$1.key" "$1.pem"
}

if [ ! -f ca.pem ]; then
    openssl req -x509 -newkey rsa:3072 -nodes -keyout ca.key -out ca.pem -days 3650 \
        -subj "/CN=energymon-compose-ca" 2>/dev/null
    chmod 0600 ca.key
    chmod 0644 ca.pem
fi
issue server mosquitto \
    "DNS:mosquitto,DNS:emqx.energymon.local,DNS:emqx1.energymon.local,DNS:emqx2.energymon.local,DNS:localhost,IP:127.0.0.1"
issue gw-line1 gw-line1
issue gw-cluster gw-cluster
issue processor processor

uscc=$(sed -n 's/^  uscc: *\([0-9A-Z]\{18\}\).*/\1/p' "$here/plant.yaml")
[ -n "$uscc" ] || { echo "make-certs.sh: no enterprise.uscc found in $here/plant.yaml" >&2; exit 1; }
sed "/^#/!s/ENTERPRISE/$uscc/g" "$here/../mosquitto/acl" > energymon.acl
chmod 0644 energymon.acl
echo "certificates and ACL in $out"
