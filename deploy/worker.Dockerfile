# A Gatys worker: PyTorch with CUDA (the wheels carry their CUDA libraries; the host gives the driver).
#   docker build -f deploy/worker.Dockerfile -t stylize-worker .
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app
WORKDIR /app
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
g = p['optional-dependencies']; print('\n'.join(p['dependencies'] + g['torch'] + g['queue']))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt grpcio-tools==1.85.1

COPY protos/ protos/
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/stylize/v1/stylize.proto \
 && touch stylize/__init__.py stylize/v1/__init__.py \
 && pip uninstall -y grpcio-tools
COPY core/ core/
COPY server/ server/
COPY training/ training/

RUN useradd --system --uid 10001 stylize
USER stylize
CMD ["python", "-m", "server.jobs.worker"]
