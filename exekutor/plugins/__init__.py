"""Bundled plugins, loaded by name with `exekutor.load_plugin(name)`."""
import importlib

from exekutor.errors import PluginError

PLUGINS = {"sentry": ("exekutor.plugins.sentry", "sentry-sdk", "exekutor-gevent[sentry]")}


def load(name):
    if name not in PLUGINS:
        raise PluginError(f"unknown exekutor plugin {name!r}; available: {', '.join(sorted(PLUGINS))}")
    module_name, library, extra = PLUGINS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(f"the {name} plugin needs {library}: pip install '{extra}' ({error})") from None
    return module.install()
