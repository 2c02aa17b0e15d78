"""Real etcd servers for tests: a single member, a 3-member cluster, TLS, auth.

Importable helpers (no pytest here) so that ``tests/etcd/conftest.py``, the
store contract suite and multi-node tests can all start etcd the same way:

* :func:`start_single` / :func:`start_cluster` start members on free loopback
  ports with data dirs under ``/dev/shm`` (fsync is the slow part of etcd).
* Readiness is an event, not a poll: a thread drains each member's log pipe and
  sets an ``Event`` when etcd logs that it serves client traffic (which etcd
  does only once the member has joined a cluster with a leader).
* :meth:`EtcdCluster.stop` kills every member and removes every data dir; use
  the clusters as context managers.

Everything listens on 127.0.0.1 only, never on 2379/2380.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ETCD_BINARY",
    "EtcdCluster",
    "EtcdContractBackend",
    "EtcdMember",
    "TlsFiles",
    "compact",
    "enable_auth",
    "etcd_available",
    "find_leader",
    "free_ports",
    "make_tls_files",
    "shared_single",
    "start_cluster",
    "start_single",
    "stop_shared",
]

ETCD_BINARY = shutil.which("etcd")
_READY_MARKERS = ("serving client traffic", "ready to serve client requests")
START_TIMEOUT = 30.0


def etcd_available() -> bool:
    return ETCD_BINARY is not None


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    if {2379, 2380} & set(ports):  # never collide with a system etcd
        return free_ports(n)
    return ports


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by :func:`make_tls_files`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA, a server cert for 127.0.0.1/localhost and a client cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("corral test CA"))
        .issuer_name(name("corral test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usages: list[x509.ObjectIdentifier]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server_cert, server_key = leaf("127.0.0.1", both)
    client_cert, client_key = leaf("corral-client", [ExtendedKeyUsageOID.CLIENT_AUTH])
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert)
    files.server_key.write_bytes(server_key)
    files.client_cert.write_bytes(client_cert)
    files.client_key.write_bytes(client_key)
    for path in (files.server_key, files.client_key):
        path.chmod(0o600)
    return files


def _scratch_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass
class EtcdMember:
    """One etcd process. ``start()`` blocks until it serves clients (or raises)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    initial_cluster: str
    tls: TlsFiles | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None
    _started_once: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _argv(self) -> list[str]:
        assert ETCD_BINARY is not None
        client_url = f"{self.scheme}://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "existing" if self._started_once else "new",
            "--initial-cluster-token", "corral-test",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "info",
        ]  # fmt: skip
        if self.tls:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        return argv

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"etcd member {self.name} is already running")
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._started_once = True
        self._reader = threading.Thread(
            target=self._drain, args=(self.proc, self._ready), name=f"etcd-{self.name}-log"
        )
        self._reader.start()

    def _drain(self, proc: subprocess.Popen[bytes], ready: threading.Event) -> None:
        # Draining also keeps etcd from blocking on a full stderr pipe.
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if any(marker in line for marker in _READY_MARKERS):
                ready.set()
        ready.set()  # EOF: the process died; wake the waiter so it can report it

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(
                f"etcd member {self.name} not ready after {timeout} s; log tail:\n"
                + "\n".join(self.log[-20:])
            )
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(
                f"etcd member {self.name} exited during start; log tail:\n"
                + "\n".join(self.log[-20:])
            )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the process (SIGKILL by default) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGSTOP:
                # Block until every thread has stopped (the kernel reports the
                # completed group stop to the parent), so nothing the test does
                # next can still be served by this member.
                os.waitpid(self.proc.pid, os.WUNTRACED)
                return
            self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Kill if running, then start again on the same ports and data dir."""
        self.kill()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    """A set of members; stop() kills them all and removes the scratch dir."""

    members: list[EtcdMember]
    root: Path
    tls: TlsFiles | None = None
    user: str | None = None
    password: str | None = None

    @property
    def endpoints(self) -> str:
        """``host:port,host:port`` of every member."""
        return ",".join(m.endpoint for m in self.members)

    def url(self, prefix: str = "/corral", *, with_auth: bool = True) -> str:
        """An ``etcd://`` URL for :func:`corral.store.etcd.client.open_etcd_store`."""
        from urllib.parse import quote, urlencode

        userinfo = ""
        if with_auth and self.user is not None:
            userinfo = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@"
        query = ""
        if self.tls:
            query = "?" + urlencode(
                {
                    "protocol": "https",
                    "cacert": str(self.tls.ca),
                    "cert": str(self.tls.client_cert),
                    "key": str(self.tls.client_key),
                }
            )
        return f"etcd://{userinfo}{self.endpoints}{prefix}{query}"

    def stop(self) -> None:
        for m in self.members:
            m.resume()
            m.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_cluster(size: int, tls: bool) -> EtcdCluster:
    if ETCD_BINARY is None:
        raise RuntimeError("etcd binary not found on PATH (run scripts/install-etcd)")
    root = Path(tempfile.mkdtemp(prefix="corral-etcd-", dir=_scratch_root()))
    tls_files = make_tls_files(root) if tls else None
    ports = free_ports(2 * size)
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
    members = [
        EtcdMember(
            name=n,
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            data_dir=root / n,
            initial_cluster=initial,
            tls=tls_files,
        )
        for i, n in enumerate(names)
    ]
    return EtcdCluster(members=members, root=root, tls=tls_files)


def start_cluster(size: int = 3, *, tls: bool = False) -> EtcdCluster:
    """Start ``size`` members on distinct loopback ports; return when all serve clients."""
    cluster = _make_cluster(size, tls)
    try:
        for m in cluster.members:  # all must be up before any can elect a leader
            m.spawn()
        for m in cluster.members:
            m.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_single(*, tls: bool = False) -> EtcdCluster:
    """One member, ready to serve."""
    return start_cluster(1, tls=tls)


def _grpc_channel(member: EtcdMember) -> object:
    import grpc  # type: ignore[import-untyped]

    if member.tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=member.tls.ca.read_bytes(),
            private_key=member.tls.client_key.read_bytes(),
            certificate_chain=member.tls.client_cert.read_bytes(),
        )
        return grpc.secure_channel(member.endpoint, creds)
    return grpc.insecure_channel(member.endpoint)


@contextlib.contextmanager
def _channel(member: EtcdMember) -> Iterator[object]:
    ch = _grpc_channel(member)
    try:
        yield ch
    finally:
        ch.close()  # type: ignore[attr-defined]


def find_leader(cluster: EtcdCluster, timeout: float = 10.0) -> EtcdMember:
    """The running member that every running member names as leader."""
    import grpc
    from aetcd import rpc

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        ids: dict[int, EtcdMember] = {}
        leaders: set[int] = set()
        for m in cluster.members:
            if not m.running:
                continue
            try:
                with _channel(m) as ch:
                    st = rpc.MaintenanceStub(ch).Status(rpc.StatusRequest(), timeout=2)
            except grpc.RpcError as exc:
                last_error = exc
                continue
            ids[st.header.member_id] = m
            leaders.add(st.leader)
        if len(leaders) == 1:
            (lid,) = leaders
            if lid in ids:
                return ids[lid]
        # An election is in progress: the next Status call blocks on the network,
        # which paces this loop.
        threading.Event().wait(0.05)
    raise RuntimeError(f"no agreed leader within {timeout} s (last error: {last_error})")


def enable_auth(cluster: EtcdCluster, password: str, user: str = "root") -> None:
    """Create ``user`` with the root role and turn authentication on (as ``etcdctl auth enable``)."""
    from aetcd import rpc

    member = next(m for m in cluster.members if m.running)
    with _channel(member) as ch:
        auth = rpc.AuthStub(ch)
        auth.UserAdd(rpc.AuthUserAddRequest(name=user, password=password), timeout=5)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=user, role="root"), timeout=5)
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)
    cluster.user, cluster.password = user, password


# --- one etcd shared by a whole test session -----------------------------------

_shared: dict[str, EtcdCluster] = {}


def shared_single() -> EtcdCluster:
    """A single etcd started on first use and kept for the session.

    Tests that share it must use their own key prefix. :func:`stop_shared`
    (called by a session fixture) kills it; ``atexit`` is the backstop.
    """
    cluster = _shared.get("single")
    if cluster is None:
        import atexit

        cluster = _shared["single"] = start_single()
        atexit.register(stop_shared)
    return cluster


def stop_shared() -> None:
    for name in list(_shared):
        _shared.pop(name).stop()


def compact(cluster: EtcdCluster, revision: int) -> None:
    """Discard history up to ``revision`` (physically, so watches see it at once)."""
    from aetcd import rpc

    member = next(m for m in cluster.members if m.running)
    with _channel(member) as ch:
        metadata: tuple[tuple[str, str], ...] = ()
        if cluster.user is not None:
            token = (
                rpc.AuthStub(ch)
                .Authenticate(
                    rpc.AuthenticateRequest(name=cluster.user, password=cluster.password),
                    timeout=5,
                )
                .token
            )
            metadata = (("token", token),)
        rpc.KVStub(ch).Compact(
            rpc.CompactionRequest(revision=revision, physical=True), timeout=10, metadata=metadata
        )


class EtcdContractBackend:
    """The store contract suite's etcd backend (``tests/contract/conftest.py``).

    All tests share :func:`shared_single`; each test gets a fresh key prefix, so
    its clients see only its own keys.
    """

    def __init__(self) -> None:
        import uuid

        self.cluster = shared_single()
        self.prefix = f"/corral-contract/{uuid.uuid4().hex[:12]}"
        self.clients: list[object] = []

    async def open(self) -> object:
        from corral.store.etcd.client import open_etcd_store

        store = await open_etcd_store(self.cluster.url(self.prefix), timeout=10)
        self.clients.append(store)
        return store

    async def let_time_pass(self, seconds: float) -> None:
        # A real server keeps real time: nothing to drive. The test then awaits the
        # event the passing time causes (a lease's expiry), under its own deadline.
        return None

    async def compact(self, revision: int) -> None:
        import asyncio

        await asyncio.to_thread(compact, self.cluster, revision)

    async def __aenter__(self) -> EtcdContractBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for store in self.clients:
            await store.close()  # type: ignore[attr-defined]
