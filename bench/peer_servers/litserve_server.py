"""LitServe 0.2.19 serving the predictor: `POST /predict`, a multipart upload of the PNG, the PNG back.

    PEER_MODEL=... PEER_THREADS=2 bench/peers/litserve-venv/bin/python bench/peer_servers/litserve_server.py PORT

As LitServe's documentation shows it: a LitAPI with setup, decode_request, predict
and encode_response, one worker on the CPU, no batching; loopback only.
"""

from __future__ import annotations

import sys

import litserve as ls
import predictor
from fastapi import Response


class StylizeAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.session = predictor.load_session()

    def decode_request(self, request):  # a multipart form: its file under "content"
        return request["content"].file.read()

    def predict(self, data: bytes) -> bytes:
        return predictor.stylize_png(self.session, data)

    def encode_response(self, output: bytes) -> Response:
        return Response(content=output, media_type="image/png")


if __name__ == "__main__":
    server = ls.LitServer(StylizeAPI(), accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False)
