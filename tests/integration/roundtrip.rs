//! The round-trip guarantee (issue 19, item 2): what fedgate forwards parses, in a conforming
//! namespace-aware parser, to the tree fedgate received; and the framer's events do not depend
//! on how the input is split into reads.
//!
//! Generated stanzas (message, iq, presence) with random prefixes, default and prefixed
//! namespace declarations on the stanza and on children (and prefixes inherited from the stream
//! header), attributes with and without prefixes whose values hold entities and character
//! references, text with escapes, CDATA, non-ASCII and astral characters, nesting. Each is fed
//! after a stream header to `Framer`, whole, split at random points and byte by byte; the
//! stanza it returns is forwarded as the router does (`Stanza::bytes_for`) to a `jabber:server`
//! stream with only fedgate's own prefixes and to a `jabber:component:accept` stream. quick-xml's
//! reader (with the namespace rules applied in xml_tree.rs) parses the original within its header and each forwarded copy within the target
//! header; the trees of expanded names must be equal (with `jabber:server` read as
//! `jabber:component:accept` where the router re-targets it).
//!
//! `PROPTEST_CASES` sets the number of cases (default 1024, about two seconds).

use std::collections::HashSet;

use fedgate::xml::framer::{Event, Framer, Limits};
use fedgate::xml::{ns, NsContext};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::xml_tree::first_stanza;

const SERVER_HEADER: &str = "<stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>";
const COMPONENT_HEADER: &str = "<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams'>";

/// Namespace names for declarations below the stanza and in the header; never the content
/// namespace, whose re-targeting is only defined for the header and the stanza's own tag.
const URIS: &[&str] = &[
    "urn:x",
    "urn:y",
    "jabber:x:data",
    "http://example.com/ns?a=1&b='2'",
    "urn:\u{e9}:\u{65e5}",
    "urn:xmpp:sid:0",
    "jabber:server:dialback",
];
const LOCALS: &[&str] = &[
    "body",
    "x",
    "query",
    "item",
    "\u{e9}l\u{e9}ment",
    "a.b-c_d",
    "stream",
];
const ATTR_LOCALS: &[&str] = &["to", "from", "id", "type", "a", "lang", "\u{e9}"];

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => Just(' '),
        2 => prop::sample::select(vec![
            '&', '<', '>', '"', '\'', '\t', '\n', '\r', ']', '\u{e9}', '\u{65e5}', '\u{a0}',
            '\u{85}', '\u{2028}', '\u{1F600}', '\u{10FFFD}', '\u{FFFD}', '\u{E000}', '\u{D7FF}',
        ]),
        1 => any::<char>().prop_filter("an XML Char", |c| is_xml_char(*c)),
    ]
}

/// One piece of character data as written.
#[derive(Clone, Debug)]
enum Piece {
    Lit(char),
    /// One of the five predefined entities.
    Entity(usize),
    /// A character reference, hexadecimal or decimal.
    CharRef(char, bool),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => xml_char().prop_map(Piece::Lit),
        1 => (0..5usize).prop_map(Piece::Entity),
        1 => (xml_char(), any::<bool>()).prop_map(|(c, hex)| Piece::CharRef(c, hex)),
    ]
}

fn render_pieces(pieces: &[Piece], quote: Option<char>, out: &mut String) {
    for p in pieces {
        match p {
            Piece::Lit('&') => out.push_str("&amp;"),
            Piece::Lit('<') => out.push_str("&lt;"),
            Piece::Lit('>') if quote.is_none() && out.ends_with("]]") => out.push_str("&gt;"),
            Piece::Lit(c) if Some(*c) == quote => {
                out.push_str(if *c == '"' { "&quot;" } else { "&apos;" })
            }
            Piece::Lit(c) => out.push(*c),
            Piece::Entity(i) => out.push_str(["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"][*i]),
            Piece::CharRef(c, true) => out.push_str(&format!("&#x{:X};", *c as u32)),
            Piece::CharRef(c, false) => out.push_str(&format!("&#{};", *c as u32)),
        }
    }
}

fn prefix_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z_][a-z0-9._-]{0,3}",
        1 => prop::sample::select(vec!["a", "b", "db", "\u{e9}", "p\u{65e5}"]).prop_map(String::from),
    ]
    .prop_filter("xml is reserved", |p| !p.to_lowercase().starts_with("xml"))
}

#[derive(Clone, Debug)]
struct Attr {
    /// Picks a prefix in scope (or `xml`); `None`: no prefix.
    prefix: Option<Index>,
    local: Index,
    value: Vec<Piece>,
    double_quoted: bool,
}

fn attr() -> impl Strategy<Value = Attr> {
    (
        prop::option::weighted(0.4, any::<Index>()),
        any::<Index>(),
        prop::collection::vec(piece(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(prefix, local, value, double_quoted)| Attr {
            prefix,
            local,
            value,
            double_quoted,
        })
}

#[derive(Clone, Debug)]
struct Head {
    /// `(None, i)`: `xmlns=`; `(Some(p), i)`: `xmlns:p=`; `i` picks from URIS, or for the
    /// default namespace one past the end is `xmlns=''`.
    decls: Vec<(Option<String>, Index)>,
    /// Picks a prefix in scope for the element's name; `None`: no prefix.
    prefix: Option<Index>,
    local: Index,
    attrs: Vec<Attr>,
}

fn head() -> impl Strategy<Value = Head> {
    (
        prop::collection::vec(
            (prop::option::weighted(0.7, prefix_name()), any::<Index>()),
            0..3,
        ),
        prop::option::weighted(0.5, any::<Index>()),
        any::<Index>(),
        prop::collection::vec(attr(), 0..4),
    )
        .prop_map(|(decls, prefix, local, attrs)| Head {
            decls,
            prefix,
            local,
            attrs,
        })
}

#[derive(Clone, Debug)]
enum Node {
    Text(Vec<Piece>),
    CData(String),
    Element(Head, Vec<Node>),
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        2 => prop::collection::vec(piece(), 1..10).prop_map(Node::Text),
        1 => prop::collection::vec(xml_char(), 0..10)
            .prop_map(|cs| Node::CData(cs.into_iter().collect::<String>().replace("]]>", "]] >"))),
        2 => head().prop_map(|h| Node::Element(h, Vec::new())),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        (head(), prop::collection::vec(inner, 0..4)).prop_map(|(h, c)| Node::Element(h, c))
    })
}

/// How the stanza's own start tag names its namespace.
#[derive(Clone, Debug)]
enum Top {
    /// `<message>`: the stream's default namespace.
    Inherited,
    /// `<message xmlns='jabber:server'>`.
    Redeclared,
    /// `<p:message xmlns:p='jabber:server'>`.
    Prefixed(String),
}

#[derive(Clone, Debug)]
struct Case {
    /// Extra prefixes the stream header declares, picking from URIS.
    header_prefixes: Vec<(String, Index)>,
    kind: Index,
    top: Top,
    head: Head,
    children: Vec<Node>,
    /// Where to cut the input into reads.
    cuts: Vec<Index>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((prefix_name(), any::<Index>()), 0..3),
        any::<Index>(),
        prop_oneof![
            Just(Top::Inherited),
            Just(Top::Redeclared),
            prefix_name().prop_map(Top::Prefixed),
        ],
        head(),
        prop::collection::vec(node(), 0..4),
        prop::collection::vec(any::<Index>(), 0..8),
    )
        .prop_map(|(header_prefixes, kind, top, head, children, cuts)| Case {
            header_prefixes,
            kind,
            top,
            head,
            children,
            cuts,
        })
}

/// Prefix bindings in scope while rendering, innermost last.
type Scope = Vec<(Option<String>, String)>;

fn lookup<'a>(scope: &'a Scope, prefix: Option<&str>) -> Option<&'a str> {
    scope
        .iter()
        .rev()
        .find(|(p, _)| p.as_deref() == prefix)
        .map(|(_, u)| u.as_str())
}

/// The distinct prefixes in scope, in a stable order.
fn prefixes(scope: &Scope) -> Vec<String> {
    let mut seen = Vec::new();
    for (p, _) in scope {
        if let Some(p) = p {
            if !seen.contains(p) {
                seen.push(p.clone());
            }
        }
    }
    seen
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

/// Writes `<name decls attrs>` (without the closing `>`), pushing the declarations on `scope`.
/// `fixed_name` and `own_decls` are for the stanza's top tag.
fn render_start(
    head: &Head,
    fixed_name: Option<&str>,
    own_decls: &[(Option<String>, String)],
    scope: &mut Scope,
    out: &mut String,
) -> String {
    let mut tag = String::new();
    let mut declared: HashSet<Option<String>> = HashSet::new();
    let mut decls: Vec<(Option<String>, String)> = own_decls.to_vec();
    for (p, i) in &head.decls {
        let uri = match p {
            None if fixed_name.is_some() => continue, // the top keeps its namespace
            None if i.index(URIS.len() + 1) == URIS.len() => String::new(),
            _ => URIS[i.index(URIS.len())].to_owned(),
        };
        decls.push((p.clone(), uri));
    }
    for (p, uri) in decls {
        if !declared.insert(p.clone()) {
            continue;
        }
        match &p {
            None => tag.push_str(&format!(" xmlns='{}'", escape_attr(&uri))),
            Some(p) => tag.push_str(&format!(" xmlns:{p}='{}'", escape_attr(&uri))),
        }
        scope.push((p, uri));
    }
    let in_scope = prefixes(scope);
    let name = match fixed_name {
        Some(n) => n.to_owned(),
        None => {
            let local = LOCALS[head.local.index(LOCALS.len())];
            match head.prefix {
                Some(i) if !in_scope.is_empty() => {
                    format!("{}:{local}", in_scope[i.index(in_scope.len())])
                }
                _ => local.to_owned(),
            }
        }
    };
    let mut attr_prefixes = in_scope.clone();
    attr_prefixes.push("xml".to_owned());
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for a in &head.attrs {
        let local = ATTR_LOCALS[a.local.index(ATTR_LOCALS.len())];
        let (qname, uri) = match a.prefix {
            Some(i) => {
                let p = &attr_prefixes[i.index(attr_prefixes.len())];
                let uri = if p == "xml" {
                    ns::XML.to_owned()
                } else {
                    lookup(scope, Some(p)).unwrap_or_default().to_owned()
                };
                (format!("{p}:{local}"), uri)
            }
            None => (local.to_owned(), String::new()),
        };
        if !seen.insert((uri, local.to_owned())) {
            continue; // one attribute per expanded name
        }
        let q = if a.double_quoted { '"' } else { '\'' };
        tag.push(' ');
        tag.push_str(&qname);
        tag.push('=');
        tag.push(q);
        render_pieces(&a.value, Some(q), &mut tag);
        tag.push(q);
    }
    out.push('<');
    out.push_str(&name);
    out.push_str(&tag);
    name
}

fn render_children(children: &[Node], scope: &mut Scope, out: &mut String) {
    for child in children {
        match child {
            Node::Text(pieces) => render_pieces(pieces, None, out),
            Node::CData(s) => {
                out.push_str("<![CDATA[");
                out.push_str(s);
                out.push_str("]]>");
            }
            Node::Element(head, kids) => {
                let mark = scope.len();
                let name = render_start(head, None, &[], scope, out);
                if kids.is_empty() {
                    out.push_str("/>");
                } else {
                    out.push('>');
                    render_children(kids, scope, out);
                    out.push_str(&format!("</{name}>"));
                }
                scope.truncate(mark);
            }
        }
    }
}

/// The source stream header and the stanza.
fn render(case: &Case) -> (String, String) {
    let mut header = String::from(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' to='b.example' from='a.example' \
         version='1.0'",
    );
    let mut scope: Scope = vec![
        (None, ns::SERVER.to_owned()),
        (Some("stream".to_owned()), ns::STREAM.to_owned()),
    ];
    for (p, i) in &case.header_prefixes {
        if p == "stream" || lookup(&scope, Some(p)).is_some() {
            continue;
        }
        let uri = URIS[i.index(URIS.len())];
        header.push_str(&format!(" xmlns:{p}='{}'", escape_attr(uri)));
        scope.push((Some(p.clone()), uri.to_owned()));
    }
    header.push('>');

    let kind = ["message", "iq", "presence"][case.kind.index(3)];
    let (name, own) = match &case.top {
        Top::Inherited => (kind.to_owned(), vec![]),
        Top::Redeclared => (kind.to_owned(), vec![(None, ns::SERVER.to_owned())]),
        Top::Prefixed(p) => (
            format!("{p}:{kind}"),
            vec![(Some(p.clone()), ns::SERVER.to_owned())],
        ),
    };
    let mut stanza = String::new();
    let name = render_start(&case.head, Some(&name), &own, &mut scope, &mut stanza);
    if case.children.is_empty() {
        stanza.push_str("/>");
    } else {
        stanza.push('>');
        render_children(&case.children, &mut scope, &mut stanza);
        stanza.push_str(&format!("</{name}>"));
    }
    (header, stanza)
}

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 1 << 20,
        max_depth: 64,
        max_attributes: 64,
    }
}

/// The framer's events for `input` fed in the pieces `cuts` makes, and its error if any.
fn frame(input: &[u8], cuts: &[usize]) -> (Vec<Event>, Option<String>) {
    let (events, error) = Framer::frame_in_pieces(input, cuts, limits());
    (events, error.map(|e| format!("{e:?}")))
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn forwarded_stanzas_parse_to_the_tree_fedgate_received(case in case()) {
        let (header, stanza) = render(&case);
        let doc = format!("{header}{stanza}");
        let input = doc.as_bytes();

        // Split invariance: whole, at random points, byte by byte.
        let (whole, err) = frame(input, &[]);
        prop_assert_eq!(err, None, "the framer refused {}", doc);
        let mut cuts: Vec<usize> = case.cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(&frame(input, &cuts), &(whole.clone(), None), "cuts {:?}", cuts);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        prop_assert_eq!(&frame(input, &bytewise), &(whole.clone(), None));

        prop_assert_eq!(whole.len(), 2, "events {:?}", whole);
        let Event::Stanza(s) = &whole[1] else {
            return Err(TestCaseError::fail(format!("not a stanza: {:?}", whole[1])));
        };
        prop_assert_eq!(&s.raw()[..], stanza.as_bytes());

        let seen = first_stanza(&doc, None).map_err(TestCaseError::fail)?;

        // To a jabber:server stream with fedgate's own prefixes only.
        let out = s.bytes_for(&NsContext::server());
        let out = std::str::from_utf8(&out).expect("UTF-8");
        let got = first_stanza(&format!("{SERVER_HEADER}{out}"), None)
            .map_err(|e| TestCaseError::fail(format!("{e} in {out}")))?;
        prop_assert_eq!(&got, &seen, "to jabber:server: {}", out);

        // To a component stream, as the router writes to a backend.
        let out = s.bytes_for(&NsContext::component());
        let out = std::str::from_utf8(&out).expect("UTF-8");
        let got = first_stanza(&format!("{COMPONENT_HEADER}{out}"), None)
            .map_err(|e| TestCaseError::fail(format!("{e} in {out}")))?;
        let meant = first_stanza(&doc, Some((ns::SERVER, ns::COMPONENT))).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&got, &meant, "to jabber:component:accept: {}", out);
    }
}
