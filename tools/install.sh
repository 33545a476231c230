#!/usr/bin/env bash
# One install path for every machine: the Makefile, CI and docker/Dockerfile all call this.
#   VENV=DIR (default .venv)      where the virtual environment goes; VENV=system installs into
#                                 the current interpreter (the Docker image, which has torch already)
#   SKIP_APT=1                    skip the Debian system packages (no root, or already present)
#   GPU=1 / GPU=0                 the CUDA build of torch and the 'gpu' extra (numba-cuda), or not;
#                                 default: GPU=1 where nvidia-smi lists a GPU (the Docker build sets it)
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP_INPUTS=(setup.py tools/install.sh)
if [ -z "${GPU:-}" ]; then
  GPU=0
  if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then GPU=1; fi
fi

if [ "${SKIP_APT:-0}" != "1" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  # open3d needs libusb; its headless renderers need EGL (legacy visualizer) or Vulkan (OffscreenRenderer).
  pkgs="libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers"
  missing=()
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "[install] apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ "$VENV" = "system" ]; then
  PY=python3
else
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi

stamp="$VENV/.perception-installed"
[ "$VENV" = "system" ] && stamp=".perception-installed"
# GPU is part of the stamp: a CPU install found on a GPU machine is redone with the CUDA packages.
sum=$({ cat "${STAMP_INPUTS[@]}"; echo "GPU=$GPU"; } | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  echo "[install] up to date ($PY)"
  exit 0
fi

# pip's output goes to a log that is shown only when it fails (this machine's pip config prints
# many harmless index warnings).
pip_quiet() {
  local log; log=$(mktemp)
  if ! "$PY" -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2; rm -f "$log"; echo "[install] pip install $* failed" >&2; exit 1
  fi
  rm -f "$log"
}
pip_quiet --upgrade pip
# torch first and pinned: the CPU build lies on this disk; a loose requirement would pull a multi-GB
# CUDA build. With a GPU: PyPI's torch 2.13.0 (a CUDA 13 build, its CUDA libraries as nvidia-* wheels;
# needs an NVIDIA driver >= 580). '===' is string equality, so that a local 2.13.0+cpu wheel
# (find-links) cannot satisfy it as '==' would.
extras="test,onnx"
if [ "$GPU" = "1" ]; then
  extras="test,onnx,gpu"
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "[install] torch===2.13.0 (CUDA build)"
    pip_quiet "torch===2.13.0"
  fi
elif ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[install] torch==2.13.0"
  pip_quiet "torch==2.13.0"
fi
echo "[install] project and dependencies (.[$extras])"
pip_quiet -e ".[$extras]"
echo "$sum" > "$stamp"
echo "[install] done ($PY)"
