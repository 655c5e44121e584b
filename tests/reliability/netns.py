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
