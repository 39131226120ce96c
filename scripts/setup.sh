#!/usr/bin/env bash
# Idempotent set-up of attnprune on a fresh Debian/Ubuntu machine.
#
# Run from the repository root (the script also cd's there itself):
#   bash scripts/setup.sh
#
# It
#   1. installs the Fashion-MNIST data (Debian package dataset-fashion-mnist)
#      with apt-get when /usr/share/datasets/fashion-mnist is missing and
#      apt-get can be used (as root, or through password-less sudo); a failure
#      there is only a warning, since ATTNPRUNE_DATA or download=True also work;
#   2. creates the virtual environment .venv if it is missing;
#   3. installs the pinned dependencies (requirements.txt) and attnprune itself
#      in editable mode. A stamp file, .venv/.attnprune-setup, records a hash of
#      requirements.txt and setup.cfg, so later runs skip this step at once.
#
# Environment: PYTHON (default python3) picks the interpreter for the venv.
# Progress messages go to stderr so that callers' stdout stays clean.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }

DATA_DIR=/usr/share/datasets/fashion-mnist
VENV=.venv
STAMP="$VENV/.attnprune-setup"
PYTHON="${PYTHON:-python3}"
ARCH="$(uname -m)"

# Prints the command prefix that runs apt-get with root rights ("" for root,
# "sudo -n" with password-less sudo); fails when neither is available.
apt_prefix() {
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$(id -u)" -eq 0 ]; then
        printf ''
    elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        printf 'sudo -n'
    else
        return 1
    fi
}

apt_install() {
    local prefix
    prefix="$(apt_prefix)" || return 1
    log "running: ${prefix:+$prefix }apt-get update -qq && ${prefix:+$prefix }apt-get install -y -qq $*"
    # shellcheck disable=SC2086  # $prefix is deliberately split into words
    $prefix env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        $prefix env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# 1. Data.
if [ -d "$DATA_DIR" ]; then
    log "Fashion-MNIST found in $DATA_DIR"
elif apt_prefix >/dev/null; then
    log "Fashion-MNIST missing from $DATA_DIR; installing dataset-fashion-mnist"
    apt_install dataset-fashion-mnist ||
        warn "could not install dataset-fashion-mnist; set ATTNPRUNE_DATA=/path or pass download=True"
else
    warn "$DATA_DIR is missing and apt-get is not usable here (needs root or password-less sudo);" \
        "run 'sudo apt-get install dataset-fashion-mnist', set ATTNPRUNE_DATA=/path, or pass download=True"
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
        echo "[setup] ERROR: attnprune needs Python >= 3.10; $PYTHON is $("$PYTHON" -V 2>&1)" >&2
        exit 1
    }
    log "creating $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        # Debian ships venv/ensurepip separately, in python3-venv.
        if apt_prefix >/dev/null && apt_install python3-venv; then
            "$PYTHON" -m venv "$VENV"
        else
            echo "[setup] ERROR: '$PYTHON -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
else
    log "virtual environment $VENV exists"
fi

# 3. Python packages.
hash_inputs() {
    { cat requirements.txt setup.cfg; printf 'arch=%s\n' "$ARCH"; } | sha256sum | cut -d' ' -f1
}
WANT="$(hash_inputs)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    log "Python packages up to date (stamp $STAMP matches); skipping pip"
    exit 0
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [ "$ARCH" = "x86_64" ]; then
    log "installing pinned dependencies: pip install -r requirements.txt"
    "${PIP[@]}" install -r requirements.txt >&2
    log "installing attnprune (editable): pip install --no-deps -e ."
    "${PIP[@]}" install --no-deps -e . >&2
else
    # requirements.txt pins x86_64-tested wheels; elsewhere use setup.cfg's ranges.
    extra=()
    if [ "$ARCH" = "aarch64" ]; then
        # A torch/torchvision pair known to work on aarch64.
        extra=("torch==2.9.1" "torchvision==0.24.1")
    fi
    log "$ARCH is not x86_64: requirements.txt is guidance only;" \
        "pip install -e .[dev] ${extra[*]:-}"
    "${PIP[@]}" install -e ".[dev]" "${extra[@]}" >&2
fi

printf '%s\n' "$WANT" >"$STAMP"
log "done; wrote $STAMP"
