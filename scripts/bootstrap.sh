#!/usr/bin/env bash
# Creates .venv with everything the project needs, installing Debian packages first.
# Idempotent: a stamp keyed on the dependency files makes a second run return at once, and the
# Horovod wheel (a ~6 minute source build) is cached outside the work tree and reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
HOROVOD_VERSION=0.28.1
TF_VERSION=2.17.1
WHEEL_CACHE="${EFFDET_WHEEL_CACHE:-$HOME/.cache/efficientdet/wheels}"
SYSTEM_PACKAGES=(cmake g++ make libhighwayhash-dev libfarmhash-dev kubectl)

log() { printf '[bootstrap] %s\n' "$*" >&2; }

stamp_key() {
  cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/constraints.txt" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -c1-16
}
STAMP="$VENV/.bootstrap-$(stamp_key)"
if [[ -f "$STAMP" ]]; then
  exit 0
fi

install_system_packages() {
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if ! command -v apt-get >/dev/null; then
    log "missing system packages ${missing[*]} and no apt-get: install them by hand"; exit 1
  fi
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  log "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pip, quiet, minus the noise of this machine's local find-links and of the known protobuf
# conflict; a failing install still fails the script (pipefail).
pip_install() {
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 | grep -v \
    -e "Location 'file:" -e "dependency resolver does not currently" \
    -e "tensorflow-cpu .* requires protobuf" >&2 || [[ ${PIPESTATUS[0]} -eq 0 ]]
}

install_python_packages() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # A current pip: the image tests resolve installs for other platforms (--dry-run --platform).
  pip_install "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"
  log "installing TensorFlow $TF_VERSION and the project (this takes a few minutes the first time)"
  pip_install -c "$ROOT/constraints.txt" -e "$ROOT[cpu,export,reports,train,dev]"
  # kfp 2.17 wants protobuf 6, TensorFlow 2.17 declares <5 but runs on 6: a second resolver pass.
  pip_install -c "$ROOT/constraints.txt" -e "$ROOT[pipeline]"
  "$VENV/bin/python" -c "import kfp, mlflow, tensorflow" 2>/dev/null \
    || { log "the pipeline extra did not install"; exit 1; }
}

install_horovod() {
  if "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
    return 0
  fi
  local tag; tag="tf${TF_VERSION}-$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  local cache="$WHEEL_CACHE/$tag"
  mkdir -p "$cache"
  if ! ls "$cache"/horovod-"$HOROVOD_VERSION"-*.whl >/dev/null 2>&1; then
    log "building horovod $HOROVOD_VERSION with gloo against TensorFlow $TF_VERSION (about 6 minutes, once)"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
      "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$cache" \
      "horovod==$HOROVOD_VERSION" >&2
  fi
  pip_install --no-deps "$cache"/horovod-"$HOROVOD_VERSION"-*.whl
  TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -c "import efficientdet, horovod.tensorflow as hvd; assert hvd.gloo_built()" \
    || { log "horovod installed without gloo"; exit 1; }
}

install_system_packages
install_python_packages
install_horovod
rm -f "$VENV"/.bootstrap-*
touch "$STAMP"
log "environment ready: $VENV"
