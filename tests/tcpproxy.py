"""A TCP forwarder for tests that need the database to misbehave: cut, refused or silent.

Point a worker at ``proxy.url(database_url)`` instead of the database and, while it runs:

- ``cut()``: close every open connection (both sides), as a restarted server or a failover would;
- ``refuse()`` / ``accept()``: close new connections at once (the server is down) / forward them again;
- ``down()`` / ``up()``: both of the above (cut and refuse) / accept again;
- ``stall()`` / ``resume()``: stop moving bytes without closing anything, as a half-open network does; new
  connections are accepted and stall too. Bytes sent meanwhile are delivered once resumed.
- ``stall_existing()``: stall only the connections open now (half-open sockets after, say, a NAT or firewall
  lost their state), while new connections are forwarded normally; ``resume()`` un-stalls them too.
- ``hold_replies(except_port)``: what clients send still reaches the server, what the server answers waits in the
  proxy, on every connection (later ones too) but the one the server sees coming from ``except_port``
  (pg_stat_activity's client_port); ``resume()`` delivers it. ``delivered(port)``: bytes that connection's client
  got so far.

One thread runs a select() loop over the listening socket and every connection; the control methods return once
that thread has applied them. Plain threads: the test process is not monkeypatched.
"""
import select
import socket
import threading

from psycopg2.extensions import make_dsn, parse_dsn

_CHUNK = 65536
_BUFFER_LIMIT = 1 << 20  # stop reading from one side while this much waits to be written to the other


class _Connection:
    def __init__(self, client, upstream):
        self.peer = {client: upstream, upstream: client}
        self.outgoing = {client: bytearray(), upstream: bytearray()}  # bytes waiting to be written to the key
        self.stalled = False  # set by stall_existing(): this connection alone moves no bytes
        self.client, self.upstream = client, upstream
        self.upstream_port = upstream.getsockname()[1] if upstream.family != socket.AF_UNIX else None
        self.delivered = 0  # bytes written to the client

    def sockets(self):
        return list(self.peer)

    def close(self):
        for sock in self.peer:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class TCPProxy:
    def __init__(self, target_host, target_port, host="127.0.0.1", port=0):
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._connections = []
        self._owner = {}  # socket -> _Connection
        self._commands = []
        self._lock = threading.Lock()
        self._stalled = False
        self._holding_except = False  # False, or the upstream port whose replies still go through (hold_replies)
        self._refusing = False
        self._running = False
        self._thread = None
        self.accepted = 0

    @classmethod
    def for_url(cls, url):
        """A proxy in front of the server a database URL (or libpq keyword string) points at."""
        params = parse_dsn(url)
        return cls(params.get("host") or "127.0.0.1", int(params.get("port") or 5432))

    def url(self, url, password=None):
        """`url` (a URL or libpq keyword string) pointed at this proxy, optionally with a password added."""
        params = parse_dsn(url)
        params.update(host=self.host, port=str(self.port))
        if password is not None:
            params["password"] = password
        return make_dsn(**params)

    def _connect_upstream(self):
        host, port = self.target
        if not host.startswith("/"):
            return socket.create_connection(self.target, timeout=5)
        # libpq's meaning of a host that starts with '/': the directory of the server's Unix socket (the
        # embedded server listens on one only).
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.settimeout(5)
        try:
            upstream.connect(f"{host}/.s.PGSQL.{port}")
        except OSError:
            upstream.close()
            raise
        return upstream

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self):
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"tcpproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is None:
            return
        self._running = False
        self._thread.join(10)
        self._thread = None
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        self._owner.clear()
        self._listener.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- faults -----------------------------------------------------------------------------------------

    def cut(self):
        """Close every open connection; later connections are forwarded (unless refusing)."""
        self._apply(self._cut)

    def refuse(self):
        self._apply(lambda: setattr(self, "_refusing", True))

    def accept(self):
        self._apply(lambda: setattr(self, "_refusing", False))

    def down(self):
        self._apply(lambda: (setattr(self, "_refusing", True), self._cut()))

    def up(self):
        self._apply(lambda: setattr(self, "_refusing", False))

    def stall(self):
        self._apply(lambda: setattr(self, "_stalled", True))

    def resume(self):
        self._apply(self._resume)

    def stall_existing(self):
        """Stall the connections open now (no byte moves, nothing is closed); later ones are forwarded."""
        self._apply(self._stall_existing)

    def _stall_existing(self):
        for connection in self._connections:
            connection.stalled = True

    def hold_replies(self, except_port):
        self._apply(lambda: setattr(self, "_holding_except", except_port))

    def delivered(self, port):
        return sum(c.delivered for c in list(self._connections) if c.upstream_port == port)

    def _held(self, connection, sock):
        return (self._holding_except is not False and sock is connection.client
                and connection.upstream_port != self._holding_except)

    def _resume(self):
        self._stalled = False
        self._holding_except = False
        for connection in self._connections:
            connection.stalled = False

    @property
    def connection_count(self):
        return len(self._connections)

    def _apply(self, command):
        done = threading.Event()
        with self._lock:
            self._commands.append((command, done))
        if not done.wait(10):
            raise RuntimeError("tcpproxy: its thread did not apply a command within 10s")

    # --- the loop ---------------------------------------------------------------------------------------

    def _loop(self):
        while self._running:
            with self._lock:
                commands, self._commands = self._commands, []
            for command, done in commands:
                command()
                done.set()
            readers, writers = [self._listener], []
            if not self._stalled:
                for connection in self._connections:
                    if connection.stalled:
                        continue
                    for sock, peer in connection.peer.items():
                        if len(connection.outgoing[peer]) < _BUFFER_LIMIT:
                            readers.append(sock)
                        if connection.outgoing[sock] and not self._held(connection, sock):
                            writers.append(sock)
            try:
                readable, writable, _ = select.select(readers, writers, [], 0.02)
            except (OSError, ValueError):
                self._drop_closed()
                continue
            for sock in readable:
                if sock is self._listener:
                    self._accept_one()
                elif sock in self._owner:
                    self._read(sock)
            for sock in writable:
                if sock in self._owner:
                    self._write(sock)

    def _accept_one(self):
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        if self._refusing:
            client.close()
            return
        try:
            upstream = self._connect_upstream()
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        connection = _Connection(client, upstream)
        self._connections.append(connection)
        for sock in connection.sockets():
            self._owner[sock] = connection

    def _read(self, sock):
        connection = self._owner[sock]
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._flush(connection, connection.peer[sock])
            self._close(connection)
            return
        connection.outgoing[connection.peer[sock]].extend(data)

    def _write(self, sock):
        connection = self._owner[sock]
        buffer = connection.outgoing[sock]
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        del buffer[:sent]
        if sock is connection.client:
            connection.delivered += sent

    @staticmethod
    def _flush(connection, sock):
        """One side hung up: what it sent before (a FATAL message, say) still reaches the other side."""
        try:
            sock.settimeout(1)
            sock.sendall(connection.outgoing[sock])
        except OSError:
            pass

    def _close(self, connection):
        connection.close()
        if connection in self._connections:
            self._connections.remove(connection)
        for sock in connection.sockets():
            self._owner.pop(sock, None)

    def _cut(self):
        for connection in list(self._connections):
            self._close(connection)

    def _drop_closed(self):
        for connection in list(self._connections):
            if any(sock.fileno() < 0 for sock in connection.sockets()):
                self._close(connection)
