"""The gevent worker: listener, provider, executor, completer and heartbeat around one Worker."""
from exekutor.worker.worker import Worker

__all__ = ["Worker"]
