#!/usr/bin/env python3
"""A real XMPP client (slixmpp) on a Prosody or ejabberd account, driven by fedgate's interop
tests (tests/interop/client.rs).

It logs in over c2s at a fixed address (no DNS: the test gives the IP and port), then reads
commands from stdin and writes events to stdout, one JSON object per line each way, so that the
Rust test decides what to send and asserts on everything that arrives.

Commands (stdin):
  {"cmd": "message", "to": JID, "id": ID, "body": TEXT}
  {"cmd": "burst", "to": JID, "prefix": P, "count": N}   messages P0..P{N-1}, body = index
  {"cmd": "disco", "to": JID, "tag": T}                   disco#info get
  {"cmd": "ping", "to": JID, "tag": T}                    XEP-0199 ping
  {"cmd": "subscribe", "to": JID}                         presence subscription request
  {"cmd": "quit"}

Events (stdout):
  {"event": "online", "jid": FULL_JID}
  {"event": "message", "from", "to", "id", "type", "body", "condition", "text"}
  {"event": "presence", "from", "to", "type", "condition", "text"}
  {"event": "result", "tag", "type": "result"|"error"|"timeout", "condition", "text",
   "identities": [[category, type, name]], "features": [...]}
  {"event": "sent", "prefix": P, "count": N}
  {"event": "disconnected", "reason": ...}
  {"event": "failed", "why": ...}   login failed
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

STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"


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
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # Resolved when the stream ends: the process exits then (a stopped server ends it).
        self.done = asyncio.get_running_loop().create_future()
        # asyncio keeps only weak references to tasks: a pending task nobody holds can be
        # garbage-collected mid-flight, so every task we start is kept here until it ends.
        self.tasks = set()
        self.register_plugin("xep_0030")  # disco: answers disco#info, asks it
        self.register_plugin("xep_0199", {"keepalive": False})  # answers and sends pings
        # Accept subscription requests (and ask back), as a user who clicks "allow" would.
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = True
        self.add_event_handler("session_start", self.on_start)
        # slixmpp raises "message" for messages with a body (errors included) and
        # "message_error" for every error, with or without a body: each is reported once.
        self.add_event_handler(
            "message", lambda msg: msg["type"] != "error" and self.on_message(msg)
        )
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("failed_auth", lambda _: emit(event="failed", why="auth"))
        self.add_event_handler("disconnected", self.on_disconnected)

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        emit(event="online", jid=str(self.boundjid))
        # Commands are read only once logged in, so none is sent before the session exists.
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
            condition=condition,
            text=text,
        )

    def on_disconnected(self, reason):
        emit(event="disconnected", reason=str(reason))
        if not self.done.done():
            self.done.set_result(None)

    async def command(self, cmd):
        kind = cmd["cmd"]
        if kind == "message":
            m = self.make_message(mto=cmd["to"], mbody=cmd["body"], mtype="chat")
            m["id"] = cmd["id"]
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
        elif kind in ("disco", "ping"):
            self.spawn(self.query(kind, cmd["to"], cmd["tag"]))
        elif kind == "subscribe":
            self.send_presence(pto=cmd["to"], ptype="subscribe")
        elif kind == "quit":
            self.disconnect(wait=2.0)
        else:
            emit(event="failed", why=f"unknown command {kind}")

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
        cmd = json.loads(line)
        print(f"command: {cmd}", file=sys.stderr, flush=True)
        await client.command(cmd)
        if cmd["cmd"] == "quit":
            return


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--host", required=True, help="IP address of the server's c2s port")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    client = Client(args.jid, args.password)
    # The c2s leg is not what these tests are about: the peers' c2s certificates are
    # self-signed or from the test CA, and the client connects by IP address.
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    # STARTTLS on the c2s port only (no XEP-0368 attempt on a port that does not speak it).
    client.enable_direct_tls = False
    client.add_event_handler(
        "connection_failed", lambda e: emit(event="connect_failed", why=str(e))
    )
    client.connect(host=args.host, port=args.port)
    await client.done


if __name__ == "__main__":
    asyncio.run(main())
