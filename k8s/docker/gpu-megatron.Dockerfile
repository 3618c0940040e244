# kura-gpu-megatron: multi-node pretraining pods (torchrun + Megatron-LM's pretrain_gpt.py) with DVC for the
# init container that pulls the frozen dataset.
# Build from the repository root:  docker build -f k8s/docker/gpu-megatron.Dockerfile -t ghcr.io/your-org/kura-gpu-megatron:0.1.0 .
FROM nvcr.io/nvidia/pytorch:25.09-py3
ENV PIP_NO_CACHE_DIR=1 DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 AWS_EC2_METADATA_DISABLED=true
RUN git clone --depth 1 --branch core_v0.16.1 https://github.com/NVIDIA/Megatron-LM.git /opt/Megatron-LM \
    && pip install -e /opt/Megatron-LM "dvc[s3]==3.67.1"
WORKDIR /opt/kura
COPY pyproject.toml README.md dvc.yaml ./
COPY kura kura
RUN pip install --no-deps -e .
CMD ["python", "-c", "import megatron.core; print(megatron.core.__version__)"]
