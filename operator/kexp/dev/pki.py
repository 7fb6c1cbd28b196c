"""Certificates, keys and tokens for the local control plane, generated once per state dir.

The stack uses one CA for the API server's serving certificate, kwok's (the API server dials
kwok as each node's kubelet, for pod logs, and verifies it against the CA) and the controller
manager's CSR signer; an RSA key pair for service-account tokens; and static bearer tokens for
the admin user. Files are written 0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names a client inside or outside the cluster may use to reach the API server.
API_SERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
#: 127.0.0.1 for this machine; 10.96.0.1 is the first IP of the service range (the
#: ``kubernetes`` Service).
API_SERVER_IPS = ("127.0.0.1", "10.96.0.1")
#: kwok's nodes advertise 127.0.0.1 as their InternalIP, the address the API server dials.
KUBELET_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class PkiPaths:
    """Where each credential of one state dir lives."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    @property
    def tokens_csv(self) -> Path:
        return self.root / "tokens.csv"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin.token"

    @property
    def kubelet_cert(self) -> Path:
        """Serving certificate of kwok's kubelet endpoints (``/containerLogs``, ...)."""
        return self.root / "kubelet.crt"

    @property
    def kubelet_key(self) -> Path:
        return self.root / "kubelet.key"

    def all_files(self) -> tuple[Path, ...]:
        """The credentials that come with the CA; the kubelet's are issued separately."""
        return (
            self.ca_cert,
            self.ca_key,
            self.apiserver_cert,
            self.apiserver_key,
            self.sa_key,
            self.sa_pub,
            self.tokens_csv,
            self.admin_token,
        )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    dns_names: tuple[str, ...],
    ips: tuple[str, ...],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def ensure_pki(paths: PkiPaths) -> None:
    """Create whatever credentials are missing; existing ones are kept (the cluster trusts them).

    The kubelet certificate is issued on its own from the existing CA, so a state dir made
    before it existed gains one without replacing the CA that running clients trust.
    """
    if not all(p.exists() for p in paths.all_files()):
        _new_ca_and_credentials(paths)
        paths.kubelet_cert.unlink(missing_ok=True)
    if not (paths.kubelet_cert.exists() and paths.kubelet_key.exists()):
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{paths.ca_key} is not an EC key; delete the pki dir to renew it")
        cert, key = _server_cert(ca_cert, ca_key, "kexp-dev-kubelet", ("localhost",), KUBELET_IPS)
        _write_private(paths.kubelet_key, _pem_key(key))
        _write_private(paths.kubelet_cert, cert.public_bytes(serialization.Encoding.PEM))


def _new_ca_and_credentials(paths: PkiPaths) -> None:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ten_years = now + dt.timedelta(days=3650)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kexp-dev-ca"))
        .issuer_name(_name("kexp-dev-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(ten_years)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_cert, server_key = _server_cert(
        ca_cert, ca_key, "kube-apiserver", API_SERVER_DNS_NAMES, API_SERVER_IPS
    )

    # Service-account tokens are signed RS256, the algorithm every client library accepts.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    admin_token = secrets.token_urlsafe(32)
    _write_private(paths.ca_key, _pem_key(ca_key))
    _write_private(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.apiserver_key, _pem_key(server_key))
    _write_private(paths.apiserver_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.sa_key, _pem_key(sa_key))
    _write_private(paths.sa_pub, sa_pub)
    _write_private(paths.admin_token, admin_token.encode())
    # token,user,uid,"groups": system:masters is cluster-admin for the local developer.
    _write_private(
        paths.tokens_csv, f'{admin_token},kexp-admin,kexp-admin,"system:masters"\n'.encode()
    )


def random_secret(length: int = 24) -> str:
    """A URL-safe random string, used for MinIO's root password."""
    return secrets.token_urlsafe(length)
