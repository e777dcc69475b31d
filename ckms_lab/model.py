"""The CKMS environment as data: segments, hosts with roles, and the allowed flows.

Why data: one description feeds every consumer. The Pulumi component builds lab, on-prem or cloud
resources from it; the flow list becomes the router's nftables allow-list, the CA host firewall, the
IDS allow-list and (in a cloud) security groups. Nothing outside this list is an allowed flow.

This module has no Pulumi dependency so the inventory renderer, the roles' tests and the policy
checks can use it directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

ROLES = ("router", "ca", "db", "terminal", "admin", "rogue", "hub")
ANYWHERE = "0.0.0.0/0"

# Segment names are short: they become parts of network interface names in the lab.
CA_SEGMENT = "ca"
FACTORY_LAN = "lan"
IOT_SEGMENT = "iot"
MANAGEMENT = "mgmt"
VPN = "vpn"
#: Segments hosts are plugged into besides management, in the order their interfaces are numbered.
DATA_SEGMENTS = (CA_SEGMENT, FACTORY_LAN, IOT_SEGMENT)

EST_PORT = 8443
CRL_PORT = 8080
SSH_PORT = 22
NTP_PORT = 123
POSTGRES_PORT = 5432
HUB_DEVICE_PORT = 8443
HUB_UPLOAD_PORT = 8444


class ModelError(ValueError):
    """The environment description is inconsistent (unknown role, overlapping subnet, ...)."""


@dataclass(frozen=True)
class Segment:
    name: str
    cidr: str
    purpose: str
    gateway: str | None = None  # the router's address on this segment, if routed


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    addresses: dict[str, str]  # segment name -> address (no prefix)

    def address(self, segment: str) -> str:
        return self.addresses[segment]

    @property
    def data_segments(self) -> tuple[str, ...]:
        """The segments this host is plugged into besides management, in interface order."""
        return tuple(s for s in DATA_SEGMENTS if s in self.addresses)

    @property
    def data_address(self) -> str:
        """The host's address on its first data segment (what flows name it by)."""
        return self.addresses[self.data_segments[0]]


@dataclass(frozen=True)
class Flow:
    """One allowed flow. ``src``/``dst`` are endpoint names (roles, ``timesource``, ``vpn``,
    ``anywhere``); ``src_cidrs``/``dst_cidrs`` are what they resolve to in this environment."""

    name: str
    src: tuple[str, ...]
    dst: tuple[str, ...]
    proto: str
    port: int
    purpose: str
    src_cidrs: tuple[str, ...] = ()
    dst_cidrs: tuple[str, ...] = ()
    routed: bool = True  # crosses the router (False: stays inside one segment)


@dataclass(frozen=True)
class Environment:
    name: str
    kind: str  # lab | onprem | aws
    segments: tuple[Segment, ...]
    hosts: tuple[Host, ...]
    flows: tuple[Flow, ...]
    time_sources: tuple[str, ...]
    controller_address: str
    extra: dict = field(default_factory=dict)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise ModelError(f"no segment {name!r}")

    def host_segments(self) -> tuple[str, ...]:
        """Data segments with at least one host on them (the VPN is the router's, not a switch)."""
        used = {s for h in self.hosts for s in h.data_segments}
        return tuple(s for s in DATA_SEGMENTS if s in used)

    def hosts_with_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise ModelError(f"no host {name!r}")

    def to_dict(self) -> dict:
        """A JSON-able dict (stack output, inventory group vars)."""
        return asdict(self)


def default_flows(with_db: bool = False, with_hub: bool = False) -> list[dict]:
    """The guidance's allowed flows, nothing else (see docs/lab.md for the mapping)."""
    flows = [
        {
            "name": "est",
            "src": ["terminal"],
            "dst": ["ca"],
            "proto": "tcp",
            "port": EST_PORT,
            "purpose": "certificate enrolment (EST over mutual TLS) from the certificate-management terminal",
        },
        {
            "name": "admin-ssh",
            "src": ["admin", "vpn"],
            "dst": ["ca"],
            "proto": "tcp",
            "port": SSH_PORT,
            "purpose": "CA administration from the registered admin PC or over the emergency VPN",
        },
        {
            "name": "ntp",
            "src": ["ca"],
            "dst": ["timesource"],
            "proto": "udp",
            "port": NTP_PORT,
            "purpose": "time synchronisation of the CA from the trusted time source",
        },
        {
            "name": "crl",
            "src": ["terminal"],
            "dst": ["ca"],
            "proto": "tcp",
            "port": CRL_PORT,
            "purpose": "CRL download over HTTP by the terminal (it carries CRLs on to the hub; A.46)",
        },
    ]
    if with_hub:
        flows += [
            {
                "name": "crl-relay",
                "src": ["terminal"],
                "dst": ["hub"],
                "proto": "tcp",
                "port": HUB_UPLOAD_PORT,
                "purpose": "the terminal's CRL relay uploads each checked CRL to the IoT hub (A.37)",
            },
            {
                "name": "device-line-test",
                "src": ["terminal"],
                "dst": ["hub"],
                "proto": "tcp",
                "port": HUB_DEVICE_PORT,
                "purpose": "the production line checks a freshly enrolled device against the hub (drills)",
            },
        ]
    if with_db:
        flows.append(
            {
                "name": "ca-db",
                "src": ["ca"],
                "dst": ["db"],
                "proto": "tcp",
                "port": POSTGRES_PORT,
                "purpose": "CA nodes to the shared database (inside the CA segment)",
                "routed": False,
            }
        )
    return flows


#: CA nodes one environment can hold: the guidance scales to 10 nodes of 20 certificates/s (A.42).
MAX_CA_NODES = 10


def build_environment(
    name: str,
    kind: str,
    *,
    network: str = "10.231.0.0/16",
    ca_count: int = 1,
    with_db: bool = False,
    with_hub: bool = False,
    with_rogue: bool = True,
    flows: list[dict] | None = None,
    time_sources: list[str] | None = None,
) -> Environment:
    """Build the environment. Addresses are laid out from ``network`` (a /16):

    management .0/24 (controller .1), CA segment .10/24, factory LAN .20/24, VPN .30/24, IoT segment
    .40/24 (with a hub); router .1 on each routed segment, CA nodes .10+, db .20, terminal .10, admin .20,
    rogue .66 (factory LAN), hub .10 (IoT segment).
    """
    if kind not in ("lab", "onprem", "aws"):
        raise ModelError(f"unknown environment kind {kind!r}")
    if not 1 <= ca_count <= MAX_CA_NODES:  # .10-.19 on the CA segment; the database is .20
        raise ModelError(f"ca_count must be 1 to {MAX_CA_NODES} (the guidance's scaling range, A.42)")
    net = ipaddress.ip_network(network)
    if net.prefixlen > 16:
        raise ModelError(f"network {network} must be a /16 or larger")
    base = int(net.network_address)

    def sub(third: int) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{ipaddress.IPv4Address(base + third * 256)}/24")

    def addr(n: ipaddress.IPv4Network, host: int) -> str:
        return str(n.network_address + host)

    mgmt, ca_seg, lan, vpn, iot = sub(0), sub(10), sub(20), sub(30), sub(40)
    segments = (
        Segment(MANAGEMENT, str(mgmt), "management network: controller to every host (SSH only)"),
        Segment(CA_SEGMENT, str(ca_seg), "CA segment: CA server(s) with HSM, database", addr(ca_seg, 1)),
        Segment(FACTORY_LAN, str(lan), "factory LAN: terminal, registered admin PC", addr(lan, 1)),
        Segment(VPN, str(vpn), "emergency administration VPN (WireGuard on the router)", addr(vpn, 1)),
    )
    if with_hub:  # toy model: the hub and its devices sit apart from the factory LAN and the CA
        segments += (
            Segment(IOT_SEGMENT, str(iot), "IoT segment: the hub and the devices it serves", addr(iot, 1)),
        )
    hosts: list[Host] = []
    mgmt_next = iter(range(10, 250))

    def add(hname: str, role: str, **addrs: str) -> None:
        hosts.append(Host(hname, role, {MANAGEMENT: addr(mgmt, next(mgmt_next)), **addrs}))

    router_addrs = {CA_SEGMENT: addr(ca_seg, 1), FACTORY_LAN: addr(lan, 1), VPN: addr(vpn, 1)}
    if with_hub:
        router_addrs[IOT_SEGMENT] = addr(iot, 1)
    add("router", "router", **router_addrs)
    for i in range(ca_count):
        add(f"ca{i + 1}", "ca", ca=addr(ca_seg, 10 + i))
    if with_db:
        add("db", "db", ca=addr(ca_seg, 20))
    add("terminal", "terminal", lan=addr(lan, 10))
    add("admin", "admin", lan=addr(lan, 20))
    if with_hub:
        add("hub", "hub", **{IOT_SEGMENT: addr(iot, 10)})
    if with_rogue:  # unregistered host on the factory LAN, for negative tests
        add("rogue", "rogue", lan=addr(lan, 66))

    env_hosts = tuple(hosts)
    tsrc = tuple(time_sources) if time_sources else (addr(ca_seg, 1),)  # lab: the router serves time
    endpoints: dict[str, tuple[str, ...]] = {
        "timesource": tuple(f"{t}/32" for t in tsrc),
        "vpn": (str(vpn),),
        "anywhere": (ANYWHERE,),
    }
    for role in ROLES:
        endpoints[role] = tuple(f"{h.data_address}/32" for h in env_hosts if h.role == role)

    resolved = []
    for f in flows if flows is not None else default_flows(with_db, with_hub):
        for end in (*f["src"], *f["dst"]):
            if end not in endpoints:
                raise ModelError(f"flow {f['name']}: unknown endpoint {end!r} (known: {sorted(endpoints)})")
        if f["proto"] not in ("tcp", "udp"):
            raise ModelError(f"flow {f['name']}: proto must be tcp or udp")
        if not 0 < int(f["port"]) < 65536:
            raise ModelError(f"flow {f['name']}: bad port {f['port']}")
        resolved.append(
            Flow(
                name=f["name"],
                src=tuple(f["src"]),
                dst=tuple(f["dst"]),
                proto=f["proto"],
                port=int(f["port"]),
                purpose=f.get("purpose", ""),
                src_cidrs=tuple(c for e in f["src"] for c in endpoints[e]),
                dst_cidrs=tuple(c for e in f["dst"] for c in endpoints[e]),
                routed=bool(f.get("routed", True)),
            )
        )
    return Environment(
        name=name,
        kind=kind,
        segments=segments,
        hosts=env_hosts,
        flows=tuple(resolved),
        time_sources=tsrc,
        controller_address=f"{addr(mgmt, 1)}/24",
    )


def render_nftables(env: Environment) -> str:
    """The router's forward allow-list rendered from the flows (default drop, log the rest).

    The router role owns the full rule set (rate limits, logging, VPN); this is the flow part it
    includes, and what the on-prem stack hands to its router VM.
    """
    lines = [
        "table inet ckms_flows {",
        "  chain forward {",
        "    type filter hook forward priority 0; policy drop;",
        "    ct state established,related accept",
    ]
    for f in env.flows:
        if not f.routed:
            continue
        src = ", ".join(f.src_cidrs)
        dst = ", ".join(f.dst_cidrs)
        if not src or not dst:
            continue
        lines.append(
            f"    ip saddr {{ {src} }} ip daddr {{ {dst} }} {f.proto} dport {f.port} ct state new accept"
            f'  comment "{f.name}"'
        )
    lines += ['    log prefix "ckms-drop " counter drop', "  }", "}"]
    return "\n".join(lines) + "\n"
