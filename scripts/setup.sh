#!/usr/bin/env bash
# make setup: install everything acd needs on a Debian 12 machine, as root. Idempotent: a second
# run only checks and returns within seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$PWD
ROOT=${ACD_ASTERISK_ROOT:-/var/cache/acd/asterisk-root}
STATE=$PROJECT/.state
# The packages of the Asterisk root; changing this list rebuilds the root.
ROOT_PACKAGES=asterisk,asterisk-core-sounds-en-gsm,asterisk-moh-opsound-gsm
ROOT_SUITE=sid
HOST_PACKAGES="debootstrap redis-server sip-tester espeak-ng sox python3-venv procps iproute2 util-linux chromium fonts-dejavu-core fonts-liberation"

log() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs packages and builds the Asterisk root)" >&2; exit 1; }

# 1. Host packages.
missing=()
for p in $HOST_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts redis-server as a service when it can; acd starts its own on the configured address.

# 2. The Asterisk 22 root (Debian sid), cached outside the checkout.
want="$ROOT_SUITE $ROOT_PACKAGES"
if [ "$(cat "$ROOT/.acd-root" 2>/dev/null)" != "$want" ]; then
  log "building the Asterisk root in $ROOT (debootstrap $ROOT_SUITE, about a minute)"
  rm -rf "$ROOT.tmp"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include="$ROOT_PACKAGES" "$ROOT_SUITE" "$ROOT.tmp" >"$ROOT.log" 2>&1 \
    || { tail -20 "$ROOT.log" >&2; echo "setup: debootstrap failed, see $ROOT.log" >&2; exit 1; }
  chroot "$ROOT.tmp" /usr/sbin/asterisk -V >/dev/null
  # Mount points for the per-node configuration, state and generated prompts (see acd/runtime/asterisk.py).
  chroot "$ROOT.tmp" mkdir -p /etc/asterisk/instance /srv/acd /usr/share/asterisk/sounds/en_US_f_Allison/acd
  rm -rf "$ROOT"
  mv "$ROOT.tmp" "$ROOT"
  echo "$want" > "$ROOT/.acd-root"
fi
# Without the hostname in /etc/hosts every call blocks on DNS lookups; the hostname may change.
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost\n' "$(hostname)" > "$ROOT/etc/hosts"
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$ROOT/etc/resolv.conf"

# 3. Python virtual environment with the project and its dev dependencies.
stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat .venv/.acd-stamp 2>/dev/null)" != "$stamp" ]; then
  log "creating the virtual environment in .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$stamp" > .venv/.acd-stamp
fi

# 4. Generated secrets (never committed): the AMI password, the read-only AMI monitor's,
#    Redis's password, the AGI routes' secret, the admin API token, the read-only token for wallboards (viewer), and the secret
#    agents' SIP passwords derive from.
mkdir -p "$STATE/sounds"
chmod 700 "$STATE"
for f in ami.secret ami-monitor.secret redis.secret agi.secret admin.token viewer.token agent-phones.secret; do
  if [ ! -s "$STATE/$f" ]; then
    log "generating $STATE/$f"
    (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$STATE/$f")
  fi
done

# 5. Menu prompts spoken by espeak-ng, 8 kHz mono WAV, regenerated when their text changes.
while IFS=$'\t' read -r name text; do
  case "$name" in ''|'#'*) continue ;; esac
  out="$STATE/sounds/$name.wav"
  sum=$(printf '%s' "$text" | sha256sum | cut -c1-16)
  if [ "$(cat "$out.sum" 2>/dev/null)" != "$sum" ]; then
    espeak-ng -v en-us -s 175 -w "$STATE/sounds/$name.tmp.wav" "$text"
    sox "$STATE/sounds/$name.tmp.wav" -r 8000 -c 1 -b 16 "$out"
    rm -f "$STATE/sounds/$name.tmp.wav"
    echo "$sum" > "$out.sum"
  fi
done < ivr_flows/prompts.tsv
chmod 755 "$STATE/sounds"; chmod 644 "$STATE"/sounds/*.wav

log "ready: Asterisk root $ROOT ($(chroot "$ROOT" /usr/sbin/asterisk -V)), venv .venv"
