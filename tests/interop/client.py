#!/usr/bin/env python3
"""A real XMPP client (slixmpp) that fedgate's tests drive through `Client` in
tests/interop/client.rs: the interop tests log it in on Prosody and ejabberd (and on fedgate's
core), the core's integration tests (tests/integration/core.rs) on the core.

It signs in as its arguments say, then reads commands from stdin and writes events to stdout,
one JSON object per line each way, so that the Rust test decides what to send and asserts on
everything that arrives. Commands are read only once signed in, so none is sent before the
session exists.

Arguments: --jid, --password, --host (an address: no DNS) and --port; --ca FILE verifies the
server's certificate against that CA for the JID's domain (without it the certificate is not
checked: the interop peers' c2s certificates are self-signed); --mode starttls|direct (XEP-0368);
--mech forces a SASL mechanism; --like-a-user gets the roster and sends initial presence before
reporting online, and accepts subscription requests (asking back), as a person clicking "allow"
would; without it the test does each of these itself.

Commands (stdin), each run as its own task in the order read; {"event": "done", "cmd": C}
follows when it completed:
  {"cmd": "message", "to": JID, "body": TEXT, "type": "chat", "id": ID, "from": JID}
  {"cmd": "burst", "to": JID, "prefix": P, "count": N}   messages P0..P{N-1}, body = index
  {"cmd": "presence", "priority": N, "show": S, "status": T}   (all optional)
  {"cmd": "unavailable"}
  {"cmd": "directed", "to": JID, "type": null|"unavailable"}
  {"cmd": "subscription", "to": JID, "type": "subscribe|subscribed|unsubscribe|unsubscribed"}
  {"cmd": "roster_get"}
  {"cmd": "roster_set", "jid": JID, "name": NAME, "groups": [..]}
  {"cmd": "roster_remove", "jid": JID}
  {"cmd": "iq", "to": JID, "xml": "<query xmlns='...'/>", "type": "get"}
  {"cmd": "disco", "to": JID, "tag": T}                   disco#info get
  {"cmd": "ping", "to": JID, "tag": T}                    XEP-0199 ping
  {"cmd": "quit"}                                         (also at the end of stdin)
  Message carbons and archives (XEP-0280, XEP-0313; tests/integration/core_mam.rs):
  {"cmd": "carbons", "enable": true|false}                enable or disable carbons
  {"cmd": "mam", "tag": T, "with": JID, "max": N}         pages through the whole archive
                                                          (with optional) N per page

Events (stdout):
  {"event": "online", "jid": FULL_JID, "mechanism": NAME}
  {"event": "message", "from", "to", "id", "type", "body", "delay": bool, "condition", "text"}
  {"event": "presence", "from", "to", "type", "show", "status", "priority", "condition", "text"}
  {"event": "roster", "items": {JID: {"subscription", "ask", "name", "groups"}}}
  {"event": "roster_push", "jid", "subscription", "ask"}
  {"event": "iq_result", "type": "result"|"error"|"timeout", "xml", "condition"}
  {"event": "result", "tag", "type": "result"|"error"|"timeout", "condition", "text",
   "identities": [[category, type, name]], "features": [...]}     (disco and ping)
  {"event": "sent", "prefix": P, "count": N}
  {"event": "carbon", "direction": "received"|"sent", "from": WRAPPER_FROM,
   "msg_from", "msg_to", "id", "body"}                     a carbon copy (XEP-0280)
  {"event": "mam", "tag": T, "messages": [{"id", "from", "to", "body", "msg_id"}]}
  {"event": "done", "cmd": C} / {"event": "command_failed", "cmd": C, "error": E}
  {"event": "disconnected", "reason": ...}
  {"event": "failed", "why": ...}   sign-in failed ("auth": wrong credentials)
  {"event": "connect_failed", "why": ...}   a connection attempt failed (slixmpp retries)
"""

import argparse
import asyncio
import json
import logging
import ssl
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def error_of(stanza):
    """The stanza error condition and text, if the stanza is an error."""
    if stanza["type"] != "error":
        return None, None
    err = stanza["error"]
    return err["condition"] or None, err["text"] or None


class Client(slixmpp.ClientXMPP):
    def __init__(self, args):
        super().__init__(args.jid, args.password, sasl_mech=args.mech)
        self.like_a_user = args.like_a_user
        # Resolved when the stream ends: the process exits then (a stopped server ends it).
        self.done = asyncio.get_running_loop().create_future()
        # asyncio keeps only weak references to tasks: a pending task nobody holds can be
        # garbage-collected mid-flight, so every task we start is kept here until it ends.
        self.tasks = set()
        self.mechanism = None
        if args.ca:
            # Verified for real, for the JID's domain.
            self.ca_certs = args.ca
        else:
            self.ssl_context.check_hostname = False
            self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = args.mode == "direct"
        self.enable_starttls = args.mode == "starttls"
        self.enable_plaintext = False
        self["feature_mechanisms"].unencrypted_plain = False
        # Accept subscription requests and ask back, or leave them to the test.
        self.roster.auto_authorize = True if args.like_a_user else None
        self.roster.auto_subscribe = args.like_a_user
        self.register_plugin("xep_0030")  # disco: answers disco#info, asks it
        self.register_plugin("xep_0199", {"keepalive": False})  # answers and sends pings
        self.register_plugin("xep_0203")  # delayed delivery
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("auth_success", self.on_auth)
        # slixmpp raises "message" for messages with a body (errors included) and
        # "message_error" for every error, with or without a body: each is reported once.
        self.add_event_handler(
            "message", lambda msg: msg["type"] != "error" and self.on_message(msg)
        )
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("roster_update", self.on_roster_update)
        self.add_event_handler("failed_auth", lambda _: emit(event="failed", why="auth"))
        self.add_event_handler(
            "connection_failed", lambda e: emit(event="connect_failed", why=str(e))
        )
        self.add_event_handler("disconnected", self.on_disconnected)
        self.carbons_and_archives()

    def on_auth(self, _):
        mech = getattr(self["feature_mechanisms"], "mech", None)
        self.mechanism = getattr(mech, "name", None)

    async def on_start(self, _):
        if self.like_a_user:
            await self.get_roster()
            self.send_presence()
        emit(event="online", jid=str(self.boundjid), mechanism=self.mechanism)
        self.spawn(commands(self))

    def spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_message(self, msg):
        condition, text = error_of(msg)
        emit(
            event="message",
            **{"from": str(msg["from"])},
            to=str(msg["to"]),
            id=msg["id"],
            type=msg["type"],
            body=msg["body"],
            delay=msg.xml.find("{urn:xmpp:delay}delay") is not None,
            condition=condition,
            text=text,
        )

    def on_presence(self, pres):
        condition, text = error_of(pres)
        emit(
            event="presence",
            **{"from": str(pres["from"])},
            to=str(pres["to"]),
            type=pres["type"],
            show=pres["show"],
            status=pres["status"],
            priority=pres["priority"],
            condition=condition,
            text=text,
        )

    def on_roster_update(self, iq):
        for jid, item in iq["roster"]["items"].items():
            emit(
                event="roster_push",
                jid=str(jid),
                subscription=item["subscription"],
                ask=item["ask"],
            )

    def on_disconnected(self, reason):
        emit(event="disconnected", reason=str(reason))
        if not self.done.done():
            self.done.set_result(None)

    async def command(self, cmd):
        kind = cmd["cmd"]
        try:
            if kind == "message":
                m = self.make_message(
                    mto=cmd["to"], mbody=cmd.get("body"), mtype=cmd.get("type", "chat")
                )
                if cmd.get("id"):
                    m["id"] = cmd["id"]
                if cmd.get("from"):
                    m["from"] = cmd["from"]
                m.send()
            elif kind == "burst":
                prefix, to = cmd["prefix"], cmd["to"]
                for i in range(cmd["count"]):
                    m = self.make_message(mto=to, mbody=str(i), mtype="chat")
                    m["id"] = f"{prefix}{i}"
                    m.send()
                    if i % 500 == 499:
                        # Let the send queue drain so the event loop stays responsive.
                        await asyncio.sleep(0)
                emit(event="sent", prefix=prefix, count=cmd["count"])
            elif kind == "presence":
                self.send_presence(
                    ppriority=cmd.get("priority"),
                    pshow=cmd.get("show"),
                    pstatus=cmd.get("status"),
                )
            elif kind == "unavailable":
                self.send_presence(ptype="unavailable")
            elif kind == "directed":
                self.send_presence(pto=cmd["to"], ptype=cmd.get("type"))
            elif kind == "subscription":
                self.send_presence(pto=cmd["to"], ptype=cmd["type"])
            elif kind == "roster_get":
                iq = await self.get_roster()
                items = {}
                for jid, item in iq["roster"]["items"].items():
                    items[str(jid)] = {
                        "subscription": item["subscription"],
                        "ask": item["ask"],
                        "name": item["name"],
                        "groups": sorted(item["groups"]),
                    }
                emit(event="roster", items=items)
            elif kind == "roster_set":
                await self.update_roster(
                    cmd["jid"], name=cmd.get("name"), groups=cmd.get("groups", [])
                )
            elif kind == "roster_remove":
                await self.del_roster_item(cmd["jid"])
            elif kind == "iq":
                iq = self.make_iq(ito=cmd["to"], itype=cmd.get("type", "get"))
                iq.append(ET.fromstring(cmd["xml"]))
                try:
                    reply = await iq.send(timeout=10)
                    emit(event="iq_result", type=reply["type"], xml=str(reply))
                except IqError as e:
                    emit(event="iq_result", type="error", xml=str(e.iq), condition=e.condition)
                except IqTimeout:
                    emit(event="iq_result", type="timeout", xml="")
            elif kind in ("disco", "ping"):
                await self.query(kind, cmd["to"], cmd["tag"])
            elif kind == "carbons":
                await self.carbons(cmd)
            elif kind == "mam":
                await self.mam(cmd)
            elif kind == "quit":
                self.disconnect(wait=2.0)
                return
            else:
                raise ValueError(f"unknown command {kind}")
            emit(event="done", cmd=kind)
        except Exception as e:  # the test sees it rather than a hang
            emit(event="command_failed", cmd=kind, error=repr(e))

    # ---- XEP-0280 carbons and XEP-0313 archives (tests/integration/core_mam.rs) ----

    def carbons_and_archives(self):
        self.register_plugin("xep_0280")
        self.register_plugin("xep_0313")
        for direction in ("received", "sent"):
            self.add_event_handler(
                f"carbon_{direction}",
                lambda msg, d=direction: self.on_carbon(d, msg),
            )

    def on_carbon(self, direction, msg):
        inner = msg[f"carbon_{direction}"]
        emit(
            event="carbon",
            direction=direction,
            **{"from": str(msg["from"])},
            msg_from=str(inner["from"]),
            msg_to=str(inner["to"]),
            id=inner["id"],
            body=inner["body"],
        )

    async def carbons(self, cmd):
        if cmd.get("enable", True):
            await self.plugin["xep_0280"].enable()
        else:
            await self.plugin["xep_0280"].disable()

    async def mam(self, cmd):
        messages = []
        with_jid = slixmpp.JID(cmd["with"]) if cmd.get("with") else None
        async for result in self.plugin["xep_0313"].iterate(
            with_jid=with_jid, rsm={"max": cmd.get("max", 10)}
        ):
            inner = result["mam_result"]["forwarded"]["stanza"]
            messages.append(
                {
                    "id": result["mam_result"]["id"],
                    "from": str(inner["from"]),
                    "to": str(inner["to"]),
                    "body": inner["body"],
                    "msg_id": inner["id"],
                }
            )
        emit(event="mam", tag=cmd.get("tag"), messages=messages)

    async def query(self, kind, to, tag):
        try:
            if kind == "disco":
                iq = await self.plugin["xep_0030"].get_info(jid=to, local=False, cached=False, timeout=20)
                info = iq["disco_info"]
                emit(
                    event="result",
                    tag=tag,
                    type="result",
                    identities=[[i[0], i[1], i[3]] for i in info["identities"]],  # (category, type, lang, name)
                    features=sorted(info["features"]),
                )
            else:
                await self.plugin["xep_0199"].send_ping(to, timeout=20)
                emit(event="result", tag=tag, type="result")
        except IqError as e:
            condition, text = error_of(e.iq)
            emit(event="result", tag=tag, type="error", condition=condition, text=text)
        except IqTimeout:
            emit(event="result", tag=tag, type="timeout")


async def commands(client):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            client.disconnect(wait=1.0)
            return
        if not line.strip():
            continue
        cmd = json.loads(line)
        print(f"command: {cmd}", file=sys.stderr, flush=True)
        client.spawn(client.command(cmd))
        if cmd["cmd"] == "quit":
            return


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--host", required=True, help="IP address of the server's c2s port")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--ca", help="verify the server's certificate against this CA file")
    parser.add_argument("--mode", choices=["starttls", "direct"], default="starttls")
    parser.add_argument("--mech", default=None)
    parser.add_argument("--like-a-user", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    client = Client(args)
    client.connect(host=args.host, port=args.port)
    await client.done


if __name__ == "__main__":
    asyncio.run(main())
