#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need when missing,
# checks formatting and lints, then runs every test. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${DEVCELL_CACHE:-/var/cache/devcell}"
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/devcell"
  mkdir -p "$cache"
fi
# The cargo target directory lives outside the clone so repeated runs are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
# No incremental compilation data: every fresh clone has a new path, so it is never reused,
# and it grew the shared target directory by gigabytes per run until the disk filled.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Debian packages the tests call.
need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3 python3-venv)
command -v git >/dev/null || need+=(git)
command -v npm >/dev/null || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ -x /usr/bin/bwrap ] || need+=(bubblewrap)
command -v slirp4netns >/dev/null || need+=(slirp4netns)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v restic >/dev/null || need+=(restic)
[ -x /usr/bin/pebble ] && [ -x /usr/bin/pebble-challtestsrv ] || need+=(pebble)
[ -x /usr/sbin/named ] && [ -x /usr/sbin/tsig-keygen ] || need+=(bind9 bind9-utils)
[ -x /usr/sbin/mkfs.ext4 ] && [ -x /usr/sbin/resize2fs ] || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(mount)
[ -x /bin/busybox ] || need+=(busybox-static)
[ -x /usr/bin/minisign ] || need+=(minisign)
command -v objcopy >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# Python tools the tests call: a real OpenAPI validator, moto as the S3 endpoint, and
# Schemathesis.
venv="$cache/venv"
# Schemathesis, pinned, fuzzes the API against its document.
if ! "$venv/bin/python" -c 'import openapi_spec_validator, moto, boto3, flask, schemathesis' 2>/dev/null \
  || [ "$("$venv/bin/python" -c 'import schemathesis; print(schemathesis.__version__)' 2>/dev/null)" != 4.32.5 ]; then
  echo "installing openapi-spec-validator, moto[server] and schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7' 'moto[server]>=5' 'schemathesis==4.32.5'
fi
export DEVCELL_TEST_VENV="$venv"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "summary: $passed passed, $failed failed"
if [ "$status" -ne 0 ]; then exit "$status"; fi
if [ "$passed" -eq 0 ]; then echo "no test ran"; exit 1; fi
