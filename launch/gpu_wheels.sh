#!/usr/bin/env bash
# Wheels a lent GPU machine lacks (it has PyTorch and no package registry), into .whl/
# for launch/gpu_checks.sh. Run here, from the repo root, after launch/setup.sh:
#     bash launch/gpu_wheels.sh
# Versions are the ones this checkout's .venv holds; the GPU image runs Python 3.12.
# DeepSpeed ships as a source archive only: it is built here into a pure-Python wheel.
# xformers is left out: its wheel is built for one torch version (the GPU image's
# differs from our pin) and is larger than what travels; the trainers then use SDPA.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
mkdir -p .whl
exclude=$(git rev-parse --git-path info/exclude)  # .whl stays out of git
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
version() { "$py" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }
pure=(hjson lpips pydantic annotated-types typing-inspection nvidia-ml-py py-cpuinfo msgpack
      einops webdataset braceexpand)
specs=()
for name in "${pure[@]}" pydantic-core; do
    v=$(version "$name") || true
    [ -n "$v" ] && specs+=("$name==$v")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${specs[@]}"
ds=$(version deepspeed)
"$py" -m pip download -q --no-deps --no-binary=:all: -d /tmp/gtgen-sdist "deepspeed==$ds"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl /tmp/gtgen-sdist/deepspeed-"$ds".tar.gz
du -sh .whl
ls .whl
