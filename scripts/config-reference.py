#!/usr/bin/env python3
"""Writes docs/config-reference.md: every configuration key with its default and its meaning.

The meaning is the key's doc comment in the config structs (src/config.rs, src/core/config.rs,
src/logging.rs); the default is what `fedgate check config` prints for a minimal file, that is
the struct's `Default`. Run it after changing a key (from the repository root, with a built
binary): `scripts/config-reference.py`. The test
`binary::every_config_key_is_in_the_reference_and_the_example` fails when the file is stale.
"""
import os
import re
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["src/config/mod.rs", "src/config/s2s.rs", "src/config/dns.rs", "src/config/federation.rs", "src/config/tls.rs", "src/config/component.rs", "src/config/metrics.rs", "src/core/config.rs", "src/logging.rs", "src/muc/config.rs", "src/upload/config.rs", "src/services.rs"]
# (heading, the struct, whether it is a list of tables)
SECTIONS = [
    ("s2s", "S2sConfig", False),
    ("s2s.route", "RouteConfig", True),
    ("dns", "DnsConfig", False),
    ("federation", "FederationConfig", False),
    ("federation.peer", "PeerConfig", True),
    ("tls", "TlsConfig", False),
    ("tls.certificate", "CertificateConfig", True),
    ("component", "ComponentConfig", False),
    ("component.backend", "BackendConfig", True),
    ("metrics", "MetricsConfig", False),
    ("core", "CoreConfig", False),
    ("core.domain", "DomainConfig", True),
    ("core.stun", "ExternalService", True),
    ("core.turn", "ExternalService", True),
    ("muc", "MucConfig", False),
    ("upload", "UploadConfig", False),
    ("log", "LogConfig", False),
    ("gateway", "GatewayLinkConfig", False),
]
# Sections only the standalone core's file (config/core.toml) or the services' file
# (config/services.toml) has, or has in its own way: (file, section, struct), headed
# `FILE [section]`; their defaults are the structs' own (none of them is in the gateway's
# effective configuration).
OTHER_FILE_SECTIONS = [
    ("core.toml", "metrics", "CoreMetricsConfig"),
    ("services.toml", "storage", "StorageConfig"),
]
# Lists of tables: each has a section of its own above.
TABLE_LISTS = {"s2s.route", "federation.peer", "tls.certificate", "component.backend",
               "core.domain", "core.stun", "core.turn"}
# Defaults that depend on other keys, in words.
DERIVED = {
    "s2s.direct_tls_listen": "the hosts of `listen`, port 5270",
    "core.direct_tls_listen": "the hosts of `listen`, port 5223",
    # `[gateway]` is in the standalone core's file only (config/core.toml).
    "gateway.address": '`"127.0.0.1:5347"`',
    "gateway.acknowledgements": "`true`",
    "gateway.max_unacked": "`4096`",
    "muc.domain": "required",
    "upload.domain": "required",
    "upload.url": "https:// + `domain` + the port of `listen`",
}
MINIMAL = """[muc]
domain = "conference.a.test"
[upload]
domain = "upload.a.test"
[[component.backend]]
domain = "a.test"
secret = "x"
[core]
[[core.domain]]
name = "a.test"
[[tls.certificate]]
domains = ["a.test", "upload.a.test"]
cert = "a.crt"
key = "a.key"
self_signed = true
"""


def field_docs():
    """(struct, field) -> doc comment text, from the `///` lines above each `pub field:`."""
    docs = {}
    for path in SOURCES:
        struct, comment = None, []
        for line in open(os.path.join(ROOT, path), encoding="utf-8"):
            s = line.strip()
            m = re.match(r"pub struct (\w+)", s)
            if m:
                struct = m.group(1)
            if s.startswith("///"):
                comment.append(s[3:].strip())
                continue
            m = re.match(r"pub (\w+):", s)
            if m and struct and line.startswith("    pub"):
                docs[(struct, m.group(1))] = " ".join(comment)
            if not s.startswith("#["):
                comment = []
    return docs


def defaults():
    """The effective configuration of a minimal file, as TOML values, paths made relative."""
    binary = os.path.join(ROOT, "target", "debug", "fedgate")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "fedgate.toml"), "w") as f:
            f.write(MINIMAL)
        out = subprocess.run([binary, "check", "config", "fedgate.toml"], cwd=d,
                             capture_output=True, text=True, check=True).stdout
    return tomllib.loads(out.replace("./", ""))


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"%s"' % v
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ValueError(v)


def main():
    docs = field_docs()
    values = defaults()
    out = ["# Configuration reference", "",
           "Every key of `fedgate.toml` (and of `core.toml`: `[core]`, `[gateway]`, its `[metrics]`; `services.toml` has `[muc]`, `[upload]`, `[gateway]` and its `[storage]`), its default and what it",
           "means. Written by `scripts/config-reference.py` from the config structs' doc comments and",
           "their defaults; a test fails when this page and the code disagree. The overview and the",
           "how-to are in [configuration](configuration.md).", ""]
    for section, struct, listed in SECTIONS:
        fields = [f for (s, f) in docs if s == struct]
        out.append("## `[[%s]]`" % section if listed else "## `[%s]`" % section)
        out.append("")
        out.append("| key | default | meaning |")
        out.append("| --- | --- | --- |")
        table = values
        for part in section.split("."):
            table = table.get(part, {}) if isinstance(table, dict) else {}
        for field in fields:
            key = "%s.%s" % (section, field)
            if key in TABLE_LISTS:
                continue
            if key in DERIVED:
                default = DERIVED[key]
            elif listed:
                default = "—"
            elif isinstance(table, dict) and field in table:
                default = "`%s`" % toml_value(table[field])
            else:
                default = "none"
            meaning = docs[(struct, field)].replace("|", "\\|")
            out.append("| `%s` | %s | %s |" % (field, default, meaning))
        out.append("")
    for file, section, struct in OTHER_FILE_SECTIONS:
        out.append("## `%s [%s]`" % (file, section))
        out.append("")
        out.append("| key | default | meaning |")
        out.append("| --- | --- | --- |")
        for field in [f for (s, f) in docs if s == struct]:
            meaning = docs[(struct, field)].replace("|", "\\|")
            out.append("| `%s` | none | %s |" % (field, meaning))
        out.append("")
    with open(os.path.join(ROOT, "docs", "config-reference.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
