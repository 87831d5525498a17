#!/usr/bin/env bash
# Install the Debian packages whose binaries the integration tests run (idempotent).
#
# Checks each binary with `command -v` (also in /usr/sbin and /sbin, which are often not on a user's PATH),
# installs only the missing packages with one `apt-get update` and one `apt-get install`, and prints one
# line saying what it installed or that everything was present. It never starts system services (on this
# machine /usr/sbin/policy-rc.d also stops apt from auto-starting them); tests start their own instances.
set -euo pipefail

# binary:package pairs (an absolute path instead of a binary: a file the package installs, e.g. a font)
REQUIRED=(
    "mosquitto:mosquitto"
    "mosquitto_pub:mosquitto-clients"
    "victoria-metrics:victoria-metrics"
    "influxd:influxdb"
    "socat:socat"
    "prometheus-alertmanager:prometheus-alertmanager"
    "prometheus:prometheus"
    "promtool:prometheus"
    "chromium:chromium"
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc:fonts-wqy-microhei"
)

export PATH="${PATH}:/usr/sbin:/sbin:/usr/local/sbin"

missing_pkgs=()
for pair in "${REQUIRED[@]}"; do
    binary="${pair%%:*}"
    package="${pair#*:}"
    if [[ "${binary}" == /* ]]; then
        [ -e "${binary}" ] || missing_pkgs+=("${package}")
    elif ! command -v "${binary}" >/dev/null 2>&1; then
        missing_pkgs+=("${package}")
    fi
done

if [ "${#missing_pkgs[@]}" -eq 0 ]; then
    echo "ensure-services: all present (mosquitto, mosquitto-clients, victoria-metrics, influxdb, socat, prometheus-alertmanager, prometheus, chromium, CJK font)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "ensure-services: missing packages ${missing_pkgs[*]}, but not root and sudo is unavailable;" \
        "install them with: apt-get install ${missing_pkgs[*]}" >&2
    exit 1
fi

"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null

echo "ensure-services: installed ${missing_pkgs[*]}"
