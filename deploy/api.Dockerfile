# The API: gRPC + ONNX Runtime on the CUDA execution provider. No torch in this image.
#   docker build -f deploy/api.Dockerfile -t stylize-api .
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONPATH=/app
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
g = p['optional-dependencies']; print('\n'.join(p['dependencies'] + g['serve'] + g['queue']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt grpcio-tools==1.85.1

COPY protos/ protos/
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/stylize/v1/stylize.proto \
 && touch stylize/__init__.py stylize/v1/__init__.py \
 && pip uninstall -y grpcio-tools
COPY core/ core/
COPY server/ server/
COPY client/ client/

RUN useradd --system --uid 10001 stylize
USER stylize
ENV STYLIZE_HOST=0.0.0.0 STYLIZE_METRICS_HOST=0.0.0.0 STYLIZE_MODELS=/models STYLIZE_DEVICE=cuda
EXPOSE 50051 9464
CMD ["python", "-m", "server"]
