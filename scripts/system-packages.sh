#!/usr/bin/env bash
# Debian packages the real-world tests need: iptables (the real-mesh test's sidecar interception and packet
# delayer), chromium + chromium-driver (the browser tests of the pages) and prometheus (its promtool parses the
# Grafana dashboard's queries, tests/test_grafana.py). Installs only what is missing, only
# as root with apt-get; anywhere else it says what is missing and the tests that need it skip with that reason.
set -euo pipefail
declare -A wanted=([iptables]=iptables [chromium]=chromium [chromedriver]=chromium-driver [promtool]=prometheus)
missing=()
for command in "${!wanted[@]}"; do
  command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || missing+=("${wanted[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: Debian packages missing (${missing[*]}); not root with apt-get, so the tests that need them will skip" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
