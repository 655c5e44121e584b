"""A TCP forwarder that delays every byte by a fixed one-way latency, each direction: the test bed's stand-in for
`tc netem delay` on kernels without sch_netem.

One asyncio loop in a thread of its own forwards every connection; what it reads is written `delay` seconds later
(timers of one delay fire in the order they were set, so the stream keeps its order). No bandwidth limit and no
backpressure: fine for PostgreSQL's small messages. Its own CPU is the machine's, so compare figures taken through
it with each other (0 ms through the proxy is the baseline), not with direct connections.
"""
import asyncio
import threading


class DelayProxy:
    def __init__(self, listen_host, target_host, target_port, delay):
        self.listen_host, self.target = listen_host, (target_host, target_port)
        self.delay = delay
        self.port = None
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def start(self):
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("delay proxy did not start")
        return self

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, self.listen_host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _client(self, reader, writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))

    async def _pump(self, reader, writer):
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                loop.call_later(self.delay, _write, writer, data)
        except OSError:
            pass
        loop.call_later(self.delay, writer.close)

    def stop(self):
        if not self._thread.is_alive():
            return

        def shutdown():
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)


def _write(writer, data):
    if not writer.is_closing():
        writer.write(data)
