#!/usr/bin/env bash
# Renders docs/img/fedgate-overview.png and docs/img/fedgate-peers.png: the two dashboards with
# real data. Runs the metrics test that drives a live fedgate with a real Prometheus
# (Debian's prometheus package) for half a minute of traffic, saves every dashboard query,
# and plots them (matplotlib from PyPI; Grafana is not in Debian). From the repository root:
# `scripts/dashboard-snapshots.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import matplotlib' 2>/dev/null ||
    pip install --quiet matplotlib 2>/dev/null ||
    pip install --quiet --break-system-packages matplotlib
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
FEDGATE_DASHBOARD_DATA="$data" cargo test --locked --test integration \
    metrics::prometheus_evaluates_every_dashboard_expression_and_alert_rule_against_a_live_fedgate -- --exact --nocapture >/dev/null
python3 scripts/plot-dashboards.py "$data" docs/img
echo "wrote docs/img/fedgate-overview.png and docs/img/fedgate-peers.png"
