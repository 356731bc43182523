"""Every setting of the DICOM node in one dataclass, read from a YAML or JSON file (EXAMPLE) and overridable by
flags. In files and flags a caller may also be written "PACS@10.1.2.3,10.1.2.4" and a destination
"PACS@10.1.2.3:104"."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DICOM_PORT = 11112  # the port IANA registers for DICOM without privileges (104 needs root)
EXAMPLE = """\
  ae_title: CLIPT5                 # this node's AE title
  host: 127.0.0.1                  # the address to listen on; another one for a PACS on another machine
  port: 11112
  release: /models/cxr/best        # the release folder that drafts
  storage: /var/lib/cliptt5-node   # instances, results and the node's database
  study_complete_seconds: 30       # a study is complete this long after its last instance
  accept:                          # who may send: AE title, optionally only from these addresses
    - {ae_title: PACS, addresses: [10.1.2.3]}
  destinations:                    # where each result goes (every one of them)
    - {ae_title: PACS, host: 10.1.2.3, port: 104}
  tls: {certificate: node.crt, private_key: node.key, ca_certificates: hospital-ca.pem}   # optional
  prior_source: {ae_title: PACS, host: 10.1.2.3, port: 104}   # optional: asked for priors the node lacks
  # also: optimize, num_beams, max_new_tokens, refuse_ood, batch_size, max_instance_mb, retry_first_seconds,
  # retry_max_seconds, network_timeout_seconds, max_associations (each has a flag but the last two)
"""


class SettingsError(ValueError):
    """A setting the node cannot use; the message names it and says why, in one line."""


@dataclass(frozen=True)
class Caller:
    """An AE title allowed to send, from any address (`addresses` empty) or only from those listed."""

    ae_title: str
    addresses: tuple[str, ...] = ()

    def admits(self, ae_title: str, address: str) -> bool:
        return ae_title == self.ae_title and (not self.addresses or address in self.addresses)


@dataclass(frozen=True)
class Destination:
    """A DICOM Storage SCP the results are sent to; `tls`: over TLS (checked against tls.ca_certificates)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    @property
    def name(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsSettings:
    """The node's certificate and key (PEM) for TLS; `ca_certificates`: the certificates a peer's must be signed by
    (then a caller must present one: mutual TLS, as DICOM's TLS profiles have it)."""

    certificate: str
    private_key: str
    ca_certificates: str = ""


def _setting(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class NodeSettings:
    """The node's settings; the settings file's keys are these names (docs/node.md lists them with their flags)."""

    release: str = _setting("", "release folder (or Hub id already in the cache) of the model that drafts")
    storage: str = _setting("", "folder for received instances, results and the node's database")
    ae_title: str = _setting("CLIPT5", "this node's AE title")
    host: str = _setting("127.0.0.1", "address to listen on (127.0.0.1: this computer only)")
    port: int = _setting(DICOM_PORT, "port to listen on")
    accept: list[Caller] = field(default_factory=list, metadata={
        "help": "calling AE titles allowed to send, each optionally from listed addresses only"})
    destinations: list[Destination] = field(default_factory=list, metadata={
        "help": "where every result is sent (AE title, host, port)"})
    study_complete_seconds: float = _setting(30.0, "a study is complete after this many seconds without a new instance")
    optimize: bool = _setting(False, "draft on the CPU fast path (int8 weights, ONNX Runtime where installed)")
    num_beams: int | None = _setting(None, "beam search width (default: the release's generation config)")
    max_new_tokens: int | None = _setting(None, "longest draft in tokens (default: the release's generation config)")
    refuse_ood: bool = _setting(False, "send no result for studies unlike the model's training images (ood_flag)")
    batch_size: int = _setting(4, "complete studies drafted in one pass of the model")
    max_instance_mb: float = _setting(256.0, "refuse instances larger than this many MiB")
    retry_first_seconds: float = _setting(5.0, "wait before the first retry of a result its destination did not take")
    retry_max_seconds: float = _setting(300.0, "longest wait between retries (the wait doubles up to it)")
    network_timeout_seconds: float = _setting(30.0, "give up on a silent peer after this many seconds")
    max_associations: int = _setting(10, "associations served at once; more are rejected as congestion")
    tls: TlsSettings | None = _setting(None, "certificate, private_key and optionally ca_certificates (PEM files)")
    prior_source: Destination | None = _setting(
        None, "a Query/Retrieve SCP (usually the PACS, AE@HOST:PORT) asked for a study's prior when the node holds "
        "none: C-FIND of the patient's earlier studies, C-MOVE of the latest to this node (it must be in accept)")

    @property
    def max_instance_bytes(self) -> int:
        return int(self.max_instance_mb * (1 << 20))


FIELDS = {item.name: item for item in dataclasses.fields(NodeSettings)}


def check_ae_title(text, what="AE title") -> str:
    """An AE title as DICOM allows it (PS3.5 AE: 16 characters at most, no backslash or control characters, spaces
    at either end not significant)."""
    title = str(text).strip()
    if not title or len(title) > 16 or "\\" in title or not all(32 <= ord(char) < 127 for char in title):
        raise SettingsError(f"{what} {text!r} is not a DICOM AE title (1 to 16 printable ASCII characters, no "
                            "backslash)")
    return title


def parse_caller(value) -> Caller:
    """"PACS", "PACS@10.1.2.3,10.1.2.4" or {"ae_title": ..., "addresses": [...]}."""
    if isinstance(value, dict):
        unknown = set(value) - {"ae_title", "addresses"}
        if unknown:
            raise SettingsError(f"accept: unknown key(s) {sorted(unknown)} (ae_title, addresses)")
        title, addresses = value.get("ae_title", ""), value.get("addresses") or []
        addresses = [addresses] if isinstance(addresses, str) else addresses
    else:
        title, _, listed = str(value).partition("@")
        addresses = [address for address in listed.split(",") if address.strip()]
    return Caller(check_ae_title(title, "accept: calling AE title"), tuple(str(a).strip() for a in addresses))


def parse_destination(value) -> Destination:
    """"PACS@10.1.2.3:104" or {"ae_title": ..., "host": ..., "port": ..., "tls": false}."""
    if isinstance(value, dict):
        unknown = set(value) - {"ae_title", "host", "port", "tls"}
        if unknown:
            raise SettingsError(f"destinations: unknown key(s) {sorted(unknown)} (ae_title, host, port, tls)")
        title, host, port, tls = value.get("ae_title", ""), value.get("host", ""), value.get("port"), value.get("tls")
    else:
        title, _, address = str(value).partition("@")
        host, _, port = address.rpartition(":")
        tls = False
    host = str(host or "").strip().strip("[]")
    if not host:
        raise SettingsError(f"destination {value!r}: no host (write AE@HOST:PORT)")
    return Destination(check_ae_title(title, "destination AE title"), host, check_port(port, f"destination {value!r}"),
                       bool(tls))


def check_port(value, what) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what}: port {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"{what}: port {port} is not between 1 and 65535")
    return port


def read_settings_file(path) -> dict:
    """The file's settings as a dict; SettingsError for a missing file, bad YAML/JSON or an unknown setting."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise SettingsError(f"{path}: cannot read the settings file ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not YAML or JSON ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: settings must be a mapping of names to values")
    for name in values:
        if name not in FIELDS:
            close = difflib.get_close_matches(str(name), FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"{path}: unknown setting {name!r}{hint}")
    return values


def load_settings(path=None, overrides=None, serving=True) -> NodeSettings:
    """The settings of `path` (None: none), with `overrides` (the flags given, by field name) on top, checked.
    `serving`: check what serving needs (a release, callers, destinations); `status` needs the storage only."""
    # A relative path in the file is read from the file's folder, one in a flag from the current folder.
    sources = [(read_settings_file(path), Path(path).resolve().parent)] if path else []
    sources.append((overrides or {}, Path.cwd()))
    settings = NodeSettings()
    try:
        for values, base in sources:
            for name, value in values.items():
                if value is not None:  # an empty value in the file, a flag not given: the default stays
                    setattr(settings, name, convert(name, value, base))
    except (TypeError, ValueError) as error:
        raise SettingsError(str(error)) from None
    check(settings, serving)
    return settings


def convert(name, value, base):
    """A file's or flag's value as the field's type; relative paths in a file are read from the file's folder."""
    if name == "accept":
        return [parse_caller(item) for item in ([value] if isinstance(value, (str, dict)) else value)]
    if name == "destinations":
        return [parse_destination(item) for item in ([value] if isinstance(value, (str, dict)) else value)]
    if name == "prior_source":
        return value if isinstance(value, Destination) else parse_destination(value)
    if name == "tls":
        if isinstance(value, TlsSettings):
            return value
        if not isinstance(value, dict) or not {"certificate", "private_key"} <= set(value):
            raise SettingsError("tls: give certificate and private_key (PEM files), and optionally ca_certificates")
        return TlsSettings(**{key: str(resolve(base, path)) if path else "" for key, path in value.items()})
    if name == "storage":
        return str(resolve(base, str(value)))
    if name == "release":  # a folder, else a Hub id (model_sources says which when neither can be found)
        path = resolve(base, str(value))
        return str(path) if path.exists() else str(value)
    if name == "ae_title":
        return check_ae_title(value)
    if name == "port":
        return check_port(value, "port")
    if name in ("optimize", "refuse_ood"):
        if not isinstance(value, bool):
            raise SettingsError(f"{name}: true or false, not {value!r}")
        return value
    if name in ("num_beams", "max_new_tokens", "batch_size", "max_associations"):
        number = int(value)
        if number < 1:
            raise SettingsError(f"{name} must be at least 1, got {number}")
        return number
    if name in ("study_complete_seconds", "max_instance_mb", "retry_first_seconds", "retry_max_seconds",
                "network_timeout_seconds"):
        number = float(value)
        if number <= 0:
            raise SettingsError(f"{name} must be more than 0, got {number:g}")
        return number
    return str(value)


def resolve(base, text):
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def check(settings, serving):
    if not settings.storage:
        raise SettingsError("no storage folder (storage: in the settings file, or --storage)")
    if not serving:
        return
    if not settings.release:
        raise SettingsError("no release to draft with (release: in the settings file, or --release)")
    if not settings.accept:
        raise SettingsError("no calling AE title is accepted (accept: in the settings file, or --accept AE): the "
                            "node would refuse every sender")
    if not settings.destinations:
        raise SettingsError("no destination for the results (destinations: in the settings file, or --destination "
                            "AE@HOST:PORT)")
    if settings.retry_max_seconds < settings.retry_first_seconds:
        raise SettingsError("retry_max_seconds must be at least retry_first_seconds")
    if settings.tls:
        for what in ("certificate", "private_key", "ca_certificates"):
            path = getattr(settings.tls, what)
            if path and not Path(path).is_file():
                raise SettingsError(f"tls: {what} {path} is not a file")
    source = settings.prior_source
    if source is not None and not any(caller.ae_title == source.ae_title for caller in settings.accept):
        raise SettingsError(f"prior_source {source.name}: add {source.ae_title} to accept, since the prior's "
                            "instances come from it (C-MOVE)")
    if any(peer.tls for peer in [*settings.destinations, *([source] if source else [])]) and not settings.tls:
        raise SettingsError("a destination asks for TLS but the node has no tls: settings (certificate, private_key, "
                            "ca_certificates)")
