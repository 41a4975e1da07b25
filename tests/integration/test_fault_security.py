"""Token auth on every method (health stays open), TLS, and mutual TLS, with throwaway
CAs and certificates made by ``cryptography``."""

import datetime
import ipaddress

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ps import ServerConfig, ShardServer
from ps.errors import UnauthenticatedError, UnavailableError
from ps.protocol.channel import SERVICE_NAME
from worker import Client

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

TOKEN = "s3cret-token-for-tests"
METHODS = ["Register", "Leave", "CreateTable", "Push", "Pull", "PushPull", "Status", "PushRows", "PullRows",
           "Heartbeat", "Checkpoint", "Shutdown"]
BAD_METADATA = {
    "no token": (),
    "wrong token, same length": (("authorization", "Bearer " + "x" * len(TOKEN)),),
    "token of another length": (("authorization", "Bearer short"),),
    "token without Bearer": (("authorization", TOKEN),),
    "two tokens": (("authorization", "Bearer " + TOKEN), ("authorization", "Bearer wrong")),
}


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, cert, key):
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


def _builder(subject, issuer, public_key):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)))


class CA:
    def __init__(self, tmp_path, name):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (_builder(_name(name), _name(name), self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.dir = tmp_path
        self.pem, _ = _write(tmp_path / name, self.cert, self.key)

    def issue(self, name, server):
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (_builder(_name(name), self.cert.subject, key.public_key())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return _write(self.dir / name, builder.sign(self.key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca, other = CA(tmp, "ca"), CA(tmp, "other-ca")
    return {"ca": ca.pem, "server": ca.issue("server", True), "client": ca.issue("client", False),
            "stranger": other.issue("stranger", False)}


@pytest.fixture(scope="module")
def token_server():
    with ShardServer(ServerConfig(port=0, auth_token=TOKEN)) as server:
        yield server


@pytest.mark.parametrize("metadata", sorted(BAD_METADATA))
def test_every_method_needs_the_token(token_server, metadata):
    with grpc.insecure_channel(token_server.address) as ch:
        for method in METHODS:
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(f"/{SERVICE_NAME}/{method}")(b"", timeout=5, metadata=BAD_METADATA[metadata])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert TOKEN not in (info.value.details() or "")
        reflection = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as info:
            list(reflection(iter([b""]), timeout=5, metadata=BAD_METADATA[metadata]))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # health stays open, and the refused Shutdown calls stopped nothing
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not token_server.wait(0)


def test_the_right_token_works_end_to_end(token_server):
    with Client([token_server.address], token=TOKEN) as ps:
        ps.create("w", shape=(8,), lr=1.0)
        ps.push({"w": np.ones(8, np.float32)})
        np.testing.assert_array_equal(ps.pull("w")["w"], -np.ones(8, np.float32))
        assert TOKEN not in repr(ps)
    with pytest.raises(UnauthenticatedError):
        Client([token_server.address], token="wrong", connect_timeout_s=5).connect()
    assert TOKEN not in repr(token_server.config)


def test_plaintext_client_cannot_talk_to_a_tls_server(pki):
    cert, key = pki["server"]
    with ShardServer(ServerConfig(port=0, tls_cert=cert, tls_key=key)) as server:
        with Client([server.address], tls_ca=pki["ca"]) as ps:    # TLS client: fine
            ps.create("w", shape=(4,), lr=1.0)
            assert ps.pull("w")["w"].shape == (4,)
        with pytest.raises(UnavailableError):
            Client([server.address], connect_timeout_s=1.5).connect()


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(pki):
    cert, key = pki["server"]
    cfg = ServerConfig(port=0, tls_cert=cert, tls_key=key, tls_client_ca=pki["ca"], auth_token=TOKEN)
    with ShardServer(cfg) as server:
        client_cert, client_key = pki["client"]
        with Client([server.address], tls_ca=pki["ca"], tls_cert=client_cert, tls_key=client_key,
                    token=TOKEN) as ps:
            ps.create("w", shape=(4,), lr=1.0)
        stranger_cert, stranger_key = pki["stranger"]
        with pytest.raises(UnavailableError):
            Client([server.address], tls_ca=pki["ca"], tls_cert=stranger_cert, tls_key=stranger_key,
                   token=TOKEN, connect_timeout_s=1.5).connect()
        with pytest.raises(UnavailableError):     # no client certificate at all
            Client([server.address], tls_ca=pki["ca"], token=TOKEN, connect_timeout_s=1.5).connect()
