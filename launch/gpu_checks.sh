#!/usr/bin/env bash
# The GPU checks (issue 13) on a lent machine, in parts that each fit one 10-minute call
# of the device tool (its $OUT collects the logs; elsewhere they go to gpu-checks/):
#     bash launch/gpu_checks.sh tests     # build the splat kernel, pytest -m gpu
#     bash launch/gpu_checks.sh bench     # kernels, generator, eval and tokenizer benches
# Carry .whl (bash launch/gpu_wheels.sh, here) for what the GPU image lacks (DeepSpeed,
# LPIPS, ...). The tables go into BENCHMARKS.md with device, date and command.
set -uo pipefail
case "${1:-}" in
    tests|bench) ;;
    *) echo "usage: bash launch/gpu_checks.sh tests|bench" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/device.txt"
run() {  # run NAME CMD...: output to $out/NAME.log, exit status noted, never stops the rest
    local name=$1; shift
    echo "== $*" | tee "$out/$name.log"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$out/$name.log"
}
case "${1:-}" in
    tests)
        run build python3 -m kernels.build
        # only the files holding gpu tests: the others may import packages the image lacks
        mapfile -t files < <(grep -l "mark.gpu\|^gpu = pytest" tests/test_*.py)
        run pytest-gpu python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 500 \
            --continue-on-collection-errors "${files[@]}" ;;
    bench)
        run kernels-bench python3 -m kernels.bench
        run generator-bench python3 -m launch.bench_gpt
        run eval-bench python3 -m eval.bench
        run tokenizer-bench python3 -m launch.bench_tokenizer --size gaussian-imagenet,vq-imagenet \
            --batch 32 --steps 10 --warmup 3 --set loss.gan_start=0 ;;
esac
