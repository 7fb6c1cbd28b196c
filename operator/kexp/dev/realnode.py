"""A real node for the local stack: containerd, runc and a kubelet, so pods run real containers.

kwok's nodes only simulate pods. ``RealNode.up()`` adds one node that runs them: Debian's
containerd (1.6, CRI v1) and runc, and a kubelet built from the same k8s.io/kubernetes
release as the API server. Everything lives under ``<state dir>/node``: containerd's root,
state and socket, runc's state, the kubelet's root dir, pod logs, CNI configuration and the
node's credentials (issued from the stack's CA). Pods' cgroups go under ``/kexp-<port
base>`` in every cgroup hierarchy, so that stopping the node can find and kill every process
of every container, and two stacks on one machine do not share ``/kubepods``.

What the kubelet and containerd need on a machine like the development VM (cgroup v1, no
systemd as init, no CAP_SYS_RESOURCE), each for the reason given where it is set:
``failCgroupV1: false``, ``cgroupDriver: cgroupfs``, ``failSwapOn: false``, a non-loopback
node IP, and containerd's ``restrict_oom_score_adj``. docs/development.md lists the errors
each one avoids.

Which pods run here: the node is tainted, and a MutatingAdmissionPolicy (a built-in API server
feature; no webhook) gives kexp's trainer pods that ask for no GPU and no simulated failure
the toleration, a node selector and ``hostNetwork: true``: the stack's services listen on
loopback only, and on the host's network the trainer reaches MinIO at the address in its S3
Secret and Prometheus reaches the trainer on 127.0.0.1. Pods the policy leaves alone keep
running on kwok's simulated nodes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.rest import ApiException

from kexp.api import contract
from kexp.dev import images, pki, processes, toolchain
from kexp.kube.client import sync_api_client
from kexp.status.training import pod_problem

if TYPE_CHECKING:
    from kexp.dev.stack import Stack

NODE_NAME: Final = "kexp-node-0"
#: Label and taint of the real node; only pods that tolerate the taint are placed on it.
NODE_LABEL: Final = "kexp.io/real-node"
#: The kubelet's ports, at these offsets from the stack's port base (after the stack's own).
KUBELET_PORT_OFFSET: Final = 20
KUBELET_HEALTHZ_OFFSET: Final = 21
CNI_SUBNET: Final = "10.88.0.0/16"
CNI_BIN_DIR: Final = Path("/usr/lib/cni")
POLICY_NAME: Final = "kexp-real-node"
#: Roles of kexp's pods that may run here: a training pod, or a one-pod sweep's driver.
REAL_NODE_ROLES: Final = ("train", "sweep")

Log = Callable[[str], None]


class NodeError(RuntimeError):
    """The real node could not be started or inspected; the message says what failed."""


# ---- credentials ---------------------------------------------------------------------------


def apiserver_kubelet_client_paths(paths: pki.PkiPaths) -> tuple[Path, Path]:
    """The API server's client certificate for kubelets (logs, exec): cert and key."""
    return paths.root / "apiserver-kubelet-client.crt", paths.root / "apiserver-kubelet-client.key"


def _load_ca(paths: pki.PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise NodeError(f"{paths.ca_key} is not an EC key; `kexp dev down --purge` renews it")
    return ca_cert, ca_key


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _issue(
    paths: pki.PkiPaths,
    cert_path: Path,
    key_path: Path,
    *,
    common_name: str,
    organization: str | None = None,
    usage: x509.ObjectIdentifier,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> None:
    ca_cert, ca_key = _load_ca(paths)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if dns_names or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def ensure_apiserver_kubelet_client(paths: pki.PkiPaths) -> tuple[Path, Path]:
    """Issue (once) the certificate the API server shows a real kubelet.

    A real kubelet, unlike kwok, authenticates the API server when it fetches logs; in
    ``system:masters`` it passes the kubelet's authorization check too.
    """
    cert, key = apiserver_kubelet_client_paths(paths)
    if not (cert.exists() and key.exists()):
        _issue(
            paths,
            cert,
            key,
            common_name="kube-apiserver-kubelet-client",
            organization="system:masters",
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
    return cert, key


def node_ip() -> str:
    """This machine's address on its default route.

    The kubelet refuses a loopback node IP ("failed to validate nodeIP: nodeIP can't be
    loopback address"), and the API server dials the node's InternalIP for logs.
    Connecting a UDP socket sends nothing; it only picks the route's source address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("198.51.100.1", 9))
            address = str(sock.getsockname()[0])
        except OSError:
            address = ""
    if not address or ipaddress.ip_address(address).is_loopback:
        raise NodeError(
            "this machine has no non-loopback IPv4 address; the kubelet needs one as its node IP"
        )
    return address


# ---- cgroups and mounts --------------------------------------------------------------------


def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    mounts: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(left.split()[4]))
    return mounts


def cgroup_version() -> int:
    """2 when /sys/fs/cgroup is the unified hierarchy, 1 otherwise (hybrid counts as 1)."""
    return 2 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1


def _cgroup_dirs(root: str) -> list[Path]:
    return [m / root.strip("/") for m in cgroup_mounts() if (m / root.strip("/")).is_dir()]


def kill_cgroup_tree(root: str) -> int:
    """SIGKILL every process in the cgroup ``root`` and below, in every hierarchy; how many."""
    killed: set[int] = set()
    for top in _cgroup_dirs(root):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    if int(pid) not in killed:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                        killed.add(int(pid))
    return len(killed)


def remove_cgroup_tree(root: str) -> None:
    """Remove the (emptied) cgroup ``root`` and its children, deepest first."""
    for top in _cgroup_dirs(root):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for path in [*dirs, top]:
            for _ in range(20):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # A killed process leaves its cgroup a moment after the signal.
                    time.sleep(0.1)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    found: list[Path] = []
    prefix = str(path.resolve()).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if (point + "/").startswith(prefix):
            found.append(Path(point))
    return sorted(found, key=lambda p: -len(p.parts))


def unmount_all(path: Path) -> None:
    """Lazily unmount what containerd and the kubelet left mounted under ``path``."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


# ---- the node ------------------------------------------------------------------------------


@dataclass
class NodeReport:
    """Timings of one ``RealNode.up``: tools, images, and until the node was Ready."""

    tools_s: float
    images_s: float
    ready_s: float
    total_s: float
    started: list[str]
    images: dict[str, str]


class RealNode:
    """The real node of the stack rooted at one state dir."""

    SERVICES: Final = ("containerd", "kubelet")

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.dir = stack.state_dir / "node"

    # ---- paths ----------------------------------------------------------------------------
    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def marker(self) -> Path:
        """Present while the stack is meant to have a real node (``up`` keeps it running)."""
        return self.dir / "node.json"

    def pid_path(self, name: str) -> Path:
        return self.stack.state_dir / "run" / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.stack.state_dir / "logs" / f"{name}.log"

    def cgroup_root(self) -> str:
        return f"/kexp-{self.stack.config().port_base}"

    def kubelet_port(self) -> int:
        return self.stack.config().port_base + KUBELET_PORT_OFFSET

    def healthz_port(self) -> int:
        return self.stack.config().port_base + KUBELET_HEALTHZ_OFFSET

    # ---- configuration --------------------------------------------------------------------
    def containerd_config(self) -> str:
        d = self.dir / "containerd"
        runtime = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc'
        return "\n".join(
            [
                "version = 2",
                f'root = "{d / "root"}"',
                f'state = "{d / "state"}"',
                "[grpc]",
                f'  address = "{self.containerd_socket}"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{d / "opt"}"',
                '[plugins."io.containerd.grpc.v1.cri"]',
                f'  sandbox_image = "{images.PAUSE_IMAGE}"',
                # Without CAP_SYS_RESOURCE (the VM's root lacks it) runc cannot lower
                # oom_score_adj to the sandbox's -998: "failed to update
                # /proc/self/oom_score_adj: Permission denied". This clamps it to ours.
                "  restrict_oom_score_adj = true",
                '  [plugins."io.containerd.grpc.v1.cri".containerd]',
                '    snapshotter = "overlayfs"',
                f"    [{runtime}]",
                '      runtime_type = "io.containerd.runc.v2"',
                f"      [{runtime}.options]",
                # No systemd runs as init here: cgroups are plain directories.
                "        SystemdCgroup = false",
                f'        Root = "{self.dir / "runc"}"',
                '  [plugins."io.containerd.grpc.v1.cri".cni]',
                f'    bin_dir = "{CNI_BIN_DIR}"',
                f'    conf_dir = "{self.dir / "cni"}"',
                "",
            ]
        )

    def cni_config(self) -> dict[str, Any]:
        """A bridge network for pods that do not use the host's (kexp's trainers do).

        The kubelet reports the node NotReady until the runtime has a network; the bridge
        also serves any other pod placed here.
        """
        return {
            "cniVersion": "1.0.0",
            "name": "kexp",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "kexp0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": CNI_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni-ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }

    def kubelet_config(self, address: str) -> dict[str, Any]:
        pk = self.stack.pki
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Kubelet 1.31+ refuses cgroup v1 hosts unless told otherwise; the VM has v1.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root(),
            # A developer machine may have swap; the kubelet would refuse to start.
            "failSwapOn": False,
            "memorySwap": {"swapBehavior": "NoSwap"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": address,
            "port": self.kubelet_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port(),
            "tlsCertFile": str(self.dir / "pki" / "serving.crt"),
            "tlsPrivateKeyFile": str(self.dir / "pki" / "serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pk.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "podLogsDir": str(self.dir / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            # Shared development disks are often fuller than the default 15% free: the kubelet
            # would evict the trainer. Thresholds low enough to only catch a truly full disk.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            # Images are imported, never pulled: garbage-collecting them would lose them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerWithTaints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
            "maxPods": 20,
        }

    def kubeconfig(self) -> dict[str, Any]:
        d = self.dir / "pki"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kexp-dev",
                    "cluster": {
                        "server": self.stack.api_url(),
                        "certificate-authority": str(self.stack.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": NODE_NAME,
                    "user": {
                        "client-certificate": str(d / "client.crt"),
                        "client-key": str(d / "client.key"),
                    },
                }
            ],
            "contexts": [
                {"name": NODE_NAME, "context": {"cluster": "kexp-dev", "user": NODE_NAME}}
            ],
            "current-context": NODE_NAME,
        }

    def _write_files(self, address: str) -> None:
        pk = self.stack.pki
        d = self.dir / "pki"
        if not (d / "client.crt").exists():
            _issue(
                pk,
                d / "client.crt",
                d / "client.key",
                common_name=f"system:node:{NODE_NAME}",
                organization="system:nodes",
                usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            )
        # Reissued each time: the machine's address may have changed since the last start.
        _issue(
            pk,
            d / "serving.crt",
            d / "serving.key",
            common_name=NODE_NAME,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            dns_names=(NODE_NAME, "localhost"),
            ips=(address, "127.0.0.1"),
        )
        (self.dir / "containerd").mkdir(parents=True, exist_ok=True)
        (self.dir / "containerd" / "config.toml").write_text(self.containerd_config())
        (self.dir / "cni").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "10-kexp.conflist").write_text(json.dumps(self.cni_config(), indent=2))
        (self.dir / "kubelet.yaml").write_text(
            yaml.safe_dump(self.kubelet_config(address), sort_keys=False)
        )
        kubeconfig = self.dir / "kubelet.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        kubeconfig.chmod(0o600)
        for mount in cgroup_mounts():
            # The kubelet refuses a cgroupRoot that does not exist in every hierarchy.
            with contextlib.suppress(OSError):
                (mount / self.cgroup_root().strip("/")).mkdir(exist_ok=True)

    def kubelet_argv(self, kubelet: Path, address: str) -> list[str]:
        return [
            str(kubelet),
            f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={address}",
            f"--node-labels={NODE_LABEL}=true",
            "--v=1",
        ]

    # ---- state ----------------------------------------------------------------------------
    def running(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for name in self.SERVICES:
            record = processes.read_pid_file(self.pid_path(name))
            if record is not None and processes.is_ours(record):
                found[name] = record.pid
        return found

    def ctr(self, *args: str, stdin: Any = None, timeout: float = 600) -> str:
        """Run ``ctr`` on this node's containerd, in the CRI's namespace; its output."""
        argv = ["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args]
        proc = subprocess.run(
            argv, stdin=stdin, capture_output=True, text=True, check=False, timeout=timeout
        )
        if proc.returncode != 0:
            raise NodeError(f"{' '.join(argv[5:])} failed: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        try:
            self.ctr("version", timeout=5)
        except (NodeError, subprocess.TimeoutExpired):
            return False
        return True

    def kubelet_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.healthz_port()}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def node_ready(self, since: dt.datetime | None = None) -> bool:
        """The Node is Ready, by a heartbeat at or after ``since`` when given: a Node left
        over from the last run still says Ready until the controller notices it is gone."""
        api = sync_api_client(self.stack.kubeconfig)
        try:
            node = client.CoreV1Api(api).read_node(NODE_NAME)
        except ApiException:
            return False
        finally:
            api.close()
        conditions = node.status.conditions or []
        return any(
            c.type == "Ready"
            and c.status == "True"
            and (since is None or c.last_heartbeat_time >= since)
            for c in conditions
        )

    def has_blob(self, digest: str) -> bool:
        """Whether containerd's content store holds the blob ``digest`` (``sha256:...``)."""
        algorithm, _, hexdigest = digest.partition(":")
        store = self.dir / "containerd" / "root" / "io.containerd.content.v1.content"
        return (store / "blobs" / algorithm / hexdigest).is_file()

    def image_refs(self) -> dict[str, str]:
        """Image name → manifest digest of every image in the node's containerd."""
        refs: dict[str, str] = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                refs[fields[0]] = fields[2]
        return refs

    # ---- lifecycle ------------------------------------------------------------------------
    def _wait(self, what: str, check: Callable[[], bool], service: str, deadline: float) -> None:
        problem = processes.wait_started(
            check, self.pid_path(service), self.log_path(service), deadline
        )
        if problem is not None:
            raise NodeError(f"{what}: {service} {problem}")

    def up(
        self,
        *,
        timeout_s: float = 180.0,
        trainer_image: bool = True,
        log: Log = print,
    ) -> NodeReport:
        """Start containerd and the kubelet (kept if running), import the images, and wait
        until the node is Ready. The stack's control plane must be up."""
        started_at = time.monotonic()
        if os.geteuid() != 0:
            raise NodeError(
                "the real node needs root: containerd and runc create namespaces, cgroups and "
                "mounts; run `kexp dev up --real-node` as root (or without --real-node)"
            )
        ensure_node_packages(log)
        tools = toolchain.ensure_tools(toolchain.NODE_TOOL_NAMES, log=log)
        tools_s = time.monotonic() - started_at
        address = node_ip()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(json.dumps({"node": NODE_NAME, "address": address}))
        running = self.running()
        started: list[str] = []
        if "kubelet" not in running:
            self._write_files(address)
        apply_node_objects(self.stack.kubeconfig)
        deadline = started_at + timeout_s
        wait_policy_active(self.stack.kubeconfig, deadline)
        if "containerd" not in running:
            processes.start_process(
                [str(tools.path("containerd")), f"--config={self.dir / 'containerd/config.toml'}"],
                log_path=self.log_path("containerd"),
                pid_path=self.pid_path("containerd"),
                # containerd finds runc and the shim on PATH.
                env={**os.environ, "PATH": f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}"},
            )
            started.append("containerd")
        self._wait("containerd", self.containerd_ready, "containerd", deadline)
        images_started = time.monotonic()
        imported = images.ensure_node_images(self, trainer=trainer_image, log=log)
        images_s = time.monotonic() - images_started
        ready_started = time.monotonic()
        # Heartbeats carry whole seconds.
        since = dt.datetime.now(dt.UTC).replace(microsecond=0) if "kubelet" not in running else None
        if "kubelet" not in running:
            processes.start_process(
                self.kubelet_argv(tools.path("kubelet"), address),
                log_path=self.log_path("kubelet"),
                pid_path=self.pid_path("kubelet"),
                env={**os.environ, "PATH": f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}"},
            )
            started.append("kubelet")
        deadline = max(deadline, time.monotonic() + 60)
        self._wait("the kubelet", self.kubelet_healthy, "kubelet", deadline)
        self._wait(f"node {NODE_NAME}", lambda: self.node_ready(since), "kubelet", deadline)
        ready_s = time.monotonic() - ready_started
        log(f"node {NODE_NAME} ready ({address}; containerd, runc, kubelet)")
        return NodeReport(
            tools_s, images_s, ready_s, time.monotonic() - started_at, started, imported
        )

    def down(self, *, delete_node: bool = True) -> list[int]:
        """Stop the kubelet, every container, containerd and its shims; unmount what they
        mounted and remove the node's cgroups. Returns the pids of the services stopped.

        With ``delete_node`` the Node object goes too and the next ``Stack.up`` starts no
        node; ``Stack.down`` keeps both, so ``kexp dev up`` brings the node back.
        """
        stopped: list[int] = []
        record = processes.read_pid_file(self.pid_path("kubelet"))
        # First the kubelet, or it would restart the containers killed next.
        if record is not None and processes.is_ours(record):
            processes.stop_pids([record.pid])
            stopped.append(record.pid)
        self.pid_path("kubelet").unlink(missing_ok=True)
        config = None
        with contextlib.suppress(Exception):
            config = self.stack.load_config()
        if config is not None:
            kill_cgroup_tree(f"/kexp-{config.port_base}")
        record = processes.read_pid_file(self.pid_path("containerd"))
        if record is not None and processes.is_ours(record):
            processes.stop_pids([record.pid])
            stopped.append(record.pid)
        self.pid_path("containerd").unlink(missing_ok=True)
        # The runc shims outlive containerd; their command lines name its socket.
        shims = processes.processes_using(str(self.containerd_socket))
        processes.stop_pids(shims, grace_s=2.0)
        stopped += shims
        if self.dir.exists():
            unmount_all(self.dir)
        if config is not None:
            remove_cgroup_tree(f"/kexp-{config.port_base}")
        if delete_node and config is not None:
            with contextlib.suppress(Exception):
                api = sync_api_client(self.stack.kubeconfig)
                try:
                    client.CoreV1Api(api).delete_node(NODE_NAME, _request_timeout=3)
                finally:
                    api.close()
        if delete_node:
            self.marker.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, dict[str, Any]]:
        running = self.running()
        return {
            "containerd": {
                "pid": running.get("containerd"),
                "port": str(self.containerd_socket),
                "ready": "containerd" in running and self.containerd_ready(),
            },
            "kubelet": {
                "pid": running.get("kubelet"),
                "port": self.kubelet_port(),
                "ready": "kubelet" in running and self.kubelet_healthy(),
            },
        }


def ensure_node_packages(log: Log) -> None:
    """Debian's CNI plugins and what builds the pause image (gcc, a static libc)."""
    needs = {
        "containernetworking-plugins": CNI_BIN_DIR / "bridge",
        "gcc": Path("/usr/bin/gcc"),
        "libc6-dev": Path("/usr/lib/x86_64-linux-gnu/libc.a"),
        "debootstrap": Path("/usr/sbin/debootstrap"),
    }
    for package, path in needs.items():
        if not path.exists():
            log(f"installing Debian's {package} ...")
            toolchain._apt_install(package)


def policy_objects() -> list[dict[str, Any]]:
    """RBAC for the node, and the admission policy that sends kexp's trainer pods to it."""
    roles = ", ".join(f"'{r}'" for r in REAL_NODE_ROLES)
    sim = contract.SIM_ANNOTATION_PREFIX
    conditions = [
        {
            "name": "kexp-trainer",
            "expression": (
                "has(object.metadata.labels) && "
                f"object.metadata.labels[?'{contract.LABEL_MANAGED_BY}'].orValue('') == "
                f"'{contract.MANAGED_BY}' && "
                f"object.metadata.labels[?'{contract.LABEL_ROLE}'].orValue('') in [{roles}]"
            ),
        },
        {
            # A simulated failure (exit code, reason) is kwok's to play; run-for is harmless.
            "name": "no-simulated-failure",
            "expression": (
                "!has(object.metadata.annotations) || !object.metadata.annotations.exists(k, "
                f"k in ['{sim}exit-code', '{sim}reason'])"
            ),
        },
        {
            "name": "no-gpu",
            "expression": (
                "!object.spec.containers.exists(c, has(c.resources) && "
                f"has(c.resources.requests) && '{contract.GPU_RESOURCE}' in c.resources.requests)"
            ),
        },
    ]
    # A JSON patch, not an apply configuration: nodeSelector and tolerations are atomic, and
    # "may not mutate atomic arrays, maps or structs" refuses those. Entries already there
    # (the default not-ready tolerations) are kept: ours are added beside them.
    toleration = (
        f'Object.spec.tolerations{{key: "{NODE_LABEL}", operator: "Exists", effect: "NoSchedule"}}'
    )
    mutation = (
        "["
        'JSONPatch{op: "add", path: "/spec/hostNetwork", value: true}, '
        "has(object.spec.nodeSelector) ? "
        f'JSONPatch{{op: "add", path: "/spec/nodeSelector/" + jsonpatch.escapeKey("{NODE_LABEL}"), '
        'value: "true"} : '
        f'JSONPatch{{op: "add", path: "/spec/nodeSelector", value: {{"{NODE_LABEL}": "true"}}}}, '
        "has(object.spec.tolerations) ? "
        f'JSONPatch{{op: "add", path: "/spec/tolerations/-", value: {toleration}}} : '
        f'JSONPatch{{op: "add", path: "/spec/tolerations", value: [{toleration}]}}'
        "]"
    )
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kexp-real-node"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": f"system:node:{NODE_NAME}",
                }
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1beta1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": POLICY_NAME},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ]
                },
                "matchConditions": conditions,
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": [
                    {
                        "patchType": "JSONPatch",
                        "jsonPatch": {"expression": mutation},
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1beta1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY_NAME},
            "spec": {"policyName": POLICY_NAME},
        },
    ]


def apply_node_objects(kubeconfig: Path) -> None:
    """Create or update ``policy_objects()`` with server-side apply (re-running is a no-op)."""
    kubectl = next(t for t in toolchain.GO_TOOLS if t.name == "kubectl").cached_path()
    manifest = yaml.safe_dump_all(policy_objects(), sort_keys=False)
    argv = [str(kubectl), f"--kubeconfig={kubeconfig}", "apply", "--server-side"]
    argv += ["--force-conflicts", "--field-manager=kexp-dev", "-f", "-"]
    proc = subprocess.run(argv, input=manifest, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        hint = ""
        if "MutatingAdmissionPolicy" in proc.stderr:
            hint = (
                "\nThe API server does not serve MutatingAdmissionPolicy v1beta1; "
                "`kexp dev down && kexp dev up --real-node` restarts it with it enabled."
            )
        raise NodeError(f"applying the real node's RBAC and policy failed: {proc.stderr}{hint}")


def wait_policy_active(kubeconfig: Path, deadline: float) -> None:
    """Wait until the API server applies the placement policy to a (dry-run) trainer pod.

    A new or changed policy reaches the admission chain a moment after it is stored; a Job
    that creates its pod in between would get a kwok pod, or the old policy's answer.
    """
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kexp-policy-probe",
            "labels": {
                contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
                contract.LABEL_ROLE: "train",
            },
        },
        "spec": {"containers": [{"name": "probe", "image": images.PAUSE_IMAGE}]},
    }
    api = sync_api_client(kubeconfig)
    try:
        core = client.CoreV1Api(api)
        last = ""
        while True:
            try:
                pod = core.create_namespaced_pod("default", probe, dry_run="All")
                if pod.spec.host_network and (pod.spec.node_selector or {}).get(NODE_LABEL):
                    return
                last = "the policy did not mutate the probe pod yet"
            except ApiException as exc:
                last = str(exc.body)
            if time.monotonic() > deadline:
                raise NodeError(f"the real node's placement policy is not in effect: {last}")
            time.sleep(0.5)
    finally:
        api.close()


def _exit_code(pod: Any) -> int | None:
    for status in pod.status.container_statuses or []:
        terminated = status.state.terminated if status.state else None
        if terminated is not None:
            return int(terminated.exit_code)
    return None


def termination_summary(pod: dict[str, Any]) -> str:
    """Why a trainer pod's container ended badly, as the kubelet recorded it, in one line.

    The container's termination reason (OOMKilled with its memory limit, Error) and the pod's
    own (Evicted, with the kubelet's message), so that a failed run says what to change.
    """
    name = pod.get("metadata", {}).get("name", "?")
    parts = []
    problem = pod_problem([pod])
    if problem is not None:
        parts.append(problem[1])
    status = pod.get("status", {})
    if status.get("reason"):
        detail = f": {status['message']}" if status.get("message") else ""
        parts.append(f"pod {name}: {status['reason']}{detail}")
    containers = pod.get("spec", {}).get("containers") or [{}]
    limit = (containers[0].get("resources") or {}).get("limits", {}).get("memory")
    if problem is not None and problem[0] == "OOMKilled" and limit:
        parts.append(f"its memory limit is {limit} (spec.resources.memory)")
    return "; ".join(parts) or f"pod {name} ended without a recorded reason"


def follow_trainer_pod(
    stack: Stack,
    name: str,
    namespace: str,
    *,
    timeout_s: float,
    echo: Callable[[bytes], None],
    log: Log,
) -> int | None:
    """Follow experiment ``name``'s trainer pod on the real node until it ends; its exit code.

    None when the stack has no real node or the pod is not headed there (a GPU or a
    simulated failure keeps it on kwok): the caller then runs it as a local process. While
    it runs, the stack's Prometheus scrapes the pod's metrics port (on the host's network);
    its log comes through the API server and the kubelet, as ``kubectl logs -f``.
    """
    node = RealNode(stack)
    if not node.marker.exists() or "kubelet" not in node.running():
        return None
    from kexp.render.names import sweep_name, train_job_name

    api = sync_api_client(stack.kubeconfig)
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_s
    selectors = [
        f"batch.kubernetes.io/job-name={j}" for j in (train_job_name(name), sweep_name(name))
    ]
    try:
        pod = None
        while pod is None:
            for selector in selectors:
                for candidate in core.list_namespaced_pod(namespace, label_selector=selector).items:
                    selected = (candidate.spec.node_selector or {}).get(NODE_LABEL) == "true"
                    if candidate.spec.node_name and not selected:
                        return None
                    if selected:
                        pod = candidate
            if pod is None:
                if time.monotonic() > deadline:
                    raise NodeError(
                        f"experiment {name!r} has no trainer pod after {timeout_s:.0f}s"
                    )
                time.sleep(0.5)
        pod_name = pod.metadata.name
        container = pod.spec.containers[0]
        env = {e.name: e.value for e in container.env or []}
        port = env.get(contract.ENV_METRICS_PORT, str(contract.METRICS_PORT))
        target = f"trainer-{namespace}-{name}"
        prom = stack.prometheus()
        prom.add_target(target, f"127.0.0.1:{port}", {"namespace": namespace, "pod": pod_name})
        log(f"{pod_name} runs as a container on the real node {NODE_NAME}")
        try:
            while True:
                pod = core.read_namespaced_pod(pod_name, namespace)
                statuses = pod.status.container_statuses or []
                if any(s.state and (s.state.running or s.state.terminated) for s in statuses):
                    break
                waiting = [s.state.waiting for s in statuses if s.state and s.state.waiting]
                if waiting and waiting[0].reason in (
                    "ErrImageNeverPull",
                    "ErrImagePull",
                    "ImagePullBackOff",
                    "CreateContainerError",
                    "CreateContainerConfigError",
                ):
                    raise NodeError(
                        f"{pod_name} cannot start: {waiting[0].reason}: {waiting[0].message}"
                    )
                if time.monotonic() > deadline + 120:
                    raise NodeError(f"{pod_name} did not start (phase {pod.status.phase})")
                time.sleep(0.5)
            stream = core.read_namespaced_pod_log(
                pod_name,
                namespace,
                container=container.name,
                follow=True,
                _preload_content=False,
            )
            try:
                for chunk in stream.stream(4096):
                    echo(chunk)
            finally:
                stream.release_conn()
            while True:
                pod = core.read_namespaced_pod(pod_name, namespace)
                if (code := _exit_code(pod)) is not None:
                    break
                time.sleep(0.5)
            if code != 0:
                # Exit 137 alone does not say whether the cgroup's OOM killer or the kubelet
                # ended it: the reason the kubelet recorded does (OOMKilled, Evicted, Error).
                log(termination_summary(api.sanitize_for_serialization(pod)))
        finally:
            prom.remove_target(target)
        return code
    finally:
        api.close()
