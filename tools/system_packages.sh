#!/usr/bin/env bash
# Install the Debian packages the venv needs but pip cannot provide, only those missing.
#
# Usage: tools/system_packages.sh PYTHON PACKAGE...
# PYTHON is the interpreter the venv is made from: when it is Debian's own, its headers
# (python3-dev, for the message build) and venv module (python3-venv) may be missing too.
# Prints what it installs; does nothing when every package is there. On a system without
# dpkg it only lists what to install by hand.
set -euo pipefail

python=$1
shift
wanted=("$@")

if ! "$python" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  wanted+=(python3-dev)
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  wanted+=(python3-venv)
fi

if ! command -v dpkg-query >/dev/null; then
  echo "system_packages: no dpkg here; make sure these (Debian names) are installed: ${wanted[*]}"
  exit 0
fi

missing=()
for package in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ $status == *" installed" ]] || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "system_packages: installing missing Debian packages: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
