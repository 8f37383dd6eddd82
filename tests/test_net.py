"""Which interface gloo uses between hosts (ds_distil.core.net), on a made-up host: its interfaces, routes and name
resolution replaced. tests/test_multihost.py runs the real thing across network namespaces."""

from __future__ import annotations

import pytest

from ds_distil.core import net

# a host with a loopback, one link (192.168.1.5) and a docker bridge; its own name resolves to 127.0.1.1 (Debian)
IFACES = {"lo": ["127.0.0.1", "::1"], "eth0": ["192.168.1.5", "fe80::1"], "docker0": ["172.17.0.1"]}
NAMES = {"node1": "192.168.1.5", "node2": "192.168.1.6", "here": "127.0.1.1"}


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setattr(net, "interfaces", lambda: IFACES)
    monkeypatch.setattr(net, "resolve", lambda name: NAMES.get(name, name if name[0].isdigit() else None))
    # the kernel's choice of source address: loopback from loopback, a local address its own source, the rest through eth0
    monkeypatch.setattr(net, "route_source", lambda a: "127.0.0.1" if net.is_loopback(a) else a if any(a in ips for ips in IFACES.values())
                        else "192.168.1.5")
    monkeypatch.setattr(net, "default_route_interface", lambda: "eth0")


def choose(**env):
    env = {"WORLD_SIZE": "4", **env}
    return net.choose_gloo_interface(env), env


def test_the_interface_that_reaches_the_first_host_is_chosen(host):
    (iface, why), env = choose(MASTER_ADDR="node2")
    assert iface == "eth0" == env["GLOO_SOCKET_IFNAME"] and "reaches MASTER_ADDR node2 (192.168.1.6) from 192.168.1.5" in why
    (iface, _), env = choose(MASTER_ADDR="node1")  # the first host itself, by its real address
    assert iface == env["GLOO_SOCKET_IFNAME"] == "eth0"


def test_on_the_first_host_whose_name_is_loopback_the_link_of_the_other_hosts_is_chosen(host, monkeypatch):
    (iface, why), env = choose(MASTER_ADDR="here")
    assert iface == "eth0" and "is 127.0.1.1 here" in why
    monkeypatch.setattr(net, "default_route_interface", lambda: None)  # no default route: the one interface with an address
    monkeypatch.setattr(net, "interfaces", lambda: {"lo": ["127.0.0.1"], "ib0": ["10.0.0.7"]})
    assert choose(MASTER_ADDR="here")[0][0] == "ib0"
    monkeypatch.setattr(net, "interfaces", lambda: IFACES)  # two of them: no guess, and the way out is named
    (iface, why), env = choose(MASTER_ADDR="here")
    assert iface is None and "GLOO_SOCKET_IFNAME" not in env and "set GLOO_SOCKET_IFNAME" in why


def test_a_users_choice_one_rank_and_a_loopback_master_are_left_alone(host):
    (iface, why), env = choose(MASTER_ADDR="node2", GLOO_SOCKET_IFNAME="ib0")
    assert iface == "ib0" == env["GLOO_SOCKET_IFNAME"] and "as set" in why
    (iface, _), env = choose(MASTER_ADDR="node2", GLOO_SOCKET_IFNAME="")  # empty: unset, not an interface called ""
    assert iface == "eth0" == env["GLOO_SOCKET_IFNAME"]
    for master in ("127.0.0.1", "localhost", "::1"):
        (iface, _), env = choose(MASTER_ADDR=master)
        assert iface is None and "GLOO_SOCKET_IFNAME" not in env, master
    assert choose(MASTER_ADDR="node2", WORLD_SIZE="1")[0][0] is None
    (iface, why), _ = choose(MASTER_ADDR="nowhere")
    assert iface is None and "does not resolve" in why


def test_this_hosts_interfaces_and_routes_are_read():
    """On this machine: its loopback is found, and a route to the loopback leaves from a loopback address."""
    ifaces = net.interfaces()
    assert any("127.0.0.1" in ips for ips in ifaces.values())
    assert net.is_loopback(net.route_source("127.0.0.1")) and net.interface_of("127.0.0.1") in ifaces
    assert net.is_loopback("127.0.1.1") and not net.is_loopback("192.168.1.5") and not net.is_loopback("node1")
