# kura-gpu-vllm: synthetic generation pods. vLLM's CUDA image plus kura's generation entry point
# (python -m kura.synth.vllm_worker REQUEST RESULT), which is the same code the local CPU backend runs.
# Build from the repository root:  docker build -f k8s/docker/gpu-vllm.Dockerfile -t ghcr.io/your-org/kura-gpu-vllm:0.1.0 .
FROM vllm/vllm-openai:v0.32.0
ENV PIP_NO_CACHE_DIR=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
WORKDIR /opt/kura
# only what the worker imports besides vLLM and torch (which the base image brings, built for CUDA)
RUN pip install fsspec==2026.9.0 s3fs==2026.9.0 pydantic==2.14.3 dagster-pipes==1.13.27
COPY pyproject.toml README.md ./
COPY kura kura
RUN pip install --no-deps -e . && python -c "import kura.synth.vllm_worker"
ENTRYPOINT []
CMD ["python", "-m", "kura.synth.vllm_worker", "--help"]
