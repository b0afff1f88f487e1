#!/usr/bin/env python3
"""A real XMPP client (slixmpp) that the core's integration tests drive.

It signs in as told by its arguments, then reads commands from standard input, one JSON object a
line, and reports what happens on standard output, one JSON object a line:

  commands: {"op": "presence", "priority": 0, "show": null, "status": null}
            {"op": "unavailable"}
            {"op": "message", "to": JID, "body": TEXT, "type": "chat", "id": ID}
            {"op": "subscription", "to": JID, "type": "subscribe|subscribed|unsubscribe|unsubscribed"}
            {"op": "roster_get"}
            {"op": "roster_set", "jid": JID, "name": NAME, "groups": [..]}
            {"op": "roster_remove", "jid": JID}
            {"op": "iq", "to": JID, "xml": "<query xmlns='...'/>", "type": "get"}
            {"op": "directed", "to": JID, "type": null|"unavailable"}
            {"op": "quit"}   (disconnects cleanly)
  events:   {"event": "session_start", "jid": FULL_JID, "mechanism": NAME}
            {"event": "failed_auth"} / {"event": "disconnected"} / {"event": "connection_failed"}
            {"event": "message", "from", "to", "body", "type", "delay": bool, "error": COND}
            {"event": "presence", "from", "to", "type", "show", "status", "priority"}
            {"event": "roster", "items": {JID: {"subscription", "ask", "name", "groups"}}}
            {"event": "roster_push", "jid", "subscription", "ask"}
            {"event": "iq_result", "type": "result|error", "xml": TEXT, "id": ID}
            {"event": "done", "op": OP} after each command that completes

The tests only talk to loopback addresses; the CA file makes slixmpp verify the core's
certificate for real.
"""

import argparse
import asyncio
import json
import sys
import threading

import slixmpp
from slixmpp.xmlstream import ET


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Client(slixmpp.ClientXMPP):
    def __init__(self, args):
        super().__init__(args.jid, args.password, sasl_mech=args.mech)
        self.args = args
        self.ca_certs = args.ca
        self.enable_direct_tls = args.mode == "direct"
        self.enable_starttls = args.mode == "starttls"
        self.enable_plaintext = False
        # The tests answer subscription requests themselves.
        self.auto_authorize = None
        self.auto_subscribe = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0203")
        self["feature_mechanisms"].unencrypted_plain = False
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: emit({"event": "failed_auth"}))
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("connection_failed", lambda _: emit({"event": "connection_failed"}))
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("roster_update", self.on_roster_update)
        self.mechanism = None
        self.add_event_handler("auth_success", self.on_auth)

    def on_auth(self, _):
        mech = getattr(self["feature_mechanisms"], "mech", None)
        self.mechanism = getattr(mech, "name", None)

    def on_disconnected(self, _):
        emit({"event": "disconnected"})

    async def on_start(self, _):
        emit({"event": "session_start", "jid": str(self.boundjid), "mechanism": self.mechanism})
        threading.Thread(target=self.read_commands, daemon=True).start()

    def read_commands(self):
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            asyncio.run_coroutine_threadsafe(self.run_command(cmd), self.loop)
        asyncio.run_coroutine_threadsafe(self.run_command({"op": "quit"}), self.loop)

    async def run_command(self, cmd):
        op = cmd["op"]
        try:
            if op == "presence":
                self.send_presence(
                    ppriority=cmd.get("priority"),
                    pshow=cmd.get("show"),
                    pstatus=cmd.get("status"),
                )
            elif op == "unavailable":
                self.send_presence(ptype="unavailable")
            elif op == "directed":
                self.send_presence(pto=cmd["to"], ptype=cmd.get("type"))
            elif op == "message":
                m = self.make_message(
                    mto=cmd["to"], mbody=cmd.get("body"), mtype=cmd.get("type", "chat")
                )
                if cmd.get("id"):
                    m["id"] = cmd["id"]
                if cmd.get("from"):
                    m["from"] = cmd["from"]
                m.send()
            elif op == "subscription":
                self.send_presence(pto=cmd["to"], ptype=cmd["type"])
            elif op == "roster_get":
                iq = await self.get_roster()
                items = {}
                for jid, item in iq["roster"]["items"].items():
                    items[str(jid)] = {
                        "subscription": item["subscription"],
                        "ask": item["ask"],
                        "name": item["name"],
                        "groups": sorted(item["groups"]),
                    }
                emit({"event": "roster", "items": items, "xml": str(iq)})
            elif op == "roster_set":
                await self.update_roster(
                    cmd["jid"], name=cmd.get("name"), groups=cmd.get("groups", [])
                )
            elif op == "roster_remove":
                await self.del_roster_item(cmd["jid"])
            elif op == "iq":
                iq = self.make_iq(ito=cmd["to"], itype=cmd.get("type", "get"))
                iq.append(ET.fromstring(cmd["xml"]))
                try:
                    reply = await iq.send(timeout=10)
                    emit({"event": "iq_result", "type": reply["type"], "xml": str(reply)})
                except slixmpp.exceptions.IqError as e:
                    emit({"event": "iq_result", "type": "error", "xml": str(e.iq),
                          "condition": e.condition})
                except slixmpp.exceptions.IqTimeout:
                    emit({"event": "iq_result", "type": "timeout", "xml": ""})
            elif op == "quit":
                self.disconnect()
                return
            emit({"event": "done", "op": op})
        except Exception as e:  # the test sees it rather than a hang
            emit({"event": "command_failed", "op": op, "error": repr(e)})

    def on_message(self, msg):
        emit({
            "event": "message",
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "body": msg["body"],
            "type": msg["type"],
            "id": msg["id"],
            "delay": bool(msg.xml.find("{urn:xmpp:delay}delay") is not None),
            "error": msg["error"]["condition"] if msg["type"] == "error" else None,
        })

    def on_presence(self, p):
        emit({
            "event": "presence",
            "from": str(p["from"]),
            "to": str(p["to"]),
            "type": p["type"],
            "show": p["show"],
            "status": p["status"],
            "priority": p["priority"],
        })

    def on_roster_update(self, iq):
        for jid, item in iq["roster"]["items"].items():
            emit({
                "event": "roster_push",
                "jid": str(jid),
                "subscription": item["subscription"],
                "ask": item["ask"],
            })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--mode", choices=["starttls", "direct"], default="starttls")
    ap.add_argument("--mech", default=None)
    args = ap.parse_args()
    client = Client(args)
    client.connect(args.host, args.port)
    try:
        asyncio.get_event_loop().run_until_complete(client.disconnected)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
