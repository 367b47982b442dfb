"""KServe 0.21.0's Python model server serving the predictor over the Open Inference Protocol.

    PEER_MODEL=... PEER_THREADS=2 bench/peers/kserve-venv/bin/python bench/peer_servers/kserve_server.py HTTP GRPC

As KServe's custom-model documentation shows it: a kserve.Model whose load()
opens the session and whose predict() takes an InferRequest and returns an
InferResponse, under ModelServer with one worker, REST and gRPC both. The PNG is
one BYTES element of the input tensor "image" and comes back as one BYTES element
of "stylized": raw bytes over gRPC; over REST the request carries it base64 in the
JSON (KServe's binary extension turns BYTES inputs into UTF-8 strings, which a PNG
is not) and the response in the binary extension (binary_data_output).

KServe binds 0.0.0.0 (uvicorn) and [::] (gRPC) with no flag to change it; the two
patches below make both listen on 127.0.0.1 only, which changes nothing else.
"""

from __future__ import annotations

import base64
import sys

import grpc.aio
import kserve
import predictor
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse
from kserve.protocol.grpc import server as grpc_server


class LoopbackConfig(uvicorn.Config):
    def __init__(self, *args, **kwargs) -> None:
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


def loopback_grpc_server(*args, **kwargs):
    server = grpc.aio.server(*args, **kwargs)
    add_port = server.add_insecure_port
    server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))
    return server


uvicorn.Config = LoopbackConfig
grpc_server.aio = type("aio", (), {"server": staticmethod(loopback_grpc_server)})


class StylizeModel(kserve.Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.session = predictor.load_session()
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        data = payload.inputs[0].as_numpy()[0]
        if isinstance(data, str):  # REST: base64 in the JSON
            data = base64.b64decode(data)
        output = InferOutput(
            name="stylized", shape=[1], datatype="BYTES", data=[predictor.stylize_png(self.session, data)]
        )
        return InferResponse(
            model_name=self.name,
            infer_outputs=[output],
            response_id=payload.id,
            use_binary_outputs=payload.use_binary_outputs,
        )


if __name__ == "__main__":
    http_port, grpc_port = int(sys.argv[1]), int(sys.argv[2])
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1).start([StylizeModel("great_wave")])
