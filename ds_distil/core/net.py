"""Which host a rank runs on, and which network interface gloo uses between hosts.

gloo (torch.distributed's CPU backend) binds each rank to the address its host *name* resolves to, unless
GLOO_SOCKET_IFNAME names an interface, and tells the other ranks that address. Where the name resolves to a loopback
address (Debian and Ubuntu write `127.0.1.1 <hostname>` into /etc/hosts) the ranks of the other hosts are told
127.0.1.1 and connect to their own loopback: "Gloo connectFullMesh failed ... Connection refused, remote=[127.0.1.1]",
the classic first failure across nodes. So, where the user did not choose, a multi-rank run takes the interface
through which this host reaches MASTER_ADDR (the first host of the job, which every rank reaches): the interface its
peers reach it by. NCCL chooses its interface itself (it skips `lo` and `docker*`); NCCL_SOCKET_IFNAME overrides it.
"""

from __future__ import annotations

import ipaddress
import os
import socket

GLOO_IFNAME = "GLOO_SOCKET_IFNAME"


def host_name() -> str:
    return socket.gethostname()


def resolve(name: str) -> str | None:
    """The first address `name` resolves to on this host (hosts file, DNS), or None."""
    try:
        return socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError, UnicodeError):
        return None


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def route_source(address: str) -> str | None:
    """This host's own address on the route to `address` (what the kernel would send from; nothing is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))  # UDP: no packet leaves, the kernel only picks the route
            return s.getsockname()[0]
    except OSError:
        return None


def interfaces() -> dict[str, list[str]]:
    """Up interfaces and their IP addresses: {"eth0": ["192.168.1.5", ...]}."""
    import psutil

    stats = psutil.net_if_stats()
    out = {}
    for name, addrs in psutil.net_if_addrs().items():
        ips = [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        if ips and name in stats and stats[name].isup:
            out[name] = ips
    return out


def interface_of(address: str) -> str | None:
    return next((name for name, ips in interfaces().items() if address in ips), None)


def default_route_interface() -> str | None:
    """The interface of the IPv4 default route (/proc/net/route), or None."""
    try:
        for line in open("/proc/net/route").read().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 1 and fields[1] == "00000000":
                return fields[0]
    except OSError:
        pass
    return None


def choose_gloo_interface(env=os.environ) -> tuple[str | None, str]:
    """Set GLOO_SOCKET_IFNAME for a multi-rank run where the user did not, and say why: (interface or None, reason).

    The interface that holds this host's address on the route to MASTER_ADDR. On the first host itself, whose name
    may resolve to a loopback address there (and MASTER_ADDR with it), the interface of the default route, else the
    only interface with a non-loopback address. Left alone: an interface the user set, one rank, a MASTER_ADDR that
    is a loopback address by name (every rank on this host), or a host where none of this finds an interface."""
    chosen = env.get(GLOO_IFNAME)
    if chosen:
        return chosen, f"{GLOO_IFNAME}={chosen}, as set"
    env.pop(GLOO_IFNAME, None)  # set but empty: as if unset (torch would take "" for an interface name)
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return None, "one rank"
    master = env.get("MASTER_ADDR", "")
    if master in ("", "localhost") or is_loopback(master):
        return None, f"MASTER_ADDR={master or '(unset)'}: every rank on this host; gloo's own choice"
    target = resolve(master)
    if target is None:
        return None, f"MASTER_ADDR={master} does not resolve on this host; gloo's own choice"
    source = route_source(target)
    name = interface_of(source) if source and not is_loopback(source) else None
    if name is not None:
        why = f"the interface that reaches MASTER_ADDR {master} ({target}) from {source}"
    else:  # this is the first host, and its name resolves to a loopback address here
        name = default_route_interface()
        others = [n for n, ips in interfaces().items() if any(not is_loopback(ip) for ip in ips)]
        if name not in others:
            name = others[0] if len(others) == 1 else None
        if name is None:
            return None, (f"MASTER_ADDR {master} is this host ({target}) and its interfaces are {sorted(others)}: no single one "
                          f"to choose; gloo's own choice (set {GLOO_IFNAME} to the interface the other hosts reach this one by)")
        why = f"MASTER_ADDR {master} is {target} here: the interface of the other hosts' traffic"
    env[GLOO_IFNAME] = name
    return name, why + f" ({GLOO_IFNAME} chooses another)"


def where(iface: str | None = None) -> str:
    """'host node2 (192.168.213.2)': this host's name and the address it is reached by (the interface's, if given)."""
    name = host_name()
    ips = interfaces().get(iface or "", []) if iface else []
    address = next((ip for ip in ips if ":" not in ip), ips[0] if ips else None) or resolve(name) or "?"
    return f"host {name} ({address})"
