"""gRPC status code -> HTTP status, and the JSON error body: `{"code": "INVALID_ARGUMENT", "message": ...}`.

The mapping is the standard one (google/rpc/code.proto, as grpc-gateway and
Cloud APIs apply it); 413 (a body over the limit) is the only HTTP-only answer.
"""

from __future__ import annotations

import grpc
from starlette.responses import JSONResponse

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,  # the client went away
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
PAYLOAD_TOO_LARGE = 413  # RESOURCE_EXHAUSTED, refused by size before the body is read


def error_response(
    code: grpc.StatusCode, message: str, request_id: str = "", status: int | None = None
) -> JSONResponse:
    headers = {"x-request-id": request_id} if request_id else {}
    if code is grpc.StatusCode.UNAUTHENTICATED:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(
        {"code": code.name, "message": message}, status_code=status or HTTP_STATUS[code], headers=headers
    )
