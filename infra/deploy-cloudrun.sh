#!/usr/bin/env bash
# Builds the CUDA image in web-adapter mode (a plain HTTP server on $PORT outside Lambda), pushes it to
# Artifact Registry and deploys it as a Cloud Run service with one NVIDIA L4 GPU that scales to zero.
#
#   infra/deploy-cloudrun.sh PROJECT_ID [REGION]
#
# Run it from the repository root, with gcloud logged in (`gcloud auth login`) and Docker running.
# The project needs Cloud Run GPU quota in REGION ("Total Nvidia L4 GPU allocation without zonal
# redundancy"); REGION must offer L4 GPUs (us-central1, europe-west1, europe-west4, asia-southeast1, ...).
#
# Environment (all optional):
#   SERVICE=llm-chat        service name (also the Artifact Registry repository's)
#   PARALLEL=8              the engine's n_parallel, and Cloud Run's --concurrency
#   MAX_INSTANCES=1         upper bound on GPU instances (each is billed while it runs)
#   MODEL_BUCKET=...        serve a GGUF from this Cloud Storage bucket, mounted read-only at /models,
#   MODEL_OBJECT=...        instead of the model baked into the image; MODEL_SHA256 is then its sha256
#   MODEL_SHA256=...        (`sha256sum FILE`), its identity in cache keys
#   PUBLIC=1                allow unauthenticated calls (default: callers need roles/run.invoker)
set -euo pipefail

PROJECT=${1:?usage: infra/deploy-cloudrun.sh PROJECT_ID [REGION]}
REGION=${2:-us-central1}
SERVICE=${SERVICE:-llm-chat}
PARALLEL=${PARALLEL:-8}
MAX_INSTANCES=${MAX_INSTANCES:-1}
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${SERVICE}/${SERVICE}:cuda-web-adapter"

# The image: llama.cpp compiled for the L4 alone (sm_89), which is much faster to build than the
# default list of GPU generations. The model is baked in unless a bucket is named.
bake=1
if [[ -n "${MODEL_BUCKET:-}" ]]; then bake=0; fi
if ! gcloud artifacts repositories describe "$SERVICE" --project="$PROJECT" --location="$REGION" >/dev/null 2>&1; then
  gcloud artifacts repositories create "$SERVICE" --project="$PROJECT" --location="$REGION" --repository-format=docker
fi
gcloud auth configure-docker "${REGION}-docker.pkg.dev" --quiet
docker build --build-arg ACCEL=cuda --build-arg MODE=web-adapter --build-arg CUDA_ARCHITECTURES=89 \
  --build-arg BAKE_MODEL="$bake" -t "$IMAGE" .
docker push "$IMAGE"

# Every layer on the GPU; the engine batches PARALLEL sequences, so Cloud Run sends an instance at most
# that many requests at once and starts another instance beyond them.
env_vars="CHAT_N_GPU_LAYERS=-1,CHAT_N_PARALLEL=${PARALLEL}"
model_flags=()
if [[ -n "${MODEL_BUCKET:-}" ]]; then
  env_vars+=",CHAT_MODEL_PATH=/models/${MODEL_OBJECT:?MODEL_OBJECT names the GGUF in MODEL_BUCKET}"
  env_vars+=",CHAT_MODEL_SHA256=${MODEL_SHA256:-}"
  model_flags=(--add-volume="name=models,type=cloud-storage,bucket=${MODEL_BUCKET},readonly=true"
               --add-volume-mount="volume=models,mount-path=/models")
fi
access=(--no-allow-unauthenticated)
if [[ "${PUBLIC:-0}" == "1" ]]; then access=(--allow-unauthenticated); fi

# GPU services need at least 4 CPUs and 16 GiB, and CPU always allocated (--no-cpu-throttling).
# --min-instances=0: nothing runs, and nothing is billed, while no request comes.
gcloud run deploy "$SERVICE" \
  --project="$PROJECT" \
  --region="$REGION" \
  --image="$IMAGE" \
  --port=8080 \
  --gpu=1 \
  --gpu-type=nvidia-l4 \
  --no-gpu-zonal-redundancy \
  --cpu=4 \
  --memory=16Gi \
  --no-cpu-throttling \
  --concurrency="$PARALLEL" \
  --min-instances=0 \
  --max-instances="$MAX_INSTANCES" \
  --timeout=300 \
  --startup-probe="httpGet.path=/health,httpGet.port=8080,periodSeconds=2,failureThreshold=60,timeoutSeconds=2" \
  --set-env-vars="$env_vars" \
  ${model_flags[@]+"${model_flags[@]}"} \
  "${access[@]}"

url=$(gcloud run services describe "$SERVICE" --project="$PROJECT" --region="$REGION" --format='value(status.url)')
echo "Deployed: $url"
echo "Try: curl -N -H \"Authorization: Bearer \$(gcloud auth print-identity-token)\" -H 'content-type: application/json' \\"
echo "       -d '{\"model\": \"SmolLM2-135M-Instruct.Q4_1\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}' \\"
echo "       $url/v1/chat/completions"
