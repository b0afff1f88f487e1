#!/usr/bin/env python3
"""A real XMPP client (slixmpp) that fedgate's tests drive through `Client` in
tests/support/src/slixmpp.rs: the interop tests log it in on Prosody and ejabberd (and on fedgate's
core), the core's integration tests (tests/integration/core.rs) on the core.

It signs in as its arguments say, then reads commands from stdin and writes events to stdout,
one JSON object per line each way, so that the Rust test decides what to send and asserts on
everything that arrives. Commands are read only once signed in, so none is sent before the
session exists.

Arguments: --jid, --password, --host (an address: no DNS) and --port; --ca FILE verifies the
server's certificate against that CA for the JID's domain (without it the certificate is not
checked: the interop peers' c2s certificates are self-signed); --mode starttls|direct (XEP-0368);
--mech forces a SASL mechanism; --register creates the account with XEP-0077 before signing in (after an XEP-0401 token,
--preauth TOKEN), reporting "registered" or "register_failed"; --like-a-user gets the roster and sends initial presence before
reporting online, and accepts subscription requests (asking back), as a person clicking "allow"
would; without it the test does each of these itself. --sm enables XEP-0198 stream management
with resumption (slixmpp's xep_0198). --pep registers slixmpp's PEP plugins (XEP-0060,
XEP-0163, XEP-0115 caps, XEP-0048/0049 bookmarks, XEP-0402) for the PEP commands.

Commands (stdin), each run as its own task in the order read; {"event": "done", "cmd": C}
follows when it completed:
  {"cmd": "message", "to": JID, "body": TEXT, "type": "chat", "id": ID, "from": JID}
  {"cmd": "burst", "to": JID, "prefix": P, "count": N}   messages P0..P{N-1}, body = index
  {"cmd": "steady", "to": JID, "prefix": P, "every_ms": T}   messages P0, P1… one every T ms
                               until "steady_stop", then {"event": "sent", "prefix": P, "count": N}
  {"cmd": "steady_stop"}
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
  {"cmd": "drop"}              the connection is lost (aborted, no close), then the client
                               connects again and resumes (with --sm) as a phone does
  {"cmd": "quit"}                                         (also at the end of stdin)
 PEP (with --pep):
  {"cmd": "pep_interest", "node": N}         adds N+notify to our caps (before presence)
  {"cmd": "pep_publish", "node": N, "id": ID, "xml": PAYLOAD, "options": {VAR: VALUE}, "tag": T}
  {"cmd": "pep_items", "jid": JID, "node": N, "tag": T}
  {"cmd": "bookmarks_set", "conferences": [{"jid", "name", "nick", "autojoin"}], "tag": T}
                                             XEP-0048 bookmarks stored with XEP-0049
  {"cmd": "bookmarks_get", "tag": T}
  {"cmd": "avatar_publish", "data": BASE64, "type": MIME, "tag": T}   XEP-0084 with slixmpp's
                                             xep_0084: the data item, then the metadata
 IM features of the core (tests/integration/core_im.rs), each answered by a "result" event
 with its "tag" (type "result"|"error"|"timeout", "condition", "text", and what it read):
  {"cmd": "blocklist", "tag": T}                          XEP-0191 get: "jids": [...]
  {"cmd": "block", "jids": [..], "tag": T} / {"cmd": "unblock", "jids": [..], "tag": T}
  {"cmd": "vcard_set", "fn": NAME, "photo": BASE64|null, "tag": T}   XEP-0054 own vCard
  {"cmd": "vcard_get", "to": JID, "tag": T}               "fn", "photo": BASE64|null
  {"cmd": "last", "to": JID, "tag": T}                    XEP-0012: "seconds", "status"
  {"cmd": "passwd", "password": PW, "tag": T}             XEP-0077 password change
  {"cmd": "unregister", "tag": T}                         XEP-0077 <remove/>
  Message carbons and archives (XEP-0280, XEP-0313; tests/integration/core_mam.rs):
  {"cmd": "carbons", "enable": true|false}                enable or disable carbons
  {"cmd": "mam", "tag": T, "with": JID, "max": N}         pages through the whole archive
                                                          (with optional) N per page
  {"cmd": "mam_page", "tag": T, "with": JID, "max": N, "index": I, "after": ID,
   "before": ID|""}                                       one query with that XEP-0059 set
                                                          ("before": "" is an empty <before/>)
  Multi-user chat (with --muc: slixmpp's xep_0045; tests/integration/muc.rs), each answered by
  a "muc_result" event with its "tag" (type "result"|"error"|"timeout", "condition", "text"):
  {"cmd": "muc_join", "room": JID, "nick": N, "password": PW, "maxstanzas": N, "tag": T}
      also "codes", "role", "affiliation", "nick" (as the room has it), "subject",
      "occupants": [nicks], "history": [{"nick", "body", "stamp"}]
  {"cmd": "muc_configure", "room": JID, "fields": {VAR: VALUE}, "tag": T}   the owner's form,
      read with get_room_config, filled and submitted ({} for an instant room)
  {"cmd": "muc_say", "room": JID, "body": TEXT}            a groupchat message
  {"cmd": "muc_subject", "room": JID, "subject": TEXT}
  {"cmd": "muc_role", "room": JID, "nick": N, "role": R, "tag": T}            kick, voice
  {"cmd": "muc_affiliation", "room": JID, "jid": JID, "affiliation": A, "tag": T}   ban, member
  {"cmd": "muc_leave", "room": JID, "nick": N}
  {"cmd": "muc_archive", "room": JID, "max": N, "tag": T}   the room's XEP-0313 archive, paged
      through whole (xep_0313): "messages": [{"id", "nick", "body"}]

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
  {"event": "pep", "tag", "type": "result"|"error"|"timeout", "condition", "app", "text",
   "id": published item id, "items": [{"id", "xml", "conference": {"name", "autojoin",
   "nick"}|null}], "conferences": [{"jid", "name", "nick", "autojoin"}]}
  {"event": "pep_event", "from", "node", "kind": "publish"|"retract"|"delete", "items": [ids]}
  {"event": "registered"} / {"event": "register_failed", "condition", "text"}   --register
  {"event": "block_push", "type": "block"|"unblock", "jids": [...]}   XEP-0191 pushes
  {"event": "photo", "from": JID, "hash": H|""}     a presence with XEP-0153 vcard-temp:x:update
  {"event": "carbon", "direction": "received"|"sent", "from": WRAPPER_FROM,
   "msg_from", "msg_to", "id", "body"}                     a carbon copy (XEP-0280)
  {"event": "mam", "tag": T, "messages": [{"id", "from", "to", "body", "msg_id"}]}
  {"event": "mam_page", "tag": T, "type": "result"|"error", "condition", "text", "bodies",
   "ids", "first", "first_index", "last", "count", "complete"}   (as slixmpp reads the <fin/>)
  {"event": "groupchat", "room", "nick", "body", "delay": bool, "stanza_id"}   (--muc)
  {"event": "muc_presence", "room", "nick", "type", "codes", "role", "affiliation", "jid"}
  {"event": "done", "cmd": C} / {"event": "command_failed", "cmd": C, "error": E}
  {"event": "resumed"}  / {"event": "sm_failed"}   (after a drop, with --sm)
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
from slixmpp.xmlstream.handler import Collector
from slixmpp.xmlstream.matcher import MatchXMLMask


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
        # A lost connection that the test made on purpose ("drop") is reconnected, not the end.
        self.dropping = False
        # Set by a steady_stop command: ends the steady command's loop.
        self.steady_stop = asyncio.Event()
        self.reading = False
        if args.sm:
            self.register_plugin("xep_0198")
            self.add_event_handler("session_resumed", lambda _: emit(event="resumed"))
            self.add_event_handler("sm_failed", lambda _: emit(event="sm_failed"))
        if args.pep:
            pep_plugins(self)
        self.im_features_init(args)
        if args.muc:
            muc_init(self)
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
        # A new session after a drop that could not be resumed reads no second command loop.
        if not self.reading:
            self.reading = True
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
        if self.dropping:
            self.dropping = False
            host, port = self.custom_address
            self.connect(host=host, port=port)
            return
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
            elif kind == "steady":
                prefix, to = cmd["prefix"], cmd["to"]
                self.steady_stop.clear()
                sent = 0
                while not self.steady_stop.is_set():
                    m = self.make_message(mto=to, mbody=str(sent), mtype="chat")
                    m["id"] = f"{prefix}{sent}"
                    m.send()
                    sent += 1
                    try:
                        await asyncio.wait_for(self.steady_stop.wait(), cmd["every_ms"] / 1000)
                    except asyncio.TimeoutError:
                        pass
                emit(event="sent", prefix=prefix, count=sent)
            elif kind == "steady_stop":
                self.steady_stop.set()
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
                # Without XEP-0237 `ver` (get_roster() sends the one it holds, and a server
                # whose roster did not change then answers with no items): the test wants the
                # server's whole roster each time.
                iq = self.make_iq_get()
                iq.enable("roster")
                iq = await iq.send(timeout=10)
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
            elif kind == "drop":
                self.dropping = True
                self.abort()
            elif kind in PEP_COMMANDS:
                await PEP_COMMANDS[kind](self, cmd)
            elif kind in MUC_COMMANDS:
                await muc_command(self, kind, cmd)
            elif kind in IM_COMMANDS:
                await self.im_command(kind, cmd)
            elif kind == "carbons":
                await self.carbons(cmd)
            elif kind == "mam":
                await self.mam(cmd)
            elif kind == "mam_page":
                await self.mam_page(cmd)
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

    async def mam_page(self, cmd):
        """One query, its RSM set as the command gives it, read back with slixmpp's stanzas
        (xep_0313's retrieve() cannot send an empty <before/>: it writes every value as a
        string)."""
        mam = self.plugin["xep_0313"]
        with_jid = slixmpp.JID(cmd["with"]) if cmd.get("with") else None
        iq, mask = mam._pre_mam_retrieve(None, None, None, with_jid, None)
        rsm = iq["mam"]["rsm"]
        for key in ("max", "index", "after"):
            if key in cmd:
                rsm[key] = str(cmd[key])
        if "before" in cmd:
            rsm["before"] = cmd["before"] or True
        collector = Collector("mam_page_" + iq["id"], MatchXMLMask(str(mask)))
        self.register_handler(collector)
        try:
            reply = await iq.send(timeout=10)
        except IqError as e:
            collector.stop()
            condition, text = error_of(e.iq)
            emit(event="mam_page", tag=cmd.get("tag"), type="error", condition=condition, text=text)
            return
        results = collector.stop()
        fin = reply["mam_fin"]
        s = fin["rsm"]
        emit(
            event="mam_page",
            tag=cmd.get("tag"),
            type="result",
            bodies=[r["mam_result"]["forwarded"]["stanza"]["body"] for r in results],
            ids=[r["mam_result"]["id"] for r in results],
            first=s["first"] or None,
            first_index=s["first_index"] or None,
            last=s["last"] or None,
            count=s["count"] or None,
            complete=fin.xml.get("complete") in ("true", "1"),
        )

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

    # ---- IM features of the core (core_im.rs) ------------------------------------------

    def im_features_init(self, args):
        self.preauth = args.preauth
        if args.register:
            self.add_event_handler("register", self.on_register)
        self.register_plugin("xep_0191")  # blocking command
        self.register_plugin("xep_0054")  # vcard-temp
        self.register_plugin("xep_0012")  # last activity
        self.register_plugin("xep_0077")  # in-band registration (password change, removal)
        for kind in ("blocked", "unblocked"):
            self.add_event_handler(kind, lambda iq, kind=kind: self.on_block_push(kind, iq))
        self.add_event_handler("presence", self.on_photo_presence)

    async def on_register(self, _form):
        try:
            if self.preauth:
                # slixmpp holds back every iq but registration ones before sign-in, so the
                # XEP-0401 token goes raw, just before the registration set; the server's
                # verdict on it shows in the answer to that set.
                self.send_raw(
                    "<iq type='set' id='preauth'>"
                    f"<preauth xmlns='urn:xmpp:pars:0' token='{self.preauth}'/></iq>"
                )
            iq = self.Iq()
            iq["type"] = "set"
            iq["register"]["username"] = self.boundjid.user
            iq["register"]["password"] = self.password
            await iq.send(timeout=10)
            emit(event="registered")
        except IqError as e:
            condition, text = error_of(e.iq)
            emit(event="register_failed", condition=condition, text=text)
        except IqTimeout:
            emit(event="register_failed", condition="timeout", text=None)

    def on_block_push(self, kind, iq):
        key = "block" if kind == "blocked" else "unblock"
        emit(event="block_push", type=key, jids=sorted(str(i["jid"]) for i in iq[key]))

    def on_photo_presence(self, pres):
        x = pres.xml.find("{vcard-temp:x:update}x")
        if x is not None:
            photo = x.find("{vcard-temp:x:update}photo")
            emit(event="photo", **{"from": str(pres["from"])},
                 hash=(photo.text or "") if photo is not None else None)

    async def im_command(self, kind, cmd):
        tag = cmd["tag"]
        try:
            out = await IM_COMMANDS[kind](self, cmd)
            emit(event="result", tag=tag, type="result", **(out or {}))
        except IqError as e:
            condition, text = error_of(e.iq)
            emit(event="result", tag=tag, type="error", condition=condition, text=text,
                 xml=str(e.iq))
        except IqTimeout:
            emit(event="result", tag=tag, type="timeout")


async def _blocklist(client, cmd):
    jids = await client.plugin["xep_0191"].get_blocked_jids(timeout=10)
    return {"jids": sorted(str(j) for j in jids)}


async def _block(client, cmd):
    await client.plugin["xep_0191"].block(cmd["jids"], timeout=10)


async def _unblock(client, cmd):
    await client.plugin["xep_0191"].unblock(cmd["jids"], timeout=10)


async def _vcard_set(client, cmd):
    vcard = client.plugin["xep_0054"].make_vcard()
    vcard["FN"] = cmd["fn"]
    if cmd.get("photo"):
        vcard["PHOTO"]["TYPE"] = "image/png"
        vcard["PHOTO"]["BINVAL"] = __import__("base64").b64decode(cmd["photo"])
    await client.plugin["xep_0054"].publish_vcard(vcard, timeout=10)


async def _vcard_get(client, cmd):
    iq = await client.plugin["xep_0054"].get_vcard(cmd["to"], local=False, timeout=10)
    vcard = iq["vcard_temp"]
    photo = vcard["PHOTO"]["BINVAL"]
    return {"fn": vcard["FN"] or None,
            "photo": __import__("base64").b64encode(photo).decode() if photo else None}


async def _last(client, cmd):
    iq = await client.plugin["xep_0012"].get_last_activity(cmd["to"], timeout=10)
    return {"seconds": iq["last_activity"]["seconds"], "status": iq["last_activity"]["status"]}


async def _passwd(client, cmd):
    await client.plugin["xep_0077"].change_password(cmd["password"], timeout=10)


async def _unregister(client, cmd):
    await client.plugin["xep_0077"].cancel_registration(timeout=10)


IM_COMMANDS = {
    "blocklist": _blocklist,
    "block": _block,
    "unblock": _unblock,
    "vcard_set": _vcard_set,
    "vcard_get": _vcard_get,
    "last": _last,
    "passwd": _passwd,
    "unregister": _unregister,
}


# ---- PEP (XEP-0163) and bookmarks: --pep ------------------------------------------------------

NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"


def pep_plugins(client):
    for plugin in ("xep_0060", "xep_0115", "xep_0163", "xep_0049", "xep_0048", "xep_0402"):
        client.register_plugin(plugin)
    client.add_event_handler("pubsub_publish", lambda m: pep_event(m, "publish"))
    client.add_event_handler("pubsub_retract", lambda m: pep_event(m, "retract"))
    client.add_event_handler("pubsub_delete", lambda m: pep_event(m, "delete"))


def pep_event(msg, kind):
    event = msg["pubsub_event"]
    if kind == "delete":
        node, ids = event["delete"]["node"], []
    else:
        node = event["items"]["node"]
        # Not `for i in event["items"]`: slixmpp is iterating that very element (its iterator
        # is the element itself) while it calls us, and a second loop would restart its own.
        ids = [i["id"] for i in event["items"].iterables]
    emit(event="pep_event", **{"from": str(msg["from"])}, node=node, kind=kind, items=ids)


async def pep_call(cmd, coroutine, on_result):
    """Runs an iq and emits a "pep" event with its outcome."""
    tag = cmd.get("tag")
    try:
        reply = await coroutine
        emit(event="pep", tag=tag, type="result", **on_result(reply))
    except IqError as e:
        condition, text = error_of(e.iq)
        app = None
        error = e.iq.xml.find("{jabber:client}error")
        if error is not None:
            for child in error:
                if child.tag.startswith("{%s}" % NS_PUBSUB_ERRORS):
                    app = child.tag.split("}", 1)[1]
        emit(event="pep", tag=tag, type="error", condition=condition, app=app, text=text)
    except IqTimeout:
        emit(event="pep", tag=tag, type="timeout")


async def cmd_pep_interest(client, cmd):
    client.plugin["xep_0030"].add_feature(cmd["node"] + "+notify")
    await client.plugin["xep_0115"].update_caps(broadcast=False)


async def cmd_pep_publish(client, cmd):
    options = None
    if cmd.get("options"):
        options = client.plugin["xep_0004"].make_form(ftype="submit")
        options.add_field(
            var="FORM_TYPE",
            ftype="hidden",
            value="http://jabber.org/protocol/pubsub#publish-options",
        )
        for var, value in cmd["options"].items():
            options.add_field(var=var, value=value)
    send = client.plugin["xep_0060"].publish(
        None, cmd["node"], id=cmd.get("id"), payload=ET.fromstring(cmd["xml"]), options=options
    )
    await pep_call(cmd, send, lambda r: {"id": r["pubsub"]["publish"]["item"]["id"]})


def pep_item(item):
    conference = None
    payload = item.xml.find("{urn:xmpp:bookmarks:1}conference")
    if payload is not None:
        c = item["conference"]
        conference = {"name": c["name"], "autojoin": c["autojoin"], "nick": c["nick"]}
    return {"id": item["id"], "xml": str(item), "conference": conference}


async def cmd_pep_items(client, cmd):
    send = client.plugin["xep_0060"].get_items(cmd["jid"], cmd["node"])
    await pep_call(cmd, send, lambda r: {"items": [pep_item(i) for i in r["pubsub"]["items"]]})


async def cmd_bookmarks_set(client, cmd):
    bookmarks = client.plugin["xep_0048"].stanza.Bookmarks()
    for c in cmd["conferences"]:
        bookmarks.add_conference(
            c["jid"], c.get("nick"), name=c.get("name"), autojoin=c.get("autojoin")
        )
    send = client.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049")
    await pep_call(cmd, send, lambda r: {})


def conferences(reply):
    return [
        {"jid": str(c["jid"]), "name": c["name"], "nick": c["nick"], "autojoin": c["autojoin"]}
        for c in reply["private"]["bookmarks"]["conferences"]
    ]


async def cmd_bookmarks_get(client, cmd):
    send = client.plugin["xep_0048"].get_bookmarks(method="xep_0049")
    await pep_call(cmd, send, lambda r: {"conferences": conferences(r)})


async def cmd_avatar_publish(client, cmd):
    """XEP-0084 §4.1: the data first, then the metadata pointing to it (the plugin is
    registered here, so that other tests' caps do not change)."""
    if "xep_0084" not in client.plugin:
        client.register_plugin("xep_0084")
    avatar = client.plugin["xep_0084"]
    data = __import__("base64").b64decode(cmd["data"])

    async def both():
        await avatar.publish_avatar(data, timeout=10)
        info = {"id": avatar.generate_id(data), "type": cmd.get("type", "image/png"), "bytes": len(data)}
        return await avatar.publish_avatar_metadata([info], timeout=10)

    await pep_call(cmd, both(), lambda r: {"id": r["pubsub"]["publish"]["item"]["id"]})


PEP_COMMANDS = {
    "avatar_publish": cmd_avatar_publish,
    "pep_interest": cmd_pep_interest,
    "pep_publish": cmd_pep_publish,
    "pep_items": cmd_pep_items,
    "bookmarks_set": cmd_bookmarks_set,
    "bookmarks_get": cmd_bookmarks_get,
}


# ---- XEP-0045 multi-user chat (tests/integration/muc.rs) ----


def muc_codes(stanza):
    x = stanza.xml.find("{http://jabber.org/protocol/muc#user}x")
    if x is None:
        return []
    return [int(s.get("code")) for s in x.findall("{http://jabber.org/protocol/muc#user}status")]


def muc_init(client):
    client.register_plugin("xep_0045")
    client.register_plugin("xep_0004")

    def on_groupchat(msg):
        if not msg["body"]:
            return
        sid = msg.xml.find("{urn:xmpp:sid:0}stanza-id")
        emit(
            event="groupchat",
            room=str(msg["from"].bare),
            nick=msg["from"].resource,
            body=msg["body"],
            delay=msg.xml.find("{urn:xmpp:delay}delay") is not None,
            stanza_id=sid.get("id") if sid is not None else None,
        )

    def on_presence(pres):
        item = pres["muc"]
        emit(
            event="muc_presence",
            room=str(pres["from"].bare),
            nick=pres["from"].resource,
            type=pres["type"],
            codes=muc_codes(pres),
            role=item["role"],
            affiliation=item["affiliation"],
            jid=str(item["jid"]) if item["jid"] else None,
        )

    client.add_event_handler("groupchat_message", on_groupchat)
    client.add_event_handler("groupchat_presence", on_presence)


async def _muc_join(client, cmd):
    muc = client.plugin["xep_0045"]
    pres, subject, occupants, history = await muc.join_muc_wait(
        cmd["room"],
        cmd["nick"],
        password=cmd.get("password"),
        maxstanzas=cmd.get("maxstanzas"),
        timeout=10,
    )
    return {
        "nick": pres["from"].resource,
        "codes": muc_codes(pres),
        "role": pres["muc"]["role"],
        "affiliation": pres["muc"]["affiliation"],
        "subject": subject["subject"],
        "occupants": [p["from"].resource for p in occupants],
        "history": [
            {"nick": m["from"].resource, "body": m["body"], "stamp": str(m["delay"]["stamp"])}
            for m in history
        ],
    }


async def _muc_configure(client, cmd):
    muc = client.plugin["xep_0045"]
    form = await muc.get_room_config(cmd["room"], timeout=10)
    fields = form.get_fields()
    for var, value in cmd.get("fields", {}).items():
        fields[var]["value"] = value
    if not cmd.get("fields"):
        # An instant room: the empty form accepts the defaults (XEP-0045 §10.1.2).
        form = client.plugin["xep_0004"].make_form(ftype="submit")
    await muc.set_room_config(cmd["room"], form, timeout=10)
    return {}


async def _muc_say(client, cmd):
    client.send_message(mto=cmd["room"], mbody=cmd["body"], mtype="groupchat")


async def _muc_subject(client, cmd):
    client.plugin["xep_0045"].set_subject(cmd["room"], cmd["subject"])


async def _muc_role(client, cmd):
    await client.plugin["xep_0045"].set_role(cmd["room"], cmd["nick"], cmd["role"], timeout=10)
    return {}


async def _muc_affiliation(client, cmd):
    await client.plugin["xep_0045"].set_affiliation(
        cmd["room"], cmd["affiliation"], jid=cmd["jid"], timeout=10
    )
    return {}


async def _muc_leave(client, cmd):
    client.plugin["xep_0045"].leave_muc(cmd["room"], cmd["nick"])


async def _muc_archive(client, cmd):
    messages = []
    async for result in client.plugin["xep_0313"].iterate(
        jid=slixmpp.JID(cmd["room"]), rsm={"max": cmd.get("max", 10)}
    ):
        inner = result["mam_result"]["forwarded"]["stanza"]
        messages.append(
            {"id": result["mam_result"]["id"], "nick": inner["from"].resource, "body": inner["body"]}
        )
    return {"messages": messages}


MUC_COMMANDS = {
    "muc_archive": _muc_archive,
    "muc_join": _muc_join,
    "muc_configure": _muc_configure,
    "muc_say": _muc_say,
    "muc_subject": _muc_subject,
    "muc_role": _muc_role,
    "muc_affiliation": _muc_affiliation,
    "muc_leave": _muc_leave,
}


async def muc_command(client, kind, cmd):
    """Runs a MUC command; those with a "tag" report a "muc_result"."""
    from slixmpp.exceptions import PresenceError

    try:
        out = await MUC_COMMANDS[kind](client, cmd)
        if "tag" in cmd:
            emit(event="muc_result", tag=cmd["tag"], type="result", **(out or {}))
    except (IqError, PresenceError) as e:
        stanza = e.iq if isinstance(e, IqError) else e.presence
        condition, text = error_of(stanza)
        emit(event="muc_result", tag=cmd.get("tag"), type="error", condition=condition, text=text)
    except (IqTimeout, asyncio.TimeoutError):
        emit(event="muc_result", tag=cmd.get("tag"), type="timeout")


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
    parser.add_argument("--sm", action="store_true")
    parser.add_argument("--pep", action="store_true")
    parser.add_argument("--register", action="store_true")
    parser.add_argument("--muc", action="store_true")
    parser.add_argument("--preauth", default=None)
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
