#!/usr/bin/env bash
# The GPU checks on a lent machine that has torch, transformers and peft but no package index, Ray, MLflow,
# DeepSpeed or pydantic (the H200 image of 2026-12): how benchmarks/RESULTS.md was measured.
#
#   bash benchmarks/gpu_device.sh prepare   # here, with the venv and ../shared: wheels to .whl/, data to .gpudata/ (both gitignored)
#   bash benchmarks/gpu_device.sh run OUT   # there, in the checkout's copy (carry .whl and .gpudata): writes OUT/
#   bash benchmarks/gpu_device.sh packing OUT   # there too, a second call: fractional-GPU packing through Ray
#
# Ray's wheel (79 MB) is too large to carry (64 MiB a call): `prepare` repacks it without what a local Ray instance
# never loads (its Java jars, RLlib, the dashboard's web client) as .whl/ray-min.tar.xz (~30 MB), which `packing`
# unpacks beside the other wheels; jsonschema and its needs come as wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
  mkdir -p .whl .gpudata
  local platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
  local versions
  versions=$(.venv/bin/python -c 'import importlib.metadata as m; print(" ".join(f"{d}=={m.version(d)}" for d in
    ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "hjson", "deepspeed")))')
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl ${versions% deepspeed==*}
  DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==${versions##*deepspeed==}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl jsonschema jsonschema-specifications referencing rpds-py
  if [ ! -f .whl/ray-min.tar.xz ]; then
    local ray_version tmp
    ray_version=$(.venv/bin/python -c 'import ray; print(ray.__version__)')
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$tmp" "ray==$ray_version"
    mkdir "$tmp/tree"
    (cd "$tmp/tree" && unzip -q ../ray-*.whl && rm -rf ray/jars ray/rllib ray/dashboard/client/build \
      && tar -cf - . | xz -T2 -6 > ../ray-min.tar.xz)
    mv "$tmp/ray-min.tar.xz" .whl/ && rm -rf "$tmp"
  fi
  cp ../shared/data/ppi-dscript/ecoli.fasta ../shared/data/ppi-dscript/ecoli_test.tsv .gpudata/
  du -sh .whl .gpudata
}

there() {  # there, before a check: the carried wheels (not the Ray tarball) into /tmp/site and protpeft into
  # /tmp/pp once per machine, the environment, and /tmp/run as the directory the benchmarks run from
  root=$PWD
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PROTPEFT_PPI_DATA=$root/.gpudata PROTPEFT_CACHE=/tmp/ppcache
  if [ ! -d /tmp/pp/protpeft ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    # protpeft installed, not imported from the checkout: its subpackages live in folders beside protpeft/
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/pp . >/dev/null
  fi
  export PYTHONPATH=/tmp/pp:/tmp/site
  mkdir -p /tmp/run && ln -sfn "$root/benchmarks" /tmp/run/benchmarks
}

run() {
  local out=${1:?OUT folder}
  mkdir -p "$out"
  there
  cd /tmp/run
  timeout 240 python3 -m benchmarks.bench_gpu --sections lora --out "$out" --profile 4 2>&1 | tee "$out/lora.log" || true
  timeout 90 python3 -m pytest -q -p no:cacheprovider -c "$root/pyproject.toml" --rootdir "$root" \
    "$root/tests/unit/test_cuda_paths.py" 2>&1 | tee "$out/pytest.log" || true
  timeout 120 python3 -m benchmarks.bench_gpu --sections full --pairs 48 --out "$out" 2>&1 | tee "$out/full.log" || true
}

packing() {  # N LoRA jobs at 1/N GPU each vs at a whole GPU each, through run-many on a local Ray instance
  local out=${1:?OUT folder}
  mkdir -p "$out"
  there
  [ -d /tmp/site/ray ] || tar -xJf .whl/ray-min.tar.xz -C /tmp/site
  cd /tmp/run
  timeout 400 python3 -m benchmarks.bench_gpu_packing --jobs 4 --steps 60 2>&1 | tee "$out/packing.log" || true
  cp /tmp/run/benchmarks/results/gpu_packing.* "$out/" 2>/dev/null || true
}

"$@"
