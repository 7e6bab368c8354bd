#!/usr/bin/env bash
# Install the Debian packages named as PACKAGE:COMMAND when COMMAND is missing.
# PostgreSQL's binaries live outside PATH on Debian, so its check also looks there.
# A COMMAND starting with / is a file the package installs (for packages without a command).
set -euo pipefail
missing=()
for pair in "$@"; do
  package=${pair%%:*}
  command=${pair#*:}
  if [[ $command == /* ]]; then
    [ -e "$command" ] && continue
  elif command -v "$command" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$command" >/dev/null; then
    continue
  fi
  missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing OS packages: ${missing[*]} (run as root, or install them with apt-get)" >&2
  exit 1
fi
echo "Installing OS packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
