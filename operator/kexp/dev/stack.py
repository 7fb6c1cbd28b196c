"""The local stack: a real control plane, MinIO and Prometheus on loopback, from upstream binaries.

``Stack.up()`` starts, under one state directory, etcd, kube-apiserver (RBAC, service-account
tokens, CRD schema and CEL enforcement), kube-controller-manager (the job controller and the
garbage collector among its controllers), kube-scheduler, kwok (simulated nodes, one pool
with ``nvidia.com/gpu`` capacity, serving the nodes' kubelet endpoints over TLS so pod logs
work through the API server), MinIO (default bucket, credentials stored as a Secret) and
Prometheus (targets added at run time). It is idempotent: services already running and
healthy are kept. ``Stack.down()`` stops every process the stack started, found by pid file
and, as a safety net, by the state dir in their command lines.

The pytest fixtures and ``kexp dev`` both use this module; there is no second implementation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from kexp.api import contract
from kexp.dev import cluster, pki, processes, prometheus, realnode, toolchain
from kexp.storage.s3 import S3Credentials

DEFAULT_PORT_BASE: Final = 17400
STATE_FORMAT: Final = 1
#: Service-account issuer; pods would see it as the in-cluster API address.
SA_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR: Final = "10.96.0.0/16"
POD_CIDR: Final = "10.244.0.1/16"

Log = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not be brought up or inspected; the message says what to do."""


def default_state_dir() -> Path:
    """``$KEXP_DEV_STATE`` or ``$XDG_STATE_HOME/kexp/dev`` (``~/.local/state/kexp/dev``)."""
    explicit = os.environ.get("KEXP_DEV_STATE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "kexp" / "dev"


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one stack, at fixed offsets from a base so they are predictable.

    kwok's server listens on ``kwok_node``, the kubelet port its nodes advertise, since the
    API server dials that port for logs; ``kwok`` is unused but kept so later ports stay put.
    """

    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    kwok_node: int
    minio: int
    prometheus: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        names = list(cls.__dataclass_fields__)
        return cls(**{name: base + offset for offset, name in enumerate(names)})


@dataclass(frozen=True)
class StackConfig:
    """What a state dir remembers between runs (``stack.json``, mode 0600)."""

    port_base: int
    minio_user: str
    minio_password: str
    format: int = STATE_FORMAT

    @property
    def ports(self) -> Ports:
        return Ports.from_base(self.port_base)


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ports: tuple[int, ...]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    #: Started only once the API server is ready and kwok's CRDs are established.
    needs_crds: bool = False


@dataclass
class UpReport:
    """Timings of one ``up``: seconds until the API server was ready, and until all was."""

    api_ready_s: float
    total_s: float
    started: list[str]
    kept: list[str]
    node: realnode.NodeReport | None = None


def _http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    req = urllib.request.Request(url)  # noqa: S310 - loopback URLs built here
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2, context=context) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _insecure_context() -> ssl.SSLContext:
    # The controller manager and scheduler serve /healthz on certificates they generate for
    # themselves; only liveness is read from them, never data.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Stack:
    """The local stack rooted at one state dir."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).absolute()
        self.pki = pki.PkiPaths(self.state_dir / "pki")

    # ---- paths -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        """Plain-named links to the pinned tools (``kubectl``, ``helm``, ...), for PATH."""
        return self.state_dir / "bin"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    @property
    def prometheus_targets(self) -> Path:
        return self.state_dir / "prometheus" / "targets"

    # ---- configuration -----------------------------------------------------------------
    def load_config(self) -> StackConfig | None:
        """The saved config, None for a fresh state dir; StackError when it is corrupt."""
        if not self.config_path.exists():
            return None
        try:
            data = json.loads(self.config_path.read_text())
            config = StackConfig(**data)
            if config.format != STATE_FORMAT:
                raise ValueError(f"state format {config.format}, expected {STATE_FORMAT}")
            return config
        except (ValueError, TypeError) as exc:
            raise StackError(
                f"state dir {self.state_dir} is corrupt ({self.config_path.name}: {exc}); "
                f"run `kexp dev down --purge` to stop everything and start from scratch"
            ) from exc

    def _save_config(self, config: StackConfig) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(config), fh, indent=2)
        tmp.replace(self.config_path)

    def _resolve_config(self, port_base: int | None) -> StackConfig:
        config = self.load_config()
        if config is None:
            config = StackConfig(
                port_base=port_base or DEFAULT_PORT_BASE,
                minio_user="kexp-admin",
                minio_password=pki.random_secret(),
            )
        elif port_base is not None and port_base != config.port_base:
            if self.running_services():
                raise StackError(
                    f"the stack in {self.state_dir} already runs on port base "
                    f"{config.port_base}; run `kexp dev down` before changing it"
                )
            config = StackConfig(port_base, config.minio_user, config.minio_password)
        self._save_config(config)
        return config

    def config(self) -> StackConfig:
        """The config of a stack that has been brought up at least once."""
        config = self.load_config()
        if config is None:
            raise StackError(f"no stack in {self.state_dir}; run `kexp dev up` first")
        return config

    # ---- handles for clients ------------------------------------------------------------
    def api_url(self, config: StackConfig | None = None) -> str:
        return f"https://127.0.0.1:{(config or self.config()).ports.apiserver}"

    def s3_credentials(self, config: StackConfig | None = None) -> S3Credentials:
        config = config or self.config()
        return S3Credentials(
            endpoint=f"http://127.0.0.1:{config.ports.minio}",
            access_key=config.minio_user,
            secret_key=config.minio_password,
        )

    def prometheus(self, config: StackConfig | None = None) -> prometheus.Prometheus:
        config = config or self.config()
        return prometheus.Prometheus(
            url=f"http://127.0.0.1:{config.ports.prometheus}", targets_dir=self.prometheus_targets
        )

    def env(self) -> dict[str, str]:
        """Variables a shell needs to use this stack (``kexp dev env`` prints them)."""
        config = self.config()
        creds = self.s3_credentials(config)
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "KEXP_DEV_STATE": str(self.state_dir),
            "KEXP_S3_ENDPOINT": creds.endpoint,
            contract.S3_ENDPOINT_KEY: creds.endpoint,
            contract.S3_ACCESS_KEY: creds.access_key,
            contract.S3_SECRET_KEY: creds.secret_key,
            "KEXP_PROMETHEUS_URL": self.prometheus(config).url,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # ---- services ----------------------------------------------------------------------
    def _services(self, config: StackConfig, tools: toolchain.InstallReport) -> list[Service]:
        p = config.ports
        sd = self.state_dir
        token = self.pki.admin_token.read_text().strip()
        ca = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        insecure = _insecure_context()
        etcd_url = f"http://127.0.0.1:{p.etcd}"
        peer_url = f"http://127.0.0.1:{p.etcd_peer}"
        kubeconfig = str(self.kubeconfig)
        kubelet_client = realnode.apiserver_kubelet_client_paths(self.pki)
        return [
            Service(
                "etcd",
                [
                    str(tools.path("etcd")),
                    "--name=kexp-dev",
                    f"--data-dir={sd / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=kexp-dev={peer_url}",
                    # A throw-away dev store: fsync per write would dominate on slow disks.
                    "--unsafe-no-fsync=true",
                    "--quota-backend-bytes=4294967296",
                    "--log-level=warn",
                ],
                (p.etcd, p.etcd_peer),
                lambda: _http_ok(f"{etcd_url}/health"),
            ),
            Service(
                "kube-apiserver",
                [
                    str(tools.path("kube-apiserver")),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={p.apiserver}",
                    f"--cert-dir={sd / 'apiserver'}",
                    f"--tls-cert-file={self.pki.apiserver_cert}",
                    f"--tls-private-key-file={self.pki.apiserver_key}",
                    f"--client-ca-file={self.pki.ca_cert}",
                    f"--token-auth-file={self.pki.tokens_csv}",
                    "--authorization-mode=RBAC",
                    f"--service-account-issuer={SA_ISSUER}",
                    f"--service-account-key-file={self.pki.sa_pub}",
                    f"--service-account-signing-key-file={self.pki.sa_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
                    "DefaultStorageClass,ResourceQuota,PodSecurity",
                    # Endpoints must not be loopback; nothing in the local stack needs them.
                    "--endpoint-reconciler-type=none",
                    "--allow-privileged=true",
                    # KEXP_DEV_PROFILING=1 serves /debug/pprof, to profile under a benchmark.
                    f"--profiling={'true' if os.environ.get('KEXP_DEV_PROFILING') else 'false'}",
                    "--event-ttl=2h",
                    # kwok's nodes advertise only an InternalIP; the API server checks the
                    # kubelet (kwok) serving certificate against the stack's CA.
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--kubelet-certificate-authority={self.pki.ca_cert}",
                    # A real kubelet (`--real-node`) authenticates the API server; kwok
                    # ignores the certificate.
                    f"--kubelet-client-certificate={kubelet_client[0]}",
                    f"--kubelet-client-key={kubelet_client[1]}",
                    # The real node's placement policy is a MutatingAdmissionPolicy, beta
                    # (and off by default) in 1.34.
                    "--feature-gates=MutatingAdmissionPolicy=true",
                    "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
                ],
                (p.apiserver,),
                lambda: _http_ok(
                    f"https://127.0.0.1:{p.apiserver}/readyz", context=ca, token=token
                ),
            ),
            Service(
                "kube-controller-manager",
                [
                    str(tools.path("kube-controller-manager")),
                    f"--kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p.controller_manager}",
                    f"--cert-dir={sd / 'controller-manager'}",
                    "--leader-elect=false",
                    "--controllers=*",
                    f"--service-account-private-key-file={self.pki.sa_key}",
                    f"--root-ca-file={self.pki.ca_cert}",
                    f"--cluster-signing-cert-file={self.pki.ca_cert}",
                    f"--cluster-signing-key-file={self.pki.ca_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--concurrent-job-syncs=20",
                    "--concurrent-gc-syncs=20",
                ],
                (p.controller_manager,),
                lambda: _http_ok(
                    f"https://127.0.0.1:{p.controller_manager}/healthz", context=insecure
                ),
            ),
            Service(
                "kube-scheduler",
                [
                    str(tools.path("kube-scheduler")),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p.scheduler}",
                    f"--cert-dir={sd / 'scheduler'}",
                    "--leader-elect=false",
                ],
                (p.scheduler,),
                lambda: _http_ok(f"https://127.0.0.1:{p.scheduler}/healthz", context=insecure),
            ),
            Service(
                "kwok",
                [
                    str(tools.path("kwok")),
                    f"--kubeconfig={kubeconfig}",
                    f"--config={sd / 'kwok' / 'kwok.yaml'}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={cluster.KWOK_NODE_ANNOTATION}=fake",
                    # One listener serves both TLS (the API server, as to a kubelet) and
                    # plain HTTP; it must be the port the nodes advertise.
                    f"--server-address=127.0.0.1:{p.kwok_node}",
                    f"--node-port={p.kwok_node}",
                    f"--tls-cert-file={self.pki.kubelet_cert}",
                    f"--tls-private-key-file={self.pki.kubelet_key}",
                    f"--enable-crds={','.join(cluster.KWOK_ENABLED_CRDS)}",
                    f"--cidr={POD_CIDR}",
                    "--node-ip=127.0.0.1",
                    "--node-lease-duration-seconds=40",
                ],
                (p.kwok_node,),
                # Over TLS with the CA, as the API server connects: proves the cert as well.
                lambda: _http_ok(f"https://127.0.0.1:{p.kwok_node}/healthz", context=ca),
                needs_crds=True,
            ),
            Service(
                "minio",
                [
                    str(tools.path("minio")),
                    "server",
                    str(sd / "minio" / "data"),
                    f"--address=127.0.0.1:{p.minio}",
                    "--quiet",
                ],
                (p.minio,),
                lambda: _http_ok(f"http://127.0.0.1:{p.minio}/minio/health/ready"),
                env={
                    **os.environ,
                    "MINIO_ROOT_USER": config.minio_user,
                    "MINIO_ROOT_PASSWORD": config.minio_password,
                    "MINIO_BROWSER": "off",
                    "MINIO_UPDATE": "off",
                },
            ),
            Service(
                "prometheus",
                [
                    str(tools.path("prometheus")),
                    f"--config.file={sd / 'prometheus' / 'prometheus.yml'}",
                    f"--storage.tsdb.path={sd / 'prometheus' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{p.prometheus}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=2d",
                ],
                (p.prometheus,),
                lambda: _http_ok(f"http://127.0.0.1:{p.prometheus}/-/ready"),
            ),
        ]

    def _write_files(self, config: StackConfig, tools: toolchain.InstallReport) -> None:
        pki.ensure_pki(self.pki)
        realnode.ensure_apiserver_kubelet_client(self.pki)
        token = self.pki.admin_token.read_text().strip()
        kubeconfig = cluster.render_kubeconfig(self.api_url(config), self.pki.ca_cert, token)
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
        self.kubeconfig.chmod(0o600)
        kwok_dir = self.state_dir / "kwok"
        kwok_dir.mkdir(parents=True, exist_ok=True)
        (kwok_dir / "kwok.yaml").write_text(cluster.KWOK_CONFIG)
        prometheus.write_config(
            self.state_dir / "prometheus" / "prometheus.yml", self.prometheus_targets
        )
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for name, path in tools.paths.items():
            link = self.bin_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(path)

    # ---- lifecycle ---------------------------------------------------------------------
    def running_services(self) -> dict[str, int]:
        """Name → pid of each service whose pid file points at a live process of ours."""
        running: dict[str, int] = {}
        for name in SERVICE_NAMES:
            record = processes.read_pid_file(self.pid_path(name))
            if record is not None and processes.is_ours(record):
                running[name] = record.pid
        return running

    def up(
        self,
        *,
        port_base: int | None = None,
        timeout_s: float = 120.0,
        log: Log = print,
        real_node: bool = False,
    ) -> UpReport:
        """Start whatever is not running, wait until all is ready, bootstrap the cluster.

        With ``real_node`` (or when the state dir's node was started before), also start the
        real node (containerd, runc, kubelet; see ``realnode``); its timings are in the
        report's ``node``.
        """
        started_at = time.monotonic()
        tools = toolchain.ensure_tools(log=log)
        config = self._resolve_config(port_base)
        self._write_files(config, tools)
        services = self._services(config, tools)
        running = self.running_services()
        started: list[str] = []
        deadline = started_at + timeout_s

        def start(svc: Service) -> None:
            processes.start_process(
                svc.argv,
                log_path=self.log_path(svc.name),
                pid_path=self.pid_path(svc.name),
                env=svc.env,
            )
            started.append(svc.name)

        try:
            self._check_ports(services, running)
            pending = [s for s in services if s.name not in running]
            for svc in pending:
                if not svc.needs_crds:
                    start(svc)
            # In order, so a dead etcd is reported as such, not as an API server never ready.
            for svc in services:
                self._wait_ready(svc, deadline)
                if svc.name == "kube-apiserver":
                    break
            api_ready_s = time.monotonic() - started_at
            # kwok watches its CRDs from the start; while one is missing it retries with a
            # growing back-off, so pod logs could lag for seconds after `up` returned.
            cluster.install_kwok_crds(self.kubeconfig, deadline=deadline)
            for svc in pending:
                if svc.needs_crds:
                    start(svc)
            for svc in services:
                self._wait_ready(svc, deadline)
            cluster.bootstrap(
                self.kubeconfig, self.s3_credentials(config), deadline=deadline, log=log
            )
        except BaseException:
            self._stop(started)
            raise
        kept = [s.name for s in services if s.name not in started]
        node_report = None
        node = realnode.RealNode(self)
        if real_node or node.marker.exists():
            # The node is an add-on: a failure leaves the control plane up, for `dev status`.
            node_report = node.up(timeout_s=max(timeout_s, 180.0), log=log)
            started += node_report.started
        return UpReport(api_ready_s, time.monotonic() - started_at, started, kept, node_report)

    def _check_ports(self, services: list[Service], running: dict[str, int]) -> None:
        for svc in services:
            if svc.name in running:
                continue
            for port in svc.ports:
                if not processes.port_is_free(port):
                    raise StackError(
                        f"port {port} (for {svc.name}) is already in use by another process; "
                        f"stop that process, or use other ports: "
                        f"`kexp dev down && kexp dev up --port-base N`"
                    )

    def _wait_ready(self, svc: Service, deadline: float) -> None:
        problem = processes.wait_started(
            svc.ready, self.pid_path(svc.name), self.log_path(svc.name), deadline
        )
        if problem is not None:
            advice = "If the state dir is damaged, `kexp dev down --purge` starts from scratch."
            raise StackError(
                f"{svc.name} {problem}" + (f"\n{advice}" if problem.startswith("exited") else "")
            )

    def _stop(self, names: list[str]) -> None:
        pids = []
        for name in names:
            record = processes.read_pid_file(self.pid_path(name))
            if record is not None and processes.is_ours(record):
                pids.append(record.pid)
            self.pid_path(name).unlink(missing_ok=True)
        processes.stop_pids(pids)

    def down(self, *, purge: bool = False) -> list[int]:
        """Stop every process of this stack; with ``purge``, delete the state dir too.

        Returns the pids that were stopped. Works on a corrupt state dir as well.
        """
        # The node's containers first: they are not children of any process of the stack.
        stopped: list[int] = realnode.RealNode(self).down(delete_node=False)
        # Dependents first, so the API server does not log a storm of lost clients.
        for name in reversed(SERVICE_NAMES):
            record = processes.read_pid_file(self.pid_path(name))
            if record is not None and processes.is_ours(record):
                processes.stop_pids([record.pid])
                stopped.append(record.pid)
            self.pid_path(name).unlink(missing_ok=True)
        # Orphans of a killed run whose pid files were lost still name the state dir.
        strays = processes.processes_using(str(self.state_dir))
        processes.stop_pids(strays)
        stopped += strays
        if purge and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        return stopped

    def status(self) -> dict[str, Any]:
        """Each service's pid, port and health, for ``kexp dev status``."""
        config = self.load_config()
        if config is None:
            return {"stateDir": str(self.state_dir), "services": {}}
        running = self.running_services()
        tools = toolchain.InstallReport(
            paths={t.name: t.cached_path() for t in toolchain.GO_TOOLS}
            | {d.name: d.path for d in toolchain.DEBIAN_TOOLS}
        )
        with contextlib.suppress(FileNotFoundError):
            services = {s.name: s for s in self._services(config, tools)}
            info: dict[str, Any] = {
                name: {
                    "pid": running.get(name),
                    "port": services[name].ports[0],
                    "ready": name in running and services[name].ready(),
                }
                for name in SERVICE_NAMES
            }
            node = realnode.RealNode(self)
            if node.marker.exists():
                info.update(node.status())
            return {"stateDir": str(self.state_dir), "services": info}
        return {"stateDir": str(self.state_dir), "services": {}}


SERVICE_NAMES: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "minio",
    "prometheus",
)


@contextlib.contextmanager
def running_stack(state_dir: Path, *, port_base: int, keep: bool = False) -> Iterator[Stack]:
    """Bring a stack up for the duration of a block (the test session's), then down."""
    stack = Stack(state_dir)
    stack.up(port_base=port_base, log=lambda _m: None)
    try:
        yield stack
    finally:
        if not keep:
            stack.down()
