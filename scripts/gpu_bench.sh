#!/usr/bin/env bash
# Every GPU figure in docs/bench/ and the README's GPU columns, in one go on one CUDA machine (about 10 minutes of
# GPU time on an H100/H200): both families at full size with random weights. Each bench run measures the swaps
# (cold, prefetched by the end-to-end grid, warm, fused), forwards (eager, fused, and compiled with --compile), the
# routed grid, the end-to-end grid (sdxl-size), a swap's VRAM swing, the peak of a 4-epoch routed batch, and the
# forward under offload: group. The JSON and the table of each run go to $OUT (default docs/bench/gpu/), named
# after the GPU, and last the Ray executor against one engine. Run it from the project root, with the package installed
# (python -m pip install -r requirements.txt; -e .[cluster] for the Ray part).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-docs/bench/gpu}"
mkdir -p "$out"
gpu="$(python -c 'import torch; print(torch.cuda.get_device_name(0).replace("NVIDIA ", "").split()[0].lower())')"
export PYTHONUNBUFFERED=1
run() {  # run MODEL [extra args]: the JSON, then its table rendered from that same JSON (one run, not two)
  local model="$1"; shift
  python -m lora_spectrum bench --model "$model" --device cuda --json "$@" > "$out/$gpu-$model.json"
  python -c 'import json, sys; from lora_spectrum.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))' \
    "$out/$gpu-$model.json" > "$out/$gpu-$model.txt"
  echo "wrote $out/$gpu-$model.json and .txt"
}
run sdxl-size --compile
run z-image-size
# The Ray executor against one engine on the same grid (issue 16): one worker per GPU of this machine. With one GPU
# it measures the pool's overhead; with several, how the grid scales. Needs the cluster extra (pip install -e .[cluster]).
if python -c 'import ray' 2>/dev/null; then
  gpus="$(python -c 'import torch; print(torch.cuda.device_count())')"
  python -m lora_spectrum bench --executor ray --workers "$gpus" --model sdxl-size --device cuda --json \
    > "$out/$gpu-ray-$gpus.json"
  python -c 'import json, sys; from lora_spectrum.bench.cluster import format_cluster; print(format_cluster(json.load(open(sys.argv[1]))))' \
    "$out/$gpu-ray-$gpus.json" > "$out/$gpu-ray-$gpus.txt"
  echo "wrote $out/$gpu-ray-$gpus.json and .txt"
fi
