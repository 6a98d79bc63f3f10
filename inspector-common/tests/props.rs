//! Property tests of the SMTP stream parser.
//!
//! A generator builds random but realistic SMTP sessions (random policy,
//! verbs allowed and not, odd tokens, whitespace, bare LF, PIPELINING, DATA
//! accepted or not, AUTH with SASL exchanges, BDAT chunks, STARTTLS), with the
//! replies a server would send to what it receives after masking. The client
//! and server groups are cut into random segments and fed to the parser in
//! causal order. An independent model of the server (written from Postfix's
//! behaviour, sharing no code with the parser) then reads the masked stream,
//! and these properties are checked:
//!
//! (a) no command verb the server sees is a known verb the policy denies;
//! (b) every allowed command reaches the server unchanged;
//! (c) the output is exactly the input with the bytes of denied verbs turned
//!     into `X`, except the leading part of a verb that segments boundaries
//!     showed to the parser while it could still become an allowed verb;
//!     body, chunk, SASL and post-STARTTLS bytes never change;
//! (d) no segment is ever held in causal order, and a segment offered after a
//!     gate command but before its reply is held, then accepted later;
//! (e) a retransmission after the replies to its group, of one of its
//!     segments or of several in one (as the kernel re-inspects it, from the
//!     checkpoint at its start), ends in the state the first pass reached
//!     at its end, and is masked exactly as (c) says for the segmentation it
//!     has: the cuts inside it are gone, so a verb prefix they kept is
//!     masked now. A retransmission of one segment gives the same events.

use std::collections::BTreeSet;
use std::ops::Range;

use inspector_common::{
    policy::entry_for,
    smtp::{
        cstate, feed_client, feed_server, ClientState, Env, Held, Out, ServerOut, ServerState,
        Shared,
    },
    verbs::{key_of, PolicyEntry, VerbKey, DEFAULT_ALLOWED, WELL_KNOWN},
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Verbs

/// The fifteen verbs of the default policy, then the usual suspects.
const POOL: &[&str] = &[
    "DATA", "HELO", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "AUTH", "EHLO", "ETRN", "HELP", "SAML",
    "SEND", "SOML", "VRFY", // the default policy
    "STARTTLS", "VERB", "ATRN", "ONEX", "BDAT", "XEXCH50", "X-FOO", "EXPN",
];
const N_DEFAULT: usize = 15;

/// Verbs a real server may act on: the pool and a few more. A garbage token
/// never equals one of them.
fn is_known_verb(upper: &[u8]) -> bool {
    POOL.iter().any(|v| v.as_bytes() == upper)
        || WELL_KNOWN.iter().any(|v| v.as_bytes() == upper)
        || [&b"LHLO"[..], b"XUSR", b"TURN", b"XCLIENT", b"XFORWARD"].contains(&upper)
}

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

/// C-locale white space other than LF: skipped before a verb, ends one.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r')
}

/// The policy as the test sees it: upper-case verb texts.
#[derive(Clone, Debug)]
struct Policy(Vec<&'static str>);

impl Policy {
    fn allows(&self, token: &[u8]) -> bool {
        let u = upper(token);
        self.0.iter().any(|v| v.as_bytes() == u.as_slice())
    }
    /// Whether `prefix` (a verb's first bytes) may still become an allowed
    /// verb: the parser must let those bytes pass.
    fn viable(&self, prefix: &[u8]) -> bool {
        let u = upper(prefix);
        u.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && self.0.iter().any(|v| v.as_bytes().starts_with(&u))
    }
    fn keys(&self) -> Vec<VerbKey> {
        self.0
            .iter()
            .map(|v| key_of(v.as_bytes()).unwrap())
            .collect()
    }
}

#[test]
fn pool_starts_with_the_default_policy() {
    assert_eq!(&POOL[..N_DEFAULT], DEFAULT_ALLOWED);
}

// ---------------------------------------------------------------------------
// The abstract script the strategies generate

#[derive(Clone, Copy, Debug)]
enum Eol {
    CrLf,
    Lf,
    CrCrLf,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::CrCrLf => b"\r\r\n",
        }
    }
}

#[derive(Clone, Debug)]
enum Tok {
    /// A verb of the pool.
    Pool(usize),
    /// Random letters (never a known verb).
    Garbage(Vec<u8>),
    /// A long run of verb characters.
    Long(Vec<u8>),
    /// A pool verb with a byte no verb has inserted at some position.
    Odd(usize, usize, u8),
    /// A proper prefix of a pool verb.
    Prefix(usize, usize),
    /// A pool verb followed by more letters.
    Suffixed(usize, Vec<u8>),
}

/// How a command line is written.
#[derive(Clone, Debug)]
struct Shape {
    lead: Vec<u8>,
    case: u64,
    sep: u8,
    args: Option<Vec<u8>>,
    eol: Eol,
}

#[derive(Clone, Debug)]
enum Text {
    /// Bytes without LF.
    Raw(Vec<u8>),
    /// Something that looks like a command or an end of data.
    Like(usize),
    /// Base64 text.
    B64(Vec<u8>),
}

const LOOKALIKES: &[&str] = &[
    "STARTTLS",
    "VERB x",
    "BDAT 10",
    "BDAT 10 LAST",
    "..",
    ".x",
    ". ",
    " .",
    ".\t",
    "QUIT",
    "DATA",
    "RSET",
    "AUTH LOGIN",
    "X-FOO bar",
    "*",
    "\r.",
    "xexch50 1",
    "",
];

#[derive(Clone, Debug)]
enum Act {
    Cmd {
        tok: Tok,
        shape: Shape,
        alt: u8,
    },
    Empty {
        ws: Vec<u8>,
        eol: Eol,
    },
    Hello {
        shape: Shape,
        helo: bool,
        alt: u8,
    },
    Data {
        shape: Shape,
        accept: bool,
        body: Vec<(Text, Eol)>,
        /// The end-of-data line: `.` then CRLF, LF or CR CR LF.
        end: Eol,
        alt: u8,
    },
    Auth {
        shape: Shape,
        initial: bool,
        steps: Vec<(Text, Eol)>,
        outcome: u8,
    },
    Bdat {
        shape: Shape,
        chunk: Vec<u8>,
        last: bool,
    },
    StartTls {
        shape: Shape,
        accept: bool,
        client_tail: Vec<u8>,
        server_tail: Vec<u8>,
    },
    /// End of a PIPELINING group: the client waits for the replies.
    Break,
}

#[derive(Clone, Debug)]
struct Script {
    policy: Policy,
    chunking: bool,
    greet_multi: bool,
    /// An EHLO first, as most clients do.
    opening: Option<Shape>,
    acts: Vec<Act>,
    /// Segment lengths, used in turn (`usize::MAX`: the rest of the group).
    cuts: Vec<usize>,
    /// Whether to offer the segment after a gate before its reply, in turn.
    early: Vec<bool>,
    /// Which segments of a group are retransmitted together, in turn: the
    /// first one and how many (each taken modulo what the group has).
    regroup: Vec<(usize, usize)>,
}

// ---------------------------------------------------------------------------
// Strategies

fn ws_byte() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![b' ', b'\t', 0x0b, 0x0c, b'\r'])
}

fn eol() -> impl Strategy<Value = Eol> {
    prop_oneof![6 => Just(Eol::CrLf), 3 => Just(Eol::Lf), 1 => Just(Eol::CrCrLf)]
}

/// Any byte but LF.
fn line_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => 0x20u8..0x7f,
        1 => any::<u8>().prop_map(|b| if b == b'\n' { b'.' } else { b }),
    ]
}

fn letters(len: Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![b'A'..=b'Z', b'a'..=b'z'], len)
}

fn tok() -> impl Strategy<Value = Tok> {
    let n = POOL.len();
    prop_oneof![
        10 => (0..n).prop_map(Tok::Pool),
        2 => letters(1..9).prop_map(Tok::Garbage),
        1 => prop::collection::vec(
            prop_oneof![b'A'..=b'Z', b'0'..=b'9', Just(b'-')],
            9..80
        )
        .prop_map(Tok::Long),
        2 => (
            0..n,
            0..9usize,
            prop::sample::select(vec![
                b'.', b':', b'@', b'!', b'#', b'0', b'9', b'-', b'_', 0u8, 0x7f, 0x80, 0xff, b'"',
                b'<'
            ])
        )
            .prop_map(|(v, at, b)| Tok::Odd(v, at, b)),
        2 => (0..n, 1..8usize).prop_map(|(v, l)| Tok::Prefix(v, l)),
        2 => (0..n, letters(1..4)).prop_map(|(v, s)| Tok::Suffixed(v, s)),
        // The longest verbs and a tail: nine bytes and more.
        1 => (prop::sample::select(vec![15usize, 20]), letters(1..12))
            .prop_map(|(v, s)| Tok::Suffixed(v, s)),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(ws_byte(), 1..4)],
        any::<u64>(),
        prop_oneof![4 => Just(b' '), 1 => ws_byte()],
        prop::option::of(prop::collection::vec(line_byte(), 0..24)),
        eol(),
    )
        .prop_map(|(lead, case, sep, args, eol)| Shape {
            lead,
            case,
            sep,
            args,
            eol,
        })
}

fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        2 => prop::collection::vec(line_byte(), 0..40).prop_map(Text::Raw),
        2 => (0..LOOKALIKES.len()).prop_map(Text::Like),
        1 => prop::collection::vec(
            prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=".to_vec()
            ),
            0..40
        )
        .prop_map(Text::B64),
    ]
}

fn chunk_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec((0..LOOKALIKES.len(), eol()), 0..5).prop_map(|lines| {
            let mut v = Vec::new();
            for (l, e) in lines {
                v.extend_from_slice(LOOKALIKES[l].as_bytes());
                v.extend_from_slice(e.bytes());
            }
            v
        }),
    ]
}

/// `multi_cr_end`: whether an end of data may be `.` CR CR LF (Postfix
/// strips every CR before the LF, see `end_of_data_with_several_crs`).
fn act(multi_cr_end: bool) -> impl Strategy<Value = Act> {
    let end = if multi_cr_end {
        prop_oneof![Just(Eol::CrLf), Just(Eol::Lf), Just(Eol::CrCrLf)].boxed()
    } else {
        prop_oneof![Just(Eol::CrLf), Just(Eol::Lf)].boxed()
    };
    prop_oneof![
        12 => (tok(), shape(), any::<u8>()).prop_map(|(tok, shape, alt)| Act::Cmd { tok, shape, alt }),
        2 => (prop::collection::vec(ws_byte(), 0..3), eol()).prop_map(|(ws, eol)| Act::Empty { ws, eol }),
        3 => (shape(), any::<bool>(), any::<u8>()).prop_map(|(shape, helo, alt)| Act::Hello {
            shape,
            helo: helo && alt.is_multiple_of(4),
            alt
        }),
        4 => (
            shape(),
            prop::bool::weighted(0.8),
            prop::collection::vec((text(), eol()), 0..8),
            end,
            any::<u8>()
        )
            .prop_map(|(shape, accept, body, end, alt)| Act::Data {
                shape,
                accept,
                body,
                end,
                alt
            }),
        3 => (shape(), any::<bool>(), prop::collection::vec((text(), eol()), 0..4), 0..3u8)
            .prop_map(|(shape, initial, steps, outcome)| Act::Auth {
                shape,
                initial,
                steps,
                outcome
            }),
        3 => (shape(), chunk_bytes(), any::<bool>())
            .prop_map(|(shape, chunk, last)| Act::Bdat { shape, chunk, last }),
        1 => (
            shape(),
            prop::bool::weighted(0.6),
            chunk_bytes(),
            prop::collection::vec(any::<u8>(), 0..30)
        )
            .prop_map(|(shape, accept, client_tail, server_tail)| Act::StartTls {
                shape,
                accept,
                client_tail,
                server_tail
            }),
        4 => Just(Act::Break),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        1 => Just(Policy(POOL[..N_DEFAULT].to_vec())),
        1 => Just(Policy(POOL.to_vec())),
        4 => prop::sample::subsequence(POOL.to_vec(), 1..=POOL.len()).prop_map(Policy),
        // Policies that let BDAT through, so that chunks happen.
        2 => prop::sample::subsequence(POOL.to_vec(), 0..=POOL.len()).prop_map(|mut v| {
            for verb in ["EHLO", "BDAT"] {
                if !v.contains(&verb) {
                    v.push(verb);
                }
            }
            Policy(v)
        }),
    ]
}

fn script() -> impl Strategy<Value = Script> {
    script_with(false)
}

fn script_with(multi_cr_end: bool) -> impl Strategy<Value = Script> {
    (
        policy(),
        prop::bool::weighted(0.7),
        any::<bool>(),
        prop::option::weighted(0.7, shape()),
        prop::collection::vec(act(multi_cr_end), 1..40),
        prop::collection::vec(
            prop_oneof![3 => 1..8usize, 3 => 1..64usize, 2 => Just(usize::MAX)],
            1..12,
        ),
        prop::collection::vec(any::<bool>(), 1..6),
        prop::collection::vec((any::<usize>(), any::<usize>()), 1..6),
    )
        .prop_map(
            |(policy, chunking, greet_multi, opening, acts, cuts, early, regroup)| Script {
                policy,
                chunking,
                greet_multi,
                opening,
                acts,
                cuts,
                early,
                regroup,
            },
        )
}

// ---------------------------------------------------------------------------
// Building a concrete session from a script

/// One reply as the model needs it.
#[derive(Clone, Copy, Debug)]
struct Reply {
    code: u16,
    /// The reply advertises CHUNKING (an EHLO reply).
    chunking: bool,
}

/// A client group and the replies to it.
#[derive(Clone, Debug, Default)]
struct Exchange {
    client: Vec<u8>,
    /// The group ends with a command whose reply decides what follows.
    gate: bool,
    server: Vec<u8>,
}

/// A command line as the generator wrote it (offsets in the client stream).
#[derive(Clone, Debug, PartialEq, Eq)]
struct GenCmd {
    line: Range<usize>,
    verb: Range<usize>,
    allowed: bool,
}

/// An EHLO keyword as the generator wrote it (offsets in the server
/// stream).
#[derive(Clone, Debug)]
struct GenKeyword {
    at: Range<usize>,
    denied: bool,
}

#[derive(Debug, Default)]
struct Built {
    greeting: Vec<u8>,
    exchanges: Vec<Exchange>,
    cmds: Vec<GenCmd>,
    replies: Vec<Reply>,
    keywords: Vec<GenKeyword>,
    /// Denied BDAT commands: each resets the flow (the session ends there).
    bdat_resets: usize,
}

struct Builder<'a> {
    policy: &'a Policy,
    supports_chunking: bool,
    advertised: bool,
    done: bool,
    base: usize,
    cur: Exchange,
    out: Built,
}

fn reply_text(code: u16) -> &'static str {
    match code {
        220 => "2.0.0 Ready to start TLS",
        221 => "2.0.0 Bye",
        235 => "2.7.0 Authentication successful",
        250 => "2.0.0 Ok",
        252 => "2.0.0 Cannot VRFY user",
        334 => "VXNlcm5hbWU6",
        354 => "End data with <CR><LF>.<CR><LF>",
        454 => "4.7.0 TLS not available due to local problem",
        500 => "5.5.2 Error: command not recognized",
        501 => "5.5.4 Syntax error",
        502 => "5.5.2 Error: command not recognized",
        503 => "5.5.1 Error: bad sequence of commands",
        535 => "5.7.8 Error: authentication failed",
        550 => "5.1.1 <x@y>: Recipient address rejected",
        554 => "5.5.1 Error: no valid recipients",
        _ => "whatever",
    }
}

impl<'a> Builder<'a> {
    fn new(policy: &'a Policy, chunking: bool, greet_multi: bool) -> Self {
        let mut b = Builder {
            policy,
            supports_chunking: chunking,
            advertised: false,
            done: false,
            base: 0,
            cur: Exchange::default(),
            out: Built::default(),
        };
        b.out.greeting = if greet_multi {
            b"220-mx.example ESMTP\r\n220 no UCE\r\n".to_vec()
        } else {
            b"220 mx.example ESMTP Postfix\r\n".to_vec()
        };
        b
    }

    fn pos(&self) -> usize {
        self.base + self.cur.client.len()
    }

    /// Offset of the next server byte in the server stream.
    fn server_pos(&self) -> usize {
        self.out.greeting.len()
            + self
                .out
                .exchanges
                .iter()
                .map(|e| e.server.len())
                .sum::<usize>()
            + self.cur.server.len()
    }

    /// A denied BDAT was sent: the inspector resets the flow.
    fn bdat_reset(&mut self) {
        self.out.bdat_resets += 1;
        self.flush(false);
        self.done = true;
    }

    /// Writes a command line; returns whether the verb is allowed.
    fn line(&mut self, token: &[u8], shape: &Shape) -> bool {
        let start = self.pos();
        let c = &mut self.cur.client;
        c.extend_from_slice(&shape.lead);
        let vstart = start + shape.lead.len();
        for (i, &b) in token.iter().enumerate() {
            let flip = i < 64 && (shape.case >> i) & 1 == 1;
            c.push(if flip && b.is_ascii_uppercase() {
                b.to_ascii_lowercase()
            } else {
                b
            });
        }
        let vend = vstart + token.len();
        if let Some(args) = &shape.args {
            c.push(shape.sep);
            c.extend_from_slice(args);
        }
        c.extend_from_slice(shape.eol.bytes());
        let allowed = self.policy.allows(token);
        self.out.cmds.push(GenCmd {
            line: start..self.pos(),
            verb: vstart..vend,
            allowed,
        });
        allowed
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.cur.client.extend_from_slice(bytes);
    }

    fn reply_lines(&mut self, code: u16, lines: &[&str], chunking: bool) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.cur
                .server
                .extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
        }
        self.out.replies.push(Reply { code, chunking });
    }

    fn reply(&mut self, code: u16) {
        self.reply_lines(code, &[reply_text(code)], false);
    }

    /// What a server says to a verb it does not know.
    fn unknown(&mut self, alt: u8) {
        self.reply(if alt.is_multiple_of(2) { 500 } else { 502 });
    }

    fn flush(&mut self, gate: bool) {
        self.cur.gate = gate;
        if !self.cur.client.is_empty() || !self.cur.server.is_empty() {
            self.base += self.cur.client.len();
            let ex = std::mem::take(&mut self.cur);
            self.out.exchanges.push(ex);
        }
    }

    /// A reply to EHLO. The inspector masks the keywords of denied
    /// commands, so the client sees CHUNKING only if BDAT is allowed.
    fn ehlo_reply(&mut self, alt: u8) {
        let mut lines = vec!["mx.example", "PIPELINING", "SIZE 10240000"];
        if self.supports_chunking {
            let at = 1 + alt as usize % 3;
            lines.insert(at, "CHUNKING");
        }
        if alt & 4 != 0 {
            lines.push("8BITMIME");
        }
        if alt & 8 != 0 {
            lines.insert(1, "STARTTLS");
        }
        if alt & 16 != 0 {
            lines.push("XFORWARD NAME ADDR");
        }
        if alt & 32 != 0 {
            lines.push("AUTH=PLAIN LOGIN");
        }
        if alt & 64 != 0 {
            lines.push("vrfy");
        }
        let lower = alt & 128 != 0;
        let shown = self.supports_chunking && self.policy.allows(b"BDAT");
        self.advertised = shown;
        let mut at = self.server_pos();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let l = if lower && i > 0 {
                l.to_ascii_lowercase()
            } else {
                l.to_string()
            };
            let line = format!("250{sep}{l}\r\n");
            if i > 0 {
                let kw = l.split([' ', '=']).next().unwrap().to_ascii_uppercase();
                let command = if kw == "CHUNKING" { "BDAT" } else { &kw };
                let names_command =
                    kw == "CHUNKING" || kw.starts_with('X') || WELL_KNOWN.contains(&command);
                self.out.keywords.push(GenKeyword {
                    at: at + 4..at + 4 + kw.len(),
                    denied: names_command && !self.policy.allows(command.as_bytes()),
                });
            }
            at += line.len();
            self.cur.server.extend_from_slice(line.as_bytes());
        }
        self.out.replies.push(Reply {
            code: 250,
            chunking: shown,
        });
    }

    fn text_line(&mut self, t: &Text, e: Eol, in_body: bool) {
        let mut line = match t {
            Text::Raw(v) | Text::B64(v) => v.clone(),
            Text::Like(i) => LOOKALIKES[*i].as_bytes().to_vec(),
        };
        line.extend_from_slice(e.bytes());
        if in_body {
            // Never an end of data as the server reads it: "." after all
            // trailing CRs are removed.
            let content = &line[..line.len() - 1];
            let mut n = content.len();
            while n > 0 && content[n - 1] == b'\r' {
                n -= 1;
            }
            if &content[..n] == b"." {
                line.insert(1, b'x');
            }
        }
        self.raw(&line);
    }

    fn act(&mut self, act: &Act) {
        match act {
            Act::Break => self.flush(false),
            Act::Empty { ws, eol } => {
                self.raw(ws);
                self.raw(eol.bytes());
                self.reply(500);
            }
            Act::Hello { shape, helo, alt } => {
                let verb: &[u8] = if *helo { b"HELO" } else { b"EHLO" };
                let mut shape = shape.clone();
                shape.args.get_or_insert_with(|| b"client.example".to_vec());
                if !self.line(verb, &shape) {
                    self.unknown(*alt);
                } else if *helo {
                    self.reply(250);
                } else {
                    self.ehlo_reply(*alt);
                    self.flush(false);
                }
            }
            Act::Cmd { tok, shape, alt } => self.cmd(tok, shape, *alt),
            Act::Data {
                shape,
                accept,
                body,
                end,
                alt,
            } => {
                let mut shape = shape.clone();
                shape.args = None;
                if !self.line(b"DATA", &shape) {
                    self.unknown(*alt);
                    return;
                }
                if !accept {
                    self.reply(if alt.is_multiple_of(2) { 503 } else { 554 });
                    self.flush(true);
                    return;
                }
                self.reply(354);
                self.flush(true);
                for (t, e) in body {
                    self.text_line(t, *e, true);
                }
                self.raw(b".");
                self.raw(end.bytes());
                self.reply(if alt % 4 == 1 { 554 } else { 250 });
            }
            Act::Auth {
                shape,
                initial,
                steps,
                outcome,
            } => {
                let mut shape = shape.clone();
                shape.args = Some(if *initial {
                    b"PLAIN AGFsaWNlAHNlY3JldA==".to_vec()
                } else {
                    b"LOGIN".to_vec()
                });
                if !self.line(b"AUTH", &shape) {
                    self.unknown(*outcome);
                    return;
                }
                let last = match outcome {
                    0 => 235,
                    1 => 535,
                    _ => 501,
                };
                if steps.is_empty() {
                    self.reply(if last == 501 { 535 } else { last });
                    self.flush(true);
                    return;
                }
                self.reply(334);
                self.flush(true);
                for (i, (t, e)) in steps.iter().enumerate() {
                    if i + 1 == steps.len() {
                        if last == 501 {
                            // The client gives up.
                            self.raw(b"*");
                            self.raw(e.bytes());
                        } else {
                            self.text_line(t, *e, false);
                        }
                        self.reply(last);
                    } else {
                        self.text_line(t, *e, false);
                        self.reply(334);
                    }
                    self.flush(true);
                }
            }
            Act::Bdat { shape, chunk, last } => {
                let mut shape = shape.clone();
                let mut args = chunk.len().to_string().into_bytes();
                if *last {
                    args.push(shape.sep);
                    let spellings: [&[u8]; 4] = [b"LAST", b"last", b"Last", b"lAsT"];
                    args.extend_from_slice(spellings[(shape.case >> 60) as usize % 4]);
                }
                shape.args = Some(args);
                let allowed = self.policy.allows(b"BDAT");
                if allowed && self.supports_chunking && !self.advertised {
                    // The server would read a chunk the parser cannot know
                    // of yet: a client does not send BDAT before EHLO.
                    return;
                }
                if !self.line(b"BDAT", &shape) {
                    self.unknown(chunk.len() as u8);
                    self.bdat_reset();
                } else if self.advertised {
                    self.raw(chunk);
                    self.reply(250);
                } else {
                    self.reply(502);
                }
            }
            Act::StartTls {
                shape,
                accept,
                client_tail,
                server_tail,
            } => {
                let mut shape = shape.clone();
                shape.args = None;
                if !self.line(b"STARTTLS", &shape) {
                    self.unknown(client_tail.len() as u8);
                    return;
                }
                if !accept {
                    self.reply(454);
                    self.flush(true);
                    return;
                }
                self.reply(220);
                self.flush(true);
                // TLS: opaque both ways, to the end.
                let mut tail = vec![0x16, 0x03, 0x01];
                tail.extend_from_slice(client_tail);
                self.raw(&tail);
                self.cur.server.extend_from_slice(&[0x16, 0x03, 0x03]);
                self.cur.server.extend_from_slice(server_tail);
                self.flush(false);
                self.done = true;
            }
        }
    }

    fn cmd(&mut self, tok: &Tok, shape: &Shape, alt: u8) {
        let token: Vec<u8> = match tok {
            Tok::Pool(i) => POOL[*i].as_bytes().to_vec(),
            Tok::Garbage(v) | Tok::Long(v) => v.clone(),
            Tok::Odd(i, at, b) => {
                let mut v = POOL[*i].as_bytes().to_vec();
                v.insert((*at).min(v.len()), *b);
                v
            }
            Tok::Prefix(i, l) => {
                let v = POOL[*i].as_bytes();
                v[..(*l).min(v.len() - 1)].to_vec()
            }
            Tok::Suffixed(i, s) => [POOL[*i].as_bytes(), s].concat(),
        };
        let mut token = token;
        if !matches!(tok, Tok::Pool(_)) && is_known_verb(&upper(&token)) {
            token.insert(0, b'Z');
        }
        let u = upper(&token);
        let mut shape = shape.clone();
        let allowed = self.policy.allows(&token);
        if allowed {
            match u.as_slice() {
                // Commands with a syntax the generator must control.
                b"BDAT" | b"DATA" | b"STARTTLS" => shape.args = Some(b"x".to_vec()),
                b"EHLO" | b"HELO" => {
                    shape.args.get_or_insert_with(|| b"c.example".to_vec());
                }
                _ => {}
            }
        }
        if !self.line(&token, &shape) {
            self.unknown(alt);
            if u == b"BDAT" {
                self.bdat_reset();
            }
            return;
        }
        match u.as_slice() {
            // Allowed gate commands that the server refuses.
            b"DATA" => {
                self.reply(501);
                self.flush(true);
            }
            b"AUTH" => {
                self.reply(if alt.is_multiple_of(2) { 503 } else { 535 });
                self.flush(true);
            }
            b"STARTTLS" => {
                self.reply(501);
                self.flush(true);
            }
            b"BDAT" => self.reply(501),
            b"EHLO" => {
                self.ehlo_reply(alt);
                self.flush(false);
            }
            b"QUIT" => {
                self.reply(221);
                self.flush(false);
                self.done = true;
            }
            b"VRFY" => self.reply(252),
            b"RCPT" if alt.is_multiple_of(3) => self.reply(550),
            b"HELP" => self.reply_lines(214, &["2.0.0 Commands:", "2.0.0 HELO EHLO"], false),
            b"HELO" | b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" | b"ETRN" => self.reply(250),
            _ => self.unknown(alt),
        }
    }
}

fn build(s: &Script) -> Built {
    let mut b = Builder::new(&s.policy, s.chunking, s.greet_multi);
    if let Some(shape) = &s.opening {
        b.act(&Act::Hello {
            shape: shape.clone(),
            helo: false,
            alt: 0,
        });
    }
    for a in &s.acts {
        if b.done {
            break;
        }
        b.act(a);
    }
    b.flush(false);
    b.out
}

// ---------------------------------------------------------------------------
// The model of the server: reads the masked stream as Postfix does.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Command,
    Body,
    Chunk,
    Sasl,
    Opaque,
}

#[derive(Debug, PartialEq, Eq)]
struct SeenCmd {
    line: Range<usize>,
    verb: Range<usize>,
}

#[derive(Debug)]
struct Seen {
    cmds: Vec<SeenCmd>,
    class: Vec<Class>,
}

/// `BDAT` arguments as Postfix reads them: a count of digits, then an
/// optional `LAST`, separated by white space.
fn bdat_size(args: &[u8]) -> Option<usize> {
    let words: Vec<&[u8]> = args
        .split(|&b| is_ws(b))
        .filter(|w| !w.is_empty())
        .collect();
    let ok = match words.as_slice() {
        [n] | [n, _] => n.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !ok || (words.len() == 2 && !words[1].eq_ignore_ascii_case(b"LAST")) {
        return None;
    }
    std::str::from_utf8(words[0]).ok()?.parse().ok()
}

fn server_model(stream: &[u8], replies: &[Reply], policy: &Policy) -> Result<Seen, String> {
    #[derive(PartialEq)]
    enum Mode {
        Command,
        Body,
        Sasl,
    }
    let mut seen = Seen {
        cmds: vec![],
        class: vec![Class::Command; stream.len()],
    };
    let mut mode = Mode::Command;
    let mut chunking = false;
    let mut r = 0;
    let mut i = 0;
    let next_reply = |r: &mut usize| -> Result<Reply, String> {
        let rep = replies
            .get(*r)
            .copied()
            .ok_or_else(|| format!("no reply for unit {r}"))?;
        *r += 1;
        Ok(rep)
    };
    while i < stream.len() {
        let Some(lf) = stream[i..].iter().position(|&b| b == b'\n').map(|p| i + p) else {
            return Err(format!("incomplete line at {i}: {:?}", &stream[i..]));
        };
        let line = i..lf + 1;
        match mode {
            Mode::Body => {
                seen.class[line.clone()].fill(Class::Body);
                let mut end = lf;
                while end > i && stream[end - 1] == b'\r' {
                    end -= 1;
                }
                if &stream[i..end] == b"." {
                    next_reply(&mut r)?;
                    mode = Mode::Command;
                }
                i = lf + 1;
            }
            Mode::Sasl => {
                seen.class[line.clone()].fill(Class::Sasl);
                if next_reply(&mut r)?.code != 334 {
                    mode = Mode::Command;
                }
                i = lf + 1;
            }
            Mode::Command => {
                let mut k = i;
                while k < lf && is_ws(stream[k]) {
                    k += 1;
                }
                if k == lf {
                    let rep = next_reply(&mut r)?;
                    if rep.code != 500 {
                        return Err(format!("empty line at {i} answered {}", rep.code));
                    }
                    i = lf + 1;
                    continue;
                }
                let mut e = k;
                while e < lf && !is_ws(stream[e]) {
                    e += 1;
                }
                let verb = upper(&stream[k..e]);
                seen.cmds.push(SeenCmd {
                    line: line.clone(),
                    verb: k..e,
                });
                let chunking_before = chunking;
                let rep = next_reply(&mut r)?;
                chunking |= rep.chunking;
                if !policy.allows(&verb) && !matches!(rep.code, 500 | 502) {
                    return Err(format!(
                        "the server does not know {:?} but the reply is {}",
                        String::from_utf8_lossy(&verb),
                        rep.code
                    ));
                }
                i = lf + 1;
                match (verb.as_slice(), rep.code) {
                    (b"DATA", 354) => mode = Mode::Body,
                    (b"AUTH", 334) => mode = Mode::Sasl,
                    (b"STARTTLS", 220) => {
                        seen.class[i..].fill(Class::Opaque);
                        i = stream.len();
                    }
                    (b"BDAT", _) if chunking_before => {
                        if let Some(n) = bdat_size(&stream[e..lf]) {
                            if i + n > stream.len() {
                                return Err(format!("chunk at {i} runs past the end"));
                            }
                            seen.class[i..i + n].fill(Class::Chunk);
                            i += n;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if mode != Mode::Command {
        return Err("the session ends inside a body or a SASL exchange".into());
    }
    if r != replies.len() {
        return Err(format!("{} replies, {r} used", replies.len()));
    }
    Ok(seen)
}

// ---------------------------------------------------------------------------
// Driving the parser

struct View<'a>(&'a [VerbKey], &'a Shared);

impl Env for View<'_> {
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        entry_for(self.0, key)
    }
    fn gate_reply(&self, unit: u32) -> Option<u16> {
        self.1.gate_reply(unit)
    }
    fn chunking(&self) -> bool {
        self.1.chunking != 0
    }
}

struct Session {
    keys: Vec<VerbKey>,
    shared: Shared,
    client: ClientState,
    server: ServerState,
}

/// A client segment as fed: for re-feeding it later.
struct Fed {
    before: ClientState,
    input: Vec<u8>,
    output: Vec<u8>,
    events: Vec<Out>,
    after: ClientState,
}

impl Session {
    fn new(keys: Vec<VerbKey>) -> Self {
        Session {
            keys,
            shared: Shared::default(),
            client: ClientState::default(),
            server: ServerState::default(),
        }
    }

    fn feed_from(&self, st: &mut ClientState, buf: &mut [u8]) -> Result<Vec<Out>, Held> {
        let mut events = vec![];
        feed_client(st, buf, &View(&self.keys, &self.shared), |o| {
            events.push(*o)
        })?;
        Ok(events)
    }

    fn client_segment(&mut self, input: &[u8]) -> Result<Fed, TestCaseError> {
        let before = self.client;
        let mut st = before;
        let mut output = input.to_vec();
        let events = self
            .feed_from(&mut st, &mut output)
            .map_err(|_| TestCaseError::fail(format!("held in causal order: {input:?}")))?;
        self.client = st;
        self.shared.publish_client(&self.client);
        Ok(Fed {
            before,
            input: input.to_vec(),
            output,
            events,
            after: st,
        })
    }

    /// (e) a retransmission after the replies to its group: the same, or
    /// held if the reply to the gate it starts after is no longer kept.
    fn refeed_late(&self, fed: &Fed) -> Result<bool, TestCaseError> {
        let mut st = fed.before;
        let mut buf = fed.input.clone();
        match self.feed_from(&mut st, &mut buf) {
            Ok(events) => {
                prop_assert_eq!(&buf, &fed.output, "late retransmission masked differently");
                prop_assert_eq!(st, fed.after, "late retransmission left another state");
                prop_assert_eq!(&events, &fed.events);
                Ok(false)
            }
            Err(Held) => {
                prop_assert!(
                    fed.before.state == cstate::AWAIT_GATE
                        && self.shared.gate_reply(fed.before.gate_unit).is_none(),
                    "late retransmission held although its gate reply is known"
                );
                Ok(true)
            }
        }
    }

    /// (e) `group` (consecutive segments) retransmitted in one segment from
    /// the checkpoint at its start: it must end in the state the first pass
    /// reached at its end. Returns what it became, or `None` if it was held
    /// because the reply to the gate it starts after is no longer kept.
    fn refeed_regrouped(&self, group: &[Fed]) -> Result<Option<Vec<u8>>, TestCaseError> {
        let before = group[0].before;
        let mut st = before;
        let mut buf: Vec<u8> = group.iter().flat_map(|f| f.input.clone()).collect();
        match self.feed_from(&mut st, &mut buf) {
            Ok(_) => {
                let after = group[group.len() - 1].after;
                prop_assert_eq!(
                    st,
                    after,
                    "{} segments retransmitted in one end in another state",
                    group.len()
                );
                Ok(Some(buf))
            }
            Err(Held) => {
                prop_assert!(
                    before.state == cstate::AWAIT_GATE
                        && self.shared.gate_reply(before.gate_unit).is_none(),
                    "regrouped retransmission held although its gate reply is known"
                );
                Ok(None)
            }
        }
    }

    /// Feeds a server segment; returns it as the client receives it.
    fn server_segment(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut buf = bytes.to_vec();
        let keys = &self.keys;
        feed_server(
            &mut self.server,
            &mut buf,
            &mut self.shared,
            &|k| entry_for(keys, k),
            0,
            |_: &ServerOut| {},
        );
        buf
    }
}

/// Cuts `data` into segments, taking lengths from `cuts` in turn.
fn cut<'a>(data: &'a [u8], cuts: &[usize], next: &mut usize) -> Vec<&'a [u8]> {
    let mut out = vec![];
    let mut rest = data;
    while !rest.is_empty() {
        let n = cuts[*next % cuts.len()].min(rest.len());
        *next += 1;
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// What the output must be: the input with the verbs of denied commands
/// masked, but for the part of such a verb that the parser saw at the end of
/// a segment while it could still become an allowed verb.
fn expected_output(input: &[u8], b: &Built, policy: &Policy, cuts: &BTreeSet<usize>) -> Vec<u8> {
    let mut out = input.to_vec();
    for c in b.cmds.iter().filter(|c| !c.allowed) {
        let verb = &input[c.verb.clone()];
        let kept = (1..=verb.len())
            .filter(|&n| cuts.contains(&(c.verb.start + n)) && policy.viable(&verb[..n]))
            .max()
            .unwrap_or(0);
        out[c.verb.start + kept..c.verb.end].fill(b'X');
    }
    out
}

/// Whether the first bytes of an EHLO keyword may still become a keyword
/// that passes and that the inspector knows: then a segment that ends there
/// keeps them (docs/contract.md §10).
fn keyword_viable(prefix: &[u8], policy: &Policy) -> bool {
    // Written out again on purpose rather than taken from
    // `smtp::COMMANDLESS_KEYWORDS`: the model shares no code with the
    // parser, so a keyword dropped from the parser's list shows up here.
    const COMMANDLESS: &[&str] = &[
        "SIZE",
        "PIPELINING",
        "8BITMIME",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "BINARYMIME",
        "DELIVERBY",
        "REQUIRETLS",
        "MT-PRIORITY",
        "LIMITS",
        "NO-SOLICITING",
        "FUTURERELEASE",
        "MTRK",
    ];
    let u = upper(prefix);
    COMMANDLESS.iter().any(|k| k.as_bytes().starts_with(&u))
        || (b"CHUNKING".starts_with(&u) && policy.allows(b"BDAT"))
        || policy.viable(&u)
}

/// The server stream as the client must see it: the keywords of denied
/// commands masked, but for the part of one that a segment boundary showed
/// while it could still become a keyword that passes.
fn expected_server_output(
    input: &[u8],
    b: &Built,
    policy: &Policy,
    cuts: &BTreeSet<usize>,
) -> Vec<u8> {
    let mut out = input.to_vec();
    for k in b.keywords.iter().filter(|k| k.denied) {
        let kw = &input[k.at.clone()];
        let kept = (1..=kw.len())
            .filter(|&n| cuts.contains(&(k.at.start + n)) && keyword_viable(&kw[..n], policy))
            .max()
            .unwrap_or(0);
        out[k.at.start + kept..k.at.end].fill(b'X');
    }
    out
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// What a checked session contained (to check the generator's coverage).
#[derive(Debug, Default)]
struct Stats {
    bytes: usize,
    segments: usize,
    classes: Vec<Class>,
    denied: usize,
    allowed: usize,
    pipelined: bool,
    early_held: usize,
    late_held: usize,
    partly_kept: usize,
    keywords_masked: usize,
    bdat_resets: usize,
}

fn check_session(s: &Script) -> Result<Stats, TestCaseError> {
    let mut stats = Stats::default();
    let built = build(s);
    let mut sess = Session::new(s.policy.keys());
    let mut next_cut = 0;
    let mut next_early = 0;
    let mut server_in = vec![];
    let mut server_out = vec![];
    let mut server_cuts = BTreeSet::new();
    let mut resets = 0;
    let mut next_regroup = 0;
    // (e) retransmissions of several segments in one: where they lie in
    // the stream and what they became, checked once the stream is known.
    let mut regrouped: Vec<(Range<usize>, Vec<u8>)> = vec![];
    for seg in cut(&built.greeting, &s.cuts, &mut next_cut) {
        server_in.extend_from_slice(seg);
        server_out.extend(sess.server_segment(seg));
        server_cuts.insert(server_in.len());
    }
    let client_segs: Vec<Vec<&[u8]>> = built
        .exchanges
        .iter()
        .map(|e| cut(&e.client, &s.cuts, &mut next_cut))
        .collect();
    let mut input = vec![];
    let mut output = vec![];
    let mut seg_ends = BTreeSet::new();
    for (i, ex) in built.exchanges.iter().enumerate() {
        let mut fed = vec![];
        let group_start = input.len();
        for seg in &client_segs[i] {
            let f = sess.client_segment(seg)?;
            resets += f.events.iter().filter(|o| o.resets_flow()).count();
            input.extend_from_slice(&f.input);
            output.extend_from_slice(&f.output);
            seg_ends.insert(input.len());
            fed.push(f);
        }
        // (d) the next segment, offered before the reply to the gate.
        if ex.gate {
            let early = s.early[next_early % s.early.len()];
            next_early += 1;
            if let Some(first) = client_segs.get(i + 1).and_then(|v| v.first()) {
                if early {
                    let shared = sess.shared;
                    let mut st = sess.client;
                    let mut buf = first.to_vec();
                    prop_assert_eq!(
                        sess.feed_from(&mut st, &mut buf),
                        Err(Held),
                        "not held before the reply to a gate: {}",
                        show(first)
                    );
                    prop_assert_eq!(sess.shared, shared);
                    stats.early_held += 1;
                }
            }
        }
        for seg in cut(&ex.server, &s.cuts, &mut next_cut) {
            server_in.extend_from_slice(seg);
            server_out.extend(sess.server_segment(seg));
            server_cuts.insert(server_in.len());
        }
        for f in &fed {
            stats.late_held += sess.refeed_late(f)? as usize;
        }
        if !fed.is_empty() {
            let (a, b) = s.regroup[next_regroup % s.regroup.len()];
            next_regroup += 1;
            let first = a % fed.len();
            let last = first + b % (fed.len() - first);
            let from = group_start + fed[..first].iter().map(|f| f.input.len()).sum::<usize>();
            if let Some(out) = sess.refeed_regrouped(&fed[first..=last])? {
                regrouped.push((from..from + out.len(), out));
            }
        }
        stats.segments += fed.len();
        stats.pipelined |= ex
            .server
            .split(|&b| b == b'\n')
            .filter(|l| l.get(3) == Some(&b' '))
            .count()
            > 2;
    }
    let all: Vec<u8> = built
        .exchanges
        .iter()
        .flat_map(|e| e.client.clone())
        .collect();
    prop_assert_eq!(&input, &all);
    prop_assert_eq!(output.len(), input.len());

    let seen = server_model(&output, &built.replies, &s.policy).map_err(|e| {
        TestCaseError::fail(format!(
            "server model: {e}\ninput:  {}\noutput: {}",
            show(&input),
            show(&output)
        ))
    })?;
    // The generator and the model agree on where the commands are.
    let gen: Vec<SeenCmd> = built
        .cmds
        .iter()
        .map(|c| SeenCmd {
            line: c.line.clone(),
            verb: c.verb.clone(),
        })
        .collect();
    prop_assert_eq!(&seen.cmds, &gen, "the server read other commands");

    for (c, g) in seen.cmds.iter().zip(&built.cmds) {
        let verb = upper(&output[c.verb.clone()]);
        // (a) no denied verb reaches the server.
        prop_assert!(
            !is_known_verb(&verb) || s.policy.allows(&verb),
            "the server got the denied verb {} in {}",
            show(&verb),
            show(&output[c.line.clone()])
        );
        // (b) allowed commands arrive unchanged.
        if g.allowed {
            prop_assert_eq!(
                show(&output[c.line.clone()]),
                show(&input[c.line.clone()]),
                "allowed command changed"
            );
        } else if is_known_verb(&upper(&input[c.verb.clone()])) {
            prop_assert_ne!(upper(&input[c.verb.clone()]), verb);
        }
    }
    // (c) only verb bytes of denied commands change, only to X, and only as
    // far as the segmentation allows; nothing else changes.
    for (i, (&a, &b)) in input.iter().zip(&output).enumerate() {
        if a != b {
            prop_assert_eq!(b, b'X', "byte {} changed to {:#x}", i, b);
            prop_assert_eq!(
                seen.class[i],
                Class::Command,
                "non-command byte {} changed",
                i
            );
            prop_assert!(
                built.cmds.iter().any(|c| !c.allowed && c.verb.contains(&i)),
                "byte {} changed outside a denied verb",
                i
            );
        }
    }
    let expected = expected_output(&input, &built, &s.policy, &seg_ends);
    prop_assert_eq!(
        show(&output),
        show(&expected),
        "masking differs from the expected one; input {}",
        show(&input)
    );
    // The server's side: the keywords of denied commands in replies to
    // EHLO are masked, nothing else changes.
    let expected = expected_server_output(&server_in, &built, &s.policy, &server_cuts);
    prop_assert_eq!(
        show(&server_out),
        show(&expected),
        "server side differs from the expected one"
    );
    // A denied BDAT, and only that, resets the flow.
    prop_assert_eq!(resets, built.bdat_resets, "flow resets");
    stats.keywords_masked = built.keywords.iter().filter(|k| k.denied).count();
    stats.bdat_resets = resets;
    // (e) the regrouped retransmissions, with the cuts they no longer have.
    for (range, out) in &regrouped {
        let cuts: BTreeSet<usize> = seg_ends
            .iter()
            .copied()
            .filter(|c| *c <= range.start || *c >= range.end)
            .collect();
        let expected = expected_output(&input, &built, &s.policy, &cuts);
        prop_assert_eq!(
            show(out),
            show(&expected[range.clone()]),
            "retransmission of bytes {:?} in one segment masked differently; input {}",
            range,
            show(&input)
        );
    }
    stats.bytes = input.len();
    for c in [Class::Body, Class::Chunk, Class::Sasl, Class::Opaque] {
        if seen.class.contains(&c) {
            stats.classes.push(c);
        }
    }
    stats.denied = built.cmds.iter().filter(|c| !c.allowed).count();
    stats.allowed = built.cmds.len() - stats.denied;
    stats.partly_kept = built
        .cmds
        .iter()
        .filter(|c| !c.allowed && output[c.verb.start] != b'X' && input[c.verb.start] != b'X')
        .count();
    Ok(stats)
}

/// Cases per run: `PROPTEST_CASES` if set (for a long soak), else enough to
/// stay within a few seconds in a debug build.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Integration tests have no lib.rs for proptest to find: say where
        // failing cases are kept.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/props.proptest-regressions"),
        )),
        max_shrink_iters: 4000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sessions(s in script()) {
        check_session(&s)?;
    }

    /// The same, with `.` CR CR LF ends of data, which Postfix accepts.
    #[test]
    fn random_sessions_with_multi_cr_end_of_data(s in script_with(true)) {
        check_session(&s)?;
    }
}

// ---------------------------------------------------------------------------
// The generator itself: it must produce what the properties are about.

#[test]
fn generator_covers_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = script();
    let n = 300;
    let mut all = vec![];
    for _ in 0..n {
        let s = strat.new_tree(&mut runner).unwrap().current();
        all.push(check_session(&s).unwrap());
    }
    let count = |f: &dyn Fn(&Stats) -> bool| all.iter().filter(|s| f(s)).count();
    let has = |c: Class| count(&|s: &Stats| s.classes.contains(&c));
    let bytes: usize = all.iter().map(|s| s.bytes).sum();
    let segments: usize = all.iter().map(|s| s.segments).sum();
    println!(
        "{n} sessions, {bytes} client bytes in {segments} segments; {} denied, {} allowed commands",
        all.iter().map(|s| s.denied).sum::<usize>(),
        all.iter().map(|s| s.allowed).sum::<usize>(),
    );
    for (what, k, min) in [
        ("a body", has(Class::Body), n / 4),
        ("a BDAT chunk", has(Class::Chunk), n / 20),
        ("a SASL exchange", has(Class::Sasl), n / 10),
        ("STARTTLS accepted", has(Class::Opaque), n / 20),
        ("denied commands", count(&|s| s.denied > 0), n / 2),
        ("allowed commands", count(&|s| s.allowed > 0), n / 2),
        ("pipelined groups", count(&|s| s.pipelined), n / 4),
        ("held early segments", count(&|s| s.early_held > 0), n / 10),
        ("held late retransmissions", count(&|s| s.late_held > 0), 1),
        (
            "denied verbs partly kept",
            count(&|s| s.partly_kept > 0),
            n / 20,
        ),
        (
            "EHLO keywords masked",
            count(&|s| s.keywords_masked > 0),
            n / 4,
        ),
        ("BDAT resets", count(&|s| s.bdat_resets > 0), n / 20),
    ] {
        println!("{k:4} with {what}");
        assert!(k >= min, "only {k} of {n} sessions with {what}");
    }
}

// ---------------------------------------------------------------------------
// Findings

fn one_shot(policy: &[&str], steps: &[(&str, &str)]) -> String {
    let keys = policy
        .iter()
        .map(|v| key_of(v.as_bytes()).unwrap())
        .collect();
    let mut s = Session::new(keys);
    s.server_segment(b"220 mx ESMTP\r\n");
    let mut out = vec![];
    for (client, server) in steps {
        if !client.is_empty() {
            out.extend(s.client_segment(client.as_bytes()).unwrap().output);
        }
        s.server_segment(server.as_bytes());
    }
    String::from_utf8(out).unwrap()
}

/// Postfix's `smtp_get()` strips *every* CR before the LF that ends a line
/// (`while (... vstring_end(vp)[-1] == '\r') vstring_truncate(...)`), so a
/// body line `.\r\r\n` ends the data: the parser must end the body there
/// too, or the command after it would pass as body text.
#[test]
fn end_of_data_with_several_crs() {
    let out = one_shot(
        DEFAULT_ALLOWED,
        &[
            ("DATA\r\n", "354 go ahead\r\n"),
            ("hello\r\n.\r\r\nSTARTTLS\r\n", ""),
        ],
    );
    assert_eq!(out, "DATA\r\nhello\r\n.\r\r\nXXXXXXXX\r\n");
}

/// A denied verb that is a proper prefix of an allowed one passes unmasked
/// when a segment ends right after it: the parser could not know yet that
/// it would end there. Real verbs are never prefixes of each other, but a
/// policy may make it happen (the comment in `end_verb` assumes it cannot).
#[test]
#[ignore = "limitation (README): a denied verb outside the well-known table that prefixes an allowed custom verb passes when a segment ends right after it"]
fn denied_prefix_of_allowed_verb_split_at_its_end() {
    let out = one_shot(&["EHLO", "X-FOOBAR"], &[("X-FOO", ""), ("\r\n", "")]);
    assert_eq!(out, "XXXXX\r\n");
}

// ---------------------------------------------------------------------------
// Replies to EHLO alone: any keywords, any case, cut anywhere.

/// Keywords a reply to EHLO may hold: known ones with and without a
/// command, X- ones, and random ones.
fn keyword() -> impl Strategy<Value = Vec<u8>> {
    const KNOWN: &[&str] = &[
        "STARTTLS",
        "CHUNKING",
        "AUTH",
        "ETRN",
        "VRFY",
        "ATRN",
        "XEXCH50",
        "VERB",
        "ONEX",
        "XCLIENT",
        "XFORWARD",
        "EXPN",
        "HELP",
        "X-EXPS",
        "X-LINK2STATE",
        "XUSR",
        "SIZE",
        "PIPELINING",
        "8BITMIME",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "BINARYMIME",
        "DELIVERBY",
    ];
    prop_oneof![
        4 => prop::sample::select(KNOWN).prop_map(|k| k.as_bytes().to_vec()),
        1 => prop::collection::vec(
            prop_oneof![b'A'..=b'Z', b'0'..=b'9', Just(b'-')],
            1..14
        ),
    ]
}

/// Whether a keyword names a command the policy denies (docs/contract.md
/// §10), written from the contract's table.
fn keyword_denied(kw: &[u8], policy: &Policy) -> bool {
    let u = upper(kw);
    let command: &[u8] = if u == b"CHUNKING" { b"BDAT" } else { &u };
    let names_command =
        u == b"CHUNKING" || u.starts_with(b"X") || WELL_KNOWN.iter().any(|v| v.as_bytes() == u);
    names_command && !policy.allows(command)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Exactly the keywords of denied commands are masked, whatever the
    /// segmentation and the case, except that a segment boundary may keep
    /// the part of one seen while it could still become a known keyword
    /// that passes, and may mask an unknown keyword it cuts where it could
    /// not (a client ignores unknown keywords).
    #[test]
    fn ehlo_reply_masks_exactly_the_denied_keywords(
        policy in policy(),
        kws in prop::collection::vec(
            (keyword(), any::<u64>(), prop::option::of("[ =][A-Za-z0-9 =]{0,12}")),
            1..12,
        ),
        cuts in prop::collection::vec(1..40usize, 1..8),
    ) {
        let mut sess = Session::new(policy.keys());
        sess.server_segment(b"220 mx ESMTP\r\n");
        let allowed = policy.allows(b"EHLO");
        sess.client_segment(b"EHLO client.example\r\n")?;
        let mut reply = b"250-mx.example Hello\r\n".to_vec();
        let mut spans = vec![];
        for (i, (kw, case, params)) in kws.iter().enumerate() {
            reply.extend_from_slice(if i + 1 == kws.len() { b"250 " } else { b"250-" });
            let start = reply.len();
            for (j, &b) in kw.iter().enumerate() {
                let flip = (case >> (j % 64)) & 1 == 1;
                reply.push(if flip { b.to_ascii_lowercase() } else { b });
            }
            spans.push((start..reply.len(), keyword_denied(kw, &policy)));
            if let Some(p) = params {
                reply.extend_from_slice(p.as_bytes());
            }
            reply.extend_from_slice(b"\r\n");
        }
        let mut next = 0;
        let mut out = vec![];
        let mut ends = BTreeSet::new();
        for seg in cut(&reply, &cuts, &mut next) {
            out.extend(sess.server_segment(seg));
            ends.insert(out.len());
        }
        let mut expected = reply.clone();
        if allowed {
            for (at, denied) in &spans {
                let kw = &reply[at.clone()];
                let cut_here = |n: usize| ends.contains(&(at.start + n));
                let kept = (1..=kw.len())
                    .filter(|&n| cut_here(n) && keyword_viable(&kw[..n], &policy))
                    .max()
                    .unwrap_or(0);
                let blind = (1..=kw.len()).any(|n| cut_here(n) && !keyword_viable(&kw[..n], &policy));
                if *denied || blind {
                    expected[at.start + kept..at.end].fill(b'X');
                }
            }
        }
        prop_assert_eq!(show(&out), show(&expected), "reply {}", show(&reply));
        // The parser believes CHUNKING was advertised iff the client saw it.
        let shown = out
            .split(|&b| b == b'\n')
            .skip(1)
            .any(|l| l.len() >= 12 && l[4..12].eq_ignore_ascii_case(b"CHUNKING")
                && l.get(12).is_none_or(|&b| !b.is_ascii_alphanumeric() && b != b'-'));
        prop_assert_eq!(sess.shared.chunking != 0, shown && allowed);
    }
}
