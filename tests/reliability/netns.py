"""An address that swallows every packet: a Linux network namespace behind a veth pair whose far end is down,
with a permanent neighbour entry, so a connection attempt gets no answer at all (no refusal, no unreachable), as
from a machine that was switched off or cut off by a firewall. Needs root and `ip netns`.
"""
import contextlib
import os
import shutil
import subprocess


def unavailable():
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def _ip(*args, netns=None, check=True):
    command = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def blackhole(index=0):
    """Yields an IPv4 address nothing answers from; removes the namespace (and with it the veth pair) after."""
    tag = f"{os.getpid() % 100000}x{index}"
    netns, near, far = f"exkbh{tag}", f"exkb{tag}a", f"exkb{tag}b"
    subnet = 10 + os.getpid() % 200
    near_ip, far_ip = f"10.213.{subnet}.{4 * index + 1}", f"10.213.{subnet}.{4 * index + 2}"
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", far, "netns", netns)
        _ip("addr", "add", f"{near_ip}/30", "dev", near)
        _ip("link", "set", near, "up")
        mac = _ip("link", "show", far, netns=netns).stdout.split("link/ether ")[1].split()[0]
        # No ARP to fail: packets go out to a peer that is down and vanish.
        _ip("neigh", "replace", far_ip, "lladdr", mac, "dev", near, "nud", "permanent")
        yield far_ip
    finally:
        _ip("link", "del", near, check=False)
        _ip("netns", "del", netns, check=False)


class Host:
    """A simulated host: a network namespace joined to this one by a veth pair. The host reaches this namespace at
    `gateway` (where the test's PostgreSQL must listen too); `prefix` runs a command on the host; `cut()` drops the
    link (every packet lost, no reset: a partition), `join()` brings it back."""

    def __init__(self, index=0):
        tag = f"{os.getpid() % 100000}h{index}"
        self.netns, self.near, self.far = f"exkh{tag}", f"exkh{tag}a", f"exkh{tag}b"
        subnet = 10 + os.getpid() % 200
        self.gateway, self.address = f"10.214.{subnet}.{4 * index + 1}", f"10.214.{subnet}.{4 * index + 2}"
        self.prefix = ("ip", "netns", "exec", self.netns)

    def create(self):
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.near, "type", "veth", "peer", "name", self.far)
        _ip("link", "set", self.far, "netns", self.netns)
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.near)
        _ip("link", "set", self.near, "up")
        _ip("addr", "add", f"{self.address}/30", "dev", self.far, netns=self.netns)
        _ip("link", "set", self.far, "up", netns=self.netns)
        _ip("link", "set", "lo", "up", netns=self.netns)
        # Neighbours that never expire: while cut, packets vanish instead of failing ARP (no "unreachable" error).
        for ip, dev, peer_dev, netns in ((self.address, self.near, self.far, None),
                                         (self.gateway, self.far, self.near, self.netns)):
            mac = _ip("link", "show", peer_dev, netns=self.netns if netns is None else None).stdout
            _ip("neigh", "replace", ip, "lladdr", mac.split("link/ether ")[1].split()[0], "dev", dev, "nud",
                "permanent", netns=netns)
        return self

    def cut(self):
        # Packets from the host are dropped on arrival here; its own link stays up, so it sees no error, only silence.
        _ip("link", "set", self.near, "down")

    def join(self):
        _ip("link", "set", self.near, "up")

    def destroy(self):
        _ip("link", "del", self.near, check=False)
        _ip("netns", "del", self.netns, check=False)
