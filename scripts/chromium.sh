#!/usr/bin/env bash
# Print the path of a headless-capable Chromium, installing Debian's `chromium` package when it is
# missing and we are root (as scripts/slurm-local.sh installs Slurm). The report's browser test
# (tests/report) renders the HTML report in it. Exit 1, printing nothing, when there is none.
set -euo pipefail
find_it() {
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}
if find_it; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt-get) for the report's browser test" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  find_it && exit 0
fi
exit 1
