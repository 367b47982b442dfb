"""Access control through the real server: tokens, TLS, mutual TLS, open health, and refusing to run exposed."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from client import StylizeClient
from server.auth import load_tokens, token_matches
from server.config import load_config
from tests.conftest import ROOT, RunningServer, encode, free_port, photo, start_server, stop_server

TOKEN = "correct-horse-battery-staple-1234"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, all from that CA."""
    folder = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Stylize test CA",
        cwd=folder,
    )
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=folder,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *extra,
            cwd=folder,
        )
    return folder


@pytest.fixture(scope="module")
def guarded(model_repo: Path, pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """TLS and tokens (from a file, with a comment and a blank line)."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"# operators\n{TOKEN}\n\nanother-token-that-is-long-enough\n")
    env = {
        "STYLIZE_TLS_CERT": str(pki / "server.pem"),
        "STYLIZE_TLS_KEY": str(pki / "server.key"),
        "STYLIZE_TOKENS_FILE": str(tokens),
    }
    running = start_server(model_repo, tmp_path_factory.mktemp("log") / "server.log", env=env, tls_ca=pki / "ca.pem")
    yield running
    stop_server(running)


def client(server: RunningServer, pki: Path, **kwargs: object) -> StylizeClient:
    return StylizeClient(server.target, timeout_s=30, tls_ca=(pki / "ca.pem").read_bytes(), **kwargs)  # type: ignore[arg-type]


def test_a_valid_token_over_tls_is_served(guarded: RunningServer, pki: Path) -> None:
    with client(guarded, pki, token=TOKEN) as stylize:
        assert stylize.stylize(encode(photo()), "tiny").width == 96


@pytest.mark.parametrize("token", [None, "wrong-token-of-plenty-of-length", TOKEN[:-1]])
def test_no_token_or_a_wrong_one_is_unauthenticated(guarded: RunningServer, pki: Path, token: str | None) -> None:
    with client(guarded, pki, token=token) as stylize, pytest.raises(grpc.RpcError) as caught:
        stylize.list_models()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(guarded: RunningServer, pki: Path) -> None:
    with client(guarded, pki) as stylize:
        assert stylize.health() == "SERVING"


def test_the_http_port_has_the_same_tls_and_tokens(guarded: RunningServer, pki: Path) -> None:
    assert guarded.http_url.startswith("https://")
    with httpx.Client(
        base_url=guarded.http_url, verify=ssl.create_default_context(cafile=pki / "ca.pem"), timeout=30
    ) as http:
        for path in ("/healthz", "/readyz", "/", "/openapi.json"):  # open, like gRPC health
            assert http.get(path).status_code == 200, path
        for headers, words in (({}, "needs a token"), ({"authorization": "Bearer wrong-token-123456"}, "not valid")):
            refused = http.get("/v1/models", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["code"] == "UNAUTHENTICATED" and words in refused.json()["message"]
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert [m["name"] for m in http.get("/v1/models", headers=bearer).json()["models"]] == ["adain", "tiny", "trio"]
        files = [
            ("content", ("c.png", encode(photo()), "image/png")),
            ("style", ("s.png", encode(photo()), "image/png")),
        ]
        no_jobs = http.post("/v1/jobs", files=files, headers=bearer)  # STYLIZE_LOCAL_WORKERS=0: no job service
        assert no_jobs.status_code == 503 and no_jobs.json()["code"] == "UNAVAILABLE"
    with pytest.raises(httpx.TransportError):  # plaintext callers get no answer here either
        httpx.get(guarded.http_url.replace("https://", "http://") + "/healthz", timeout=5)


def test_plaintext_callers_cannot_connect(guarded: RunningServer) -> None:
    with StylizeClient(guarded.target, timeout_s=5, token=TOKEN) as plain, pytest.raises(grpc.RpcError) as caught:
        plain.list_models()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(model_repo: Path, pki: Path, tmp_path: Path) -> None:
    env = {
        "STYLIZE_TLS_CERT": str(pki / "server.pem"),
        "STYLIZE_TLS_KEY": str(pki / "server.key"),
        "STYLIZE_TLS_CLIENT_CA": str(pki / "ca.pem"),
    }
    server = start_server(
        model_repo,
        tmp_path / "server.log",
        env=env,
        tls_ca=pki / "ca.pem",
        tls_client=(pki / "client.pem", pki / "client.key"),
    )
    try:
        with client(
            server, pki, tls_cert=(pki / "client.pem").read_bytes(), tls_key=(pki / "client.key").read_bytes()
        ) as stylize:
            assert [m.name for m in stylize.list_models()] == ["adain", "tiny", "trio"]
        with client(server, pki) as anonymous, pytest.raises(grpc.RpcError) as caught:
            anonymous.list_models()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        trusting = ssl.create_default_context(cafile=pki / "ca.pem")
        with pytest.raises(httpx.TransportError):  # no client certificate: the TLS handshake fails
            httpx.get(server.http_url + "/v1/models", verify=trusting, timeout=5)
        trusting.load_cert_chain(pki / "client.pem", pki / "client.key")
        assert httpx.get(server.http_url + "/v1/models", verify=trusting, timeout=30).status_code == 200
    finally:
        stop_server(server)


def test_an_exposed_address_without_tls_or_tokens_refuses_to_start(model_repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STYLIZE_LOCAL_WORKERS": "0", "STYLIZE_HOST": "0.0.0.0"}
    command = [
        sys.executable,
        "-m",
        "server",
        "--models",
        str(model_repo),
        "--port",
        str(free_port()),
        "--metrics-port",
        "0",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "STYLIZE_ALLOW_INSECURE" in result.stderr and "STYLIZE_TLS_CERT" in result.stderr


def test_tokens_are_checked_in_constant_time_against_digests(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# none here\n")
    digests = load_tokens(path, "first-token-long-enough,second-token-long-enough")
    assert len(digests) == 2 and all(len(d) == 32 for d in digests)
    assert token_matches("second-token-long-enough", digests) and not token_matches("second", digests)
    with pytest.raises(ValueError, match="at least 16 characters"):
        load_tokens(None, "short")


def test_metrics_listen_on_loopback_by_default() -> None:
    assert load_config([], environ={}).metrics_host == "127.0.0.1"
