"""Domain errors, and the one place that maps them to gRPC status codes.

Domain code raises these (or the codec's ImageDecodeError); the servicer turns
them into a status with `status_for`. Messages say what the caller should change.
"""

from __future__ import annotations

import grpc

from core.codec import ImageDecodeError, ImageTooLarge


class ServiceError(Exception):
    """Base of the errors a caller can act on."""


class InvalidRequest(ServiceError):
    """A field is missing, out of range or inconsistent."""


class UnknownModel(ServiceError):
    """No model (or version) of that name is loaded."""


class QueueFull(ServiceError):
    """Admission refused: the server is at its configured capacity."""


class Draining(ServiceError):
    """The server is shutting down and takes no new work."""


class DeadlineExpired(ServiceError):
    """The caller's deadline passed before the work could start."""


class JobNotFound(ServiceError):
    """No job with that id (never submitted, or dropped after its retention time)."""


class ServiceUnavailable(ServiceError):
    """A dependency (the job queue, the workers) cannot take the request now."""


class MessageTooLarge(ServiceError):
    """A request body over STYLIZE_MAX_MESSAGE_BYTES (gRPC refuses those itself; the HTTP door raises this)."""


class ClientGone(ServiceError):
    """The caller closed the connection before the answer (gRPC cancels the handler; the HTTP door raises this)."""


class NotReady(ServiceError):
    """What was asked for does not exist yet: a job's result before it succeeded, a preview before the first."""


STATUS: dict[type[Exception], grpc.StatusCode] = {
    ImageTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    ImageDecodeError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    MessageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.FAILED_PRECONDITION,
    ClientGone: grpc.StatusCode.CANCELLED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    ServiceUnavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for a domain error, or None for an unexpected exception (a bug: INTERNAL)."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind], str(exc)
    return None
