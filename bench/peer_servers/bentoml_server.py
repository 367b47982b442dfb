"""BentoML 1.4.40 serving the predictor: `POST /stylize`, a multipart upload of the PNG, the PNG back.

    cd bench/peer_servers && PEER_MODEL=... PEER_THREADS=2 \
        ../peers/bentoml-venv/bin/bentoml serve bentoml_server:Stylize --host 127.0.0.1 --port PORT

As BentoML's documentation shows it: a @bentoml.service class loading the model
in __init__, one @bentoml.api taking and returning a PIL image (BentoML decodes
the upload with Pillow and encodes the PNG it returns), one worker.
"""

from __future__ import annotations

import bentoml
import predictor
from PIL.Image import Image


@bentoml.service(workers=1, traffic={"timeout": 600})
class Stylize:
    def __init__(self) -> None:
        self.session = predictor.load_session()

    @bentoml.api
    def stylize(self, image: Image) -> Image:
        return predictor.run(self.session, image)
