# The API: gRPC + ONNX Runtime on the CUDA execution provider. No torch in this image.
#   docker build -f deploy/api.Dockerfile -t stylize-api .
# tests/deploy/test_images.py replays these steps without Docker (a venv from the same requirement list, the
# files each COPY takes through .dockerignore, the stubs made by the same command) and starts the server
# from the result; it refuses a step it does not know, so teach it any step added here.

# The generated gRPC code. grpcio-tools is a build tool: it stays in this stage.
FROM python:3.12.12-slim-trixie AS stubs
WORKDIR /build
COPY pyproject.toml ./
COPY deploy/requirements.py deploy/
RUN python deploy/requirements.py --build-tools > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY protos/ protos/
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/stylize/v1/stylize.proto \
 && touch stylize/__init__.py stylize/v1/__init__.py

# cuDNN and the CUDA runtime for onnxruntime-gpu; the host gives the driver (NVIDIA Container Toolkit).
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONPATH=/app
# The distribution's Python 3.12; the base image's tag pins the release (see .hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, so code changes do not reinstall them: the base, `serve` and `queue` of pyproject.toml.
COPY pyproject.toml ./
COPY deploy/requirements.py deploy/
RUN python deploy/requirements.py api > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY --from=stubs /build/stylize/ stylize/
COPY core/ core/
COPY server/ server/
COPY client/ client/

RUN groupadd --system --gid 10001 stylize \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home stylize
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
ENV STYLIZE_HOST=0.0.0.0 STYLIZE_METRICS_HOST=0.0.0.0 STYLIZE_MODELS=/models STYLIZE_DEVICE=cuda
EXPOSE 50051 8080 9464
CMD ["python", "-m", "server"]
