# kura-cpu: the Dagster code location (user-code deployment) and the per-step pods of k8s_job_executor.
# Build from the repository root:  docker build -f k8s/docker/cpu.Dockerfile -t ghcr.io/your-org/kura-cpu:0.1.0 .
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kura
# the measured pin set (CPU torch and vLLM's CPU build included): the same environment as CI and laptops
COPY requirements/constraints-cpu.txt requirements/constraints-cpu.txt
RUN pip install --no-deps -r requirements/constraints-cpu.txt \
    && pip uninstall -y torchvision torchaudio torchcodec || true
COPY pyproject.toml README.md dvc.yaml ./
COPY kura kura
COPY resources resources
COPY assets assets
COPY pipelines pipelines
RUN pip install --no-deps -e . && python -c "import pipelines.definitions"
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "pipelines.definitions", "-h", "0.0.0.0", "-p", "3030"]
