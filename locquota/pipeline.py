"""The keystone strategy's start-up check: the .ini's pipeline must put keystonemiddleware's auth_token in front.

Identity under the keystone strategy comes only from what auth_token leaves in the WSGI environ
(locquota.identity), so without the filter no request is ever authenticated. That is safe, but a
deployment that forgot the filter would answer 401 to everyone: refusing to start says why at once.
"""

import configparser
from collections.abc import Mapping

from locquota.settings import SettingsError

AUTH_TOKEN_USES = {"egg:keystonemiddleware#auth_token", "egg:keystonemiddleware", "egg:locquota#auth_token"}
AUTH_TOKEN_FACTORIES = {
    "keystonemiddleware.auth_token:filter_factory",
    "locquota.keystone:filter_factory",
}
LOCQUOTA_USES = {"egg:locquota", "egg:locquota#main", "call:locquota.app:main"}
APP_SECTION = "locquota"  # the app's own section: what the CLI loads, beside the pipeline the server runs


def require_auth_token(global_config: Mapping[str, str]) -> None:
    """Raise SettingsError unless some pipeline of the .ini runs auth_token, then a locquota app."""
    path = global_config.get("__file__")
    if not path:
        raise SettingsError(
            "locquota.auth_strategy = keystone: load the app from a PasteDeploy .ini whose pipeline puts "
            "keystonemiddleware's auth_token filter in front of it (see production.ini)"
        )
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    for section in parser.sections():
        if not section.startswith("pipeline:"):
            continue
        *filters, app = parser.get(section, "pipeline", fallback="").split() or [""]
        if _is_locquota(parser, app) and any(_is_auth_token(parser, name) for name in filters):
            return
    raise SettingsError(
        f"locquota.auth_strategy = keystone, but no pipeline in {path} puts keystonemiddleware's auth_token "
        "filter in front of the locquota app: every request would be anonymous. Add "
        f"`[pipeline:main] pipeline = authtoken {APP_SECTION}` and a [filter:authtoken] section (docs/configuration.md)"
    )


def _is_auth_token(parser: configparser.ConfigParser, name: str) -> bool:
    section = f"filter:{name}"
    if not parser.has_section(section):
        return False
    use = parser.get(section, "use", fallback="").strip()
    factory = parser.get(section, "paste.filter_factory", fallback="").strip()
    return use in AUTH_TOKEN_USES or factory in AUTH_TOKEN_FACTORIES


def _is_locquota(parser: configparser.ConfigParser, name: str) -> bool:
    section = f"app:{name}"
    return parser.has_section(section) and parser.get(section, "use", fallback="").strip() in LOCQUOTA_USES


def app_section_of(config_uri: str) -> str:
    """The URI the CLI should load: the app's own section when the .ini serves it through a pipeline.

    pyramid.paster.bootstrap on a pipeline gets the filter, not the app behind it.
    """
    if "#" in config_uri:
        return config_uri
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(config_uri)
    if parser.has_section(f"app:{APP_SECTION}") and not parser.has_section("app:main"):
        return f"{config_uri}#{APP_SECTION}"
    return config_uri
