#!/usr/bin/env bash
# The GPU paths, measured on a machine with an NVIDIA GPU, as one prepared script:
#   1. a round of the default recipe on the GPU (model.device: cuda, bf16 autocast by default, vLLM sampling where
#      vLLM is installed, else transformers), with sampling tokens/s, stage times and peak GPU memory;
#   2. DPO training speed against TRL's DPOTrainer on the same GPU (benchmarks/train_speed.py --device cuda --bf16);
#   3. two training processes on two GPUs when there are two (train.processes: 2, NCCL), as replicas and sharded
#      (train.fsdp).
# MODEL=/path/to/a/larger/model benchmarks/gpu.sh uses that model instead of the built-in one (nothing is downloaded).
# Run from the repository root with iterpo installed (the README's first command, on the GPU machine).
set -euo pipefail
OUT=${OUT:-runs/gpu}
MODEL=${MODEL:-smollm2-135m-instruct}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"
python -c "import vllm; print('vllm', vllm.__version__)" 2>/dev/null || echo "vllm: not installed (sampling with transformers)"

# peak GPU memory over the whole round, read every half second
(while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.5; done) > "$OUT/memory.log" &
POLL=$!
trap 'kill $POLL 2>/dev/null || true' EXIT
start=$(date +%s)
iterpo run --set run.dir="$OUT/round" --set run.rounds=1 --set model.path="$MODEL" --set model.device=cuda \
  --set sampling.backend=auto
echo "round wall time: $(( $(date +%s) - start )) s"
kill $POLL 2>/dev/null || true
echo "peak GPU memory used during the round: $(sort -n "$OUT/memory.log" | tail -1) MiB (all processes on the GPU)"
python - "$OUT/round" <<'PY'
import json, sys
stages = json.load(open(f"{sys.argv[1]}/manifest.json"))["stages"]
for key, info in sorted(stages.items()):
    print(key, {k: v for k, v in info.items() if k in ("seconds", "tokens_per_s", "backend", "steps", "accuracy")})
PY

MODEL_DIR=$(python -c "from iterpo.models.loading import resolve_model_path; print(resolve_model_path('$MODEL'))")
python benchmarks/train_speed.py --device cuda --bf16 --repeats 1 --only trl,iterpo,one_pass --model "$MODEL_DIR"

if [ "$(nvidia-smi --list-gpus | wc -l)" -ge 2 ]; then
  start=$(date +%s)
  iterpo run --set run.dir="$OUT/two-gpus" --set run.rounds=1 --set model.path="$MODEL" --set train.processes=2
  echo "round with 2 training processes (one GPU each): $(( $(date +%s) - start )) s"
  start=$(date +%s)
  iterpo run --set run.dir="$OUT/two-gpus-fsdp" --set run.rounds=1 --set model.path="$MODEL" --set train.processes=2 \
    --set train.fsdp=true
  echo "round with 2 sharded training processes (FSDP): $(( $(date +%s) - start )) s"
fi
