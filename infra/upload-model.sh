#!/usr/bin/env bash
# Upload a GGUF to S3 for the function to fetch at cold start, and print the template parameters.
#   infra/upload-model.sh models/SmolLM2-135M-Instruct.Q4_1.gguf my-models-bucket [gguf/]
# Needs the AWS CLI and credentials that may write to the bucket.
set -euo pipefail
file=${1:?usage: $0 FILE BUCKET [PREFIX]}
bucket=${2:?usage: $0 FILE BUCKET [PREFIX]}
prefix=${3:-gguf/}
key="${prefix}$(basename "$file")"
sha=$(sha256sum "$file" | cut -d' ' -f1)
aws s3 cp "$file" "s3://${bucket}/${key}" --metadata "sha256=${sha}"
echo
echo "Deploy with:"
echo "  sam deploy --parameter-overrides ModelBucket=${bucket} ModelKey=${key} ModelSha256=${sha}"
