//! The SMTP stream parser: one state machine per direction, fed one byte at
//! a time (with the word-at-a-time fast paths of [`crate::scan`] for the
//! client's body and argument bytes), shared by the XDP/TC programs and the
//! userspace tests.
//!
//! Design rules (they are what makes it load in the kernel):
//! - no allocation, no recursion, no slices indexed at run time: every step
//!   is a small branchy function over a `#[repr(C)]` state struct, so the
//!   kernel can call it from a `bpf_loop` callback;
//! - each direction owns its own state ([`ClientState`], [`ServerState`]) and
//!   writes only that; what one direction must tell the other goes through
//!   single aligned 64-bit words (see [`Shared`]), so the two directions can
//!   run at the same time on two CPUs without a lock;
//! - the view of the stream equals the server's: verbs end at C-locale
//!   whitespace or LF, leading whitespace is skipped, a bare LF ends a line,
//!   and the client state follows the server's replies (354, 334, 235, 220),
//!   matched to commands in order so that PIPELINING works;
//! - the server direction masks too (docs/contract.md §10): in the reply to
//!   the client's last allowed EHLO (its unit number is a shared word), the
//!   keyword of every extension whose command the policy denies, and, as an
//!   option, the text of the greeting. What the client direction believes
//!   the server offered (CHUNKING) is what the client was shown;
//! - the limits of docs/contract.md §10 are counted here too (the length of
//!   a command line, RCPT per transaction, the address of MAIL/RCPT, the
//!   header lines of a DATA message's header section): a step reports the
//!   rules a byte went past in [`Out::limit`], and
//!   [`ClientState::limit_actions`] applies their actions (`mask` masks the
//!   line's verb, or becomes `reset` when the verb left in an earlier
//!   segment).

use crate::{
    config::{action, CFG_MASK_BANNER, CFG_NO_EHLO_FILTER},
    scan::{
        bytes_at, find_lf, scan_address, scan_body, scan_line, scan_to_lf, scan_word, verb_word,
        word_key, Words, CHUNK, NO_STOP,
    },
    verbs::{id, is_verb_char, key_push, PolicyEntry, VerbKey, ALLOWED, MAX_VERB, PREFIX},
};

/// States of the command (client to server) direction.
pub mod cstate {
    /// At the start of a command line, skipping leading whitespace.
    pub const LINE_START: u8 = 0;
    /// Inside a verb whose fate is not decided yet.
    pub const VERB: u8 = 1;
    /// Inside a verb that is masked: every further verb byte becomes `X`.
    pub const VERB_MASKED: u8 = 2;
    /// After the verb, up to the end of the line.
    pub const ARGS: u8 = 3;
    /// Message body after DATA and 354, until the end-of-data line.
    pub const BODY: u8 = 4;
    /// BDAT chunk: `count` bytes pass uninspected.
    pub const CHUNK: u8 = 5;
    /// A SASL response line (after 334), not inspected.
    pub const SASL: u8 = 6;
    /// A command whose reply decides what the next bytes are (DATA, AUTH, a
    /// SASL line, STARTTLS) was sent; bytes after it wait for that reply.
    pub const AWAIT_GATE: u8 = 7;
    /// After STARTTLS and 220: TLS, nothing more to inspect.
    pub const OPAQUE: u8 = 8;
}

/// Commands whose reply changes how the following client bytes are read.
pub mod gate {
    pub const DATA: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const SASL: u8 = 3;
    pub const STARTTLS: u8 = 4;
}

/// `ClientState::flags` bits.
const F_ALLOWED: u8 = 1;
/// The line is an allowed MAIL or RCPT: its argument goes through the
/// address rules (and is stepped byte by byte, not skipped to its LF).
const F_ADDRESS: u8 = 2;

/// Address parser states (in `ClientState::addr` while in the argument of
/// an allowed MAIL or RCPT). The address is what is between `<` and `>`;
/// without a `<`, the word after the colon of `FROM:`/`TO:` (or the first
/// word, if it has no colon).
mod addr {
    /// Whitespace before the first word.
    pub const PRE: u8 = 0;
    /// In the first word, before its colon (`FROM`, `TO`).
    pub const KEY: u8 = 1;
    /// After the colon, before the address.
    pub const COLON: u8 = 2;
    /// In an address without angle brackets.
    pub const BARE: u8 = 3;
    /// Inside the `<...>` of the address.
    pub const IN: u8 = 4;
    /// After the address: ESMTP parameters.
    pub const DONE: u8 = 5;
    /// Inside a bracketed parameter value (RFC 4954's `AUTH=<>`).
    pub const PARAM_IN: u8 = 6;
}

/// Header-section states (in `ClientState::hdr` while in a body).
mod hdr {
    /// Not in a header section: the body proper, or not in a body.
    pub const OFF: u8 = 0;
    /// In the header section.
    pub const LINE: u8 = 1;
    /// In the header section, on a line that so far is one CR: a LF now
    /// ends the section.
    pub const CR: u8 = 2;
}

/// `ClientState::lim` bits: what the limits did on the current line.
mod lim {
    pub const ADDRESS_LENGTH: u8 = 1;
    pub const ADDRESS_CHARS: u8 = 2;
    pub const HEADER_LINE: u8 = 4;
    /// A `mask` action masked the line's verb.
    pub const MASKED: u8 = 8;
}

/// BDAT argument parser states (in `ClientState::sub` while in ARGS).
mod bdat {
    pub const START: u8 = 0; // whitespace before the size
    pub const SIZE: u8 = 1; // in the digits of the size
    pub const AFTER_SIZE: u8 = 2; // whitespace after the size
    pub const LAST: u8 = 3; // 3..=6: matched 1..=4 letters of LAST
    pub const AFTER_LAST: u8 = 7;
    pub const INVALID: u8 = 8;
}

/// Body end-of-data matcher states (in `ClientState::sub` while in BODY).
mod body {
    pub const MID: u8 = 0;
    pub const BOL: u8 = 1;
    pub const DOT: u8 = 2;
    pub const DOT_CR: u8 = 3;
}

/// C-locale whitespace other than LF: what Postfix skips before a verb and
/// what ends one.
#[inline(always)]
pub const fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r')
}

/// State of the command direction. Written only by the program instance
/// that sees client-to-server packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientState {
    /// Key of the current verb (its first `MAX_VERB` bytes, upper-cased).
    pub verb: VerbKey,
    /// BDAT: size being parsed (ARGS) or bytes left (CHUNK).
    pub count: u64,
    /// Number of commands sent that the server answers with one reply each.
    pub units: u32,
    /// AWAIT_GATE: `units` value right after the gate command (its index + 1).
    pub gate_unit: u32,
    pub state: u8,
    /// Verb bytes seen, saturating at `MAX_VERB + 1`.
    pub verb_len: u8,
    /// Counter slot of the current verb.
    pub verb_id: u8,
    /// `F_ALLOWED` once the verb is known to be allowed.
    pub flags: u8,
    /// Sub-state: BDAT argument parser in ARGS, end-of-data matcher in BODY.
    pub sub: u8,
    /// AWAIT_GATE: which [`gate`] kind.
    pub gate_kind: u8,
    /// Allowed RCPT commands since the last MAIL, RSET, HELO or EHLO
    /// (saturating), for the RCPT limit.
    pub rcpts: u16,
    /// Unit number of the last allowed EHLO (0: none yet), published as
    /// [`Shared::client_ehlo`] so that the server direction knows which
    /// reply answers it.
    pub ehlo_unit: u32,
    /// Bytes of the current command line so far (saturating), for the
    /// command-line limit (docs/contract.md §10).
    pub line_len: u32,
    /// Address parser state (`addr::*`) in the argument of MAIL/RCPT.
    pub addr: u8,
    /// Header-section state (`hdr::*`) in a body.
    pub hdr: u8,
    /// `lim::*` bits: what the limits did on the current line.
    pub lim: u8,
    pub _pad: u8,
    /// Bytes of the address so far (saturating).
    pub addr_len: u16,
    /// Bytes of the current header line so far, its LF excluded
    /// (saturating; a line-start dot, which the server removes, is not
    /// counted; a CR is, but the CR of the CRLF never goes past the limit).
    pub hdr_len: u16,
}

/// Longest command line the limit lets through, its CRLF included
/// (RFC 5321 4.5.3.1.4, the ASA's default).
pub const MAX_COMMAND_LINE: u32 = 512;

/// Most RCPT commands per transaction the limit lets through (the ASA's
/// default).
pub const MAX_RCPTS: u16 = 100;

/// Longest MAIL/RCPT address the limit lets through (the ASA's default
/// for the sender address; RFC 5321 allows 64 + 1 + 255 bytes).
pub const MAX_ADDRESS: u16 = 320;

/// Longest header line the limit lets through, CRLF excluded (RFC 5322
/// 2.1.1, the ASA's default).
pub const MAX_HEADER_LINE: u16 = 998;

/// Limit rules. [`Out::limit`] holds one bit per rule that matched
/// ([`rule::bit`]).
pub mod rule {
    /// A command line longer than [`super::MAX_COMMAND_LINE`].
    pub const COMMAND_LINE: u8 = 1;
    /// More than [`super::MAX_RCPTS`] RCPT commands in one transaction:
    /// every RCPT after the 100th.
    pub const RCPTS: u8 = 2;
    /// A MAIL/RCPT address longer than [`super::MAX_ADDRESS`].
    pub const ADDRESS_LENGTH: u8 = 3;
    /// A MAIL/RCPT argument holding a character no address has: `|`, a
    /// backquote, NUL, or unbalanced angle brackets.
    pub const ADDRESS_CHARS: u8 = 4;
    /// A header line longer than [`super::MAX_HEADER_LINE`] in a message's
    /// header section (DATA only: BDAT chunks are not parsed).
    pub const HEADER_LINE: u8 = 5;
    /// Number of rules.
    pub const COUNT: u8 = 5;

    /// The bit of `rule` in [`super::Out::limit`].
    #[inline(always)]
    pub const fn bit(rule: u8) -> u8 {
        1 << ((rule.wrapping_sub(1)) & 7)
    }

    /// Whether a rule's action may be `mask`: only a rule about one
    /// command (its verb can be masked); a line cannot be masked without
    /// changing mail.
    #[inline(always)]
    pub const fn maskable(rule: u8) -> bool {
        matches!(rule, RCPTS | ADDRESS_LENGTH | ADDRESS_CHARS)
    }
}

/// State of the reply (server to client) direction. Written only by the
/// program instance that sees server-to-client packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerState {
    /// First bytes of the current line's first word, upper-cased (the
    /// extension name on a line of the reply to EHLO).
    pub text: VerbKey,
    /// Complete replies after the greeting.
    pub replies: u32,
    /// Reply code of the current line.
    pub code: u16,
    /// 0: line start / in the code, 1: text of a continuation line, 2: text of
    /// a final line, 3: a line that is not a reply line, 4: opaque (TLS).
    pub state: u8,
    /// Code digits seen on this line.
    pub digits: u8,
    /// Length of the first word of the text (saturating at `MAX_VERB + 1`),
    /// with `WORD_DONE` once it ended.
    pub text_len: u8,
    /// 1 once the greeting (the first reply) is complete.
    pub greeted: u8,
    /// Lines of the current reply completed so far (saturating).
    pub lines: u8,
    /// Whether the first word of this line is an EHLO keyword being
    /// filtered: one of [`kw`].
    pub kw: u8,
}

/// `ServerState::kw`: the keyword of a line of the reply to EHLO.
pub mod kw {
    /// Not an EHLO keyword line, or its keyword is decided and kept.
    pub const OFF: u8 = 0;
    /// In a keyword not decided yet.
    pub const OPEN: u8 = 1;
    /// In a keyword that is masked: every further keyword byte too.
    pub const MASKED: u8 = 2;
}

mod sstate {
    pub const CODE: u8 = 0;
    pub const CONT: u8 = 1;
    pub const FINAL: u8 = 2;
    pub const JUNK: u8 = 3;
    pub const OPAQUE: u8 = 4;
}

/// Slots of the gate-reply ring in [`Shared`].
pub const GATE_SLOTS: usize = 4;

/// What the two directions tell each other. Every field is one aligned
/// 64-bit word written by exactly one direction with a single store, so a
/// reader on another CPU sees either the old or the new value, never a mix.
/// Causality does the rest: a client sends the bytes that depend on a reply
/// only after that reply passed through the server-direction program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// Client-written: `gate_unit << 8 | gate_kind` of the last gate command.
    pub client_gate: u64,
    /// Server-written: `(unit << 16) | code` of the reply to gate command
    /// `unit`, in slot `unit % GATE_SLOTS` (older gates stay readable for
    /// re-inspection of a retransmitted segment).
    pub gate_replies: [u64; GATE_SLOTS],
    /// Server-written: 1 if the last reply to EHLO showed the client
    /// CHUNKING (not masked).
    pub chunking: u64,
    /// Client-written: the unit number of the last allowed EHLO, so that
    /// the server direction knows which reply to filter (replies answer
    /// commands in order: reply `n` after the greeting answers unit `n`).
    pub client_ehlo: u64,
}

impl Shared {
    /// The reply code to gate command number `unit`, if the server answered.
    #[inline(always)]
    pub fn gate_reply(&self, unit: u32) -> Option<u16> {
        let v = self.gate_replies[(unit as usize) % GATE_SLOTS];
        if (v >> 16) as u32 == unit && unit != 0 {
            Some(v as u16)
        } else {
            None
        }
    }
}

/// What the parser needs from its environment: the live policy and the
/// other direction's published words.
pub trait Env {
    /// The policy entry of a verb key, `None` if the map has none.
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry>;
    /// The reply code to gate command `unit`, if known yet.
    fn gate_reply(&self, unit: u32) -> Option<u16>;
    /// Whether the server advertised CHUNKING.
    fn chunking(&self) -> bool;
    /// The action (`config::action`) of limit `rule`; `log` unless told.
    #[inline(always)]
    fn limit_action(&self, _rule: u8) -> u32 {
        action::LOG
    }
}

/// What to do with the byte just parsed (and possibly earlier ones).
pub mod act {
    /// Leave the byte as it is.
    pub const KEEP: u8 = 0;
    /// Mask `[mask_from, mask_to)` of this segment.
    pub const MASK: u8 = 1;
    /// The byte's meaning depends on a reply not seen yet: hold (drop) the
    /// whole segment, do not commit the state; TCP will retransmit it.
    pub const HOLD: u8 = 2;
}

/// Events worth a counter.
pub mod event {
    pub const NONE: u8 = 0;
    /// A command line's verb ended (`verb_id`, `masked`).
    pub const COMMAND: u8 = 1;
    /// DATA was answered with 354: a body starts.
    pub const BODY_START: u8 = 2;
    /// The end-of-data line was seen.
    pub const BODY_END: u8 = 3;
    /// An allowed BDAT started a chunk.
    pub const CHUNK: u8 = 4;
    /// STARTTLS was answered with 220: the flow is now opaque.
    pub const STARTTLS: u8 = 5;
    /// AUTH was answered with 334: a SASL exchange starts.
    pub const SASL_START: u8 = 6;
}

/// Result of one parser step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Out {
    pub act: u8,
    pub mask_from: u32,
    pub mask_to: u32,
    pub event: u8,
    pub verb_id: u8,
    pub masked: u8,
    /// The limit rules this byte went past, one [`rule::bit`] each (each
    /// once per line, RCPTS once per RCPT), those whose action is `off`
    /// left out.
    pub limit: u8,
    /// What the limits that matched ask for, the strongest of their
    /// actions (`config::action`: log, mask, reset, drop-connection), after
    /// the parser applied `mask` (to [`Self::act`]) or turned it into
    /// `reset` because the verb is not in this segment.
    pub limit_act: u8,
    /// The rule whose action is [`Self::limit_act`] (the reason reported
    /// for a reset).
    pub limit_rule: u8,
}

impl Out {
    /// Whether this step masked a BDAT command, which means the flow must
    /// be reset (docs/contract.md §10): a BDAT is followed at once by its
    /// chunk, without waiting for a reply, and the server, which answers
    /// the masked verb with 500, would read the chunk (mail content,
    /// written by anyone) as commands.
    #[inline(always)]
    pub fn resets_flow(&self) -> bool {
        self.event == event::COMMAND && self.masked != 0 && self.verb_id == id::BDAT
    }
}

/// Per-segment context of the client parser (not part of the flow state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Seg {
    /// Segment offset where the current verb started (0 if it started in an
    /// earlier segment).
    pub verb_start: u32,
    /// Segment offset where the current line's verb ended. The verb bytes
    /// of this segment (chunk) are `[verb_start, verb_end)` when that is
    /// not empty; otherwise the whole verb left in earlier segments.
    pub verb_end: u32,
}

impl ClientState {
    /// Whether the parser must look at every byte (false in states where a
    /// run of bytes passes unexamined: a BDAT chunk and opaque TLS).
    #[inline(always)]
    pub fn skippable(&self) -> u64 {
        match self.state {
            cstate::CHUNK => self.count,
            cstate::OPAQUE => u64::MAX,
            _ => 0,
        }
    }

    /// Skips `n` bytes that [`Self::skippable`] allowed.
    #[inline(always)]
    pub fn skip(&mut self, n: u64) {
        if self.state == cstate::CHUNK {
            self.count -= n;
            if self.count == 0 {
                self.state = cstate::LINE_START;
            }
        }
    }

    /// Whether every byte other than LF leaves this state exactly as it is
    /// (and is kept), but for the line's length: the middle of a body line,
    /// the arguments of a command other than BDAT and an allowed MAIL or
    /// RCPT (whose address is checked byte by byte), a SASL line.
    /// [`Self::skip_ahead`] then skips to the next LF a word at a time
    /// instead of stepping byte by byte, counting what a line limit counts
    /// (in a header line, [`Self::header_ahead`] also takes the LF).
    #[inline(always)]
    pub fn skips_to_lf(&self) -> bool {
        match self.state {
            // In the header section, only once the line has a byte (see
            // `header_byte`: the first may be a lone CR).
            cstate::BODY => self.sub == body::MID && (self.hdr == hdr::OFF || self.hdr_len != 0),
            cstate::ARGS => self.verb_id != id::BDAT && self.flags & F_ADDRESS == 0,
            cstate::SASL => true,
            _ => false,
        }
    }

    /// Whether the body fast path applies: in a body past its header
    /// section, at a line start or in the middle of a line (not right after
    /// a line-start dot).
    #[inline(always)]
    pub fn body_scannable(&self) -> bool {
        self.state == cstate::BODY
            && self.hdr == hdr::OFF
            && (self.sub == body::MID || self.sub == body::BOL)
    }

    /// The word-at-a-time fast paths of [`crate::scan`]: moves over bytes
    /// `[at, end)` of the chunk `buf` that cannot change this state other
    /// than as this function does itself (a BDAT chunk or the opaque stream
    /// after STARTTLS, which are not looked at; body bytes without an
    /// end-of-data line; argument and SASL bytes up to the next LF; a
    /// header line, its LF included, in two rounds: see
    /// [`Self::header_ahead`]). Returns
    /// the offset reached: `at` when no fast path applies (the caller then
    /// steps one byte), more when it advanced. Called before every
    /// [`Self::step`], by the kernel and by [`feed_client`] alike.
    #[inline(always)]
    pub fn skip_ahead<W: Words + ?Sized>(&mut self, buf: &W, at: u32, end: u32) -> u32 {
        let n = core::cmp::min(self.skippable(), (end - at) as u64);
        if n > 0 {
            self.skip(n);
            return at + n as u32;
        }
        if self.body_scannable() {
            let (to, bol) = scan_body(buf, at, end, self.at_line_start());
            if to != at {
                self.body_skipped(bol);
            }
            return to;
        }
        if self.state == cstate::BODY && self.hdr != hdr::OFF {
            return self.header_ahead(buf, at, end);
        }
        if self.skips_to_lf() {
            if self.state == cstate::ARGS {
                return self.args_ahead(buf, at, end);
            }
            return scan_to_lf(buf, at, end);
        }
        if self.state == cstate::ARGS && self.flags & F_ADDRESS != 0 {
            return self.address_ahead(buf, at, end);
        }
        at
    }

    /// The header-section part of [`Self::skip_ahead`]: a header line in
    /// two rounds, as stepping its bytes would take it. At the line's
    /// start, its first byte if it is plain (a dot, a CR or a LF has a step
    /// of its own: a dot may end the data, a lone CR line ends the
    /// section). Inside the line, the line to its LF, counted into its
    /// length and up to the byte at which the header-line limit matches,
    /// which is left to `step` (once it matched, the rest of the line goes
    /// at full speed); then the LF, at which no limit matches. Returns the
    /// offset reached (`at` if nothing applies: then nothing changed).
    #[inline(always)]
    fn header_ahead<W: Words + ?Sized>(&mut self, buf: &W, at: u32, end: u32) -> u32 {
        if self.sub == body::BOL && self.hdr == hdr::LINE && self.hdr_len == 0 {
            if at >= end {
                return at;
            }
            let b = buf.byte(at as usize);
            if b == b'.' || b == b'\r' || b == b'\n' {
                return at;
            }
            // Its step (no limit matches at a line's first byte). The
            // rest of the line is the next round's: the scan below from two
            // places makes the kernel's verifier walk 100k more instructions.
            self.hdr_len = 1;
            self.sub = body::MID;
            return at + 1;
        }
        if !self.skips_to_lf() {
            return at;
        }
        let stop = if self.lim & lim::HEADER_LINE != 0 {
            end
        } else if self.hdr_len >= MAX_HEADER_LINE {
            at
        } else {
            core::cmp::min(end, at + (MAX_HEADER_LINE - self.hdr_len) as u32)
        };
        let (to, lf) = find_lf(buf, at, stop);
        if to != at {
            let n = core::cmp::min(to - at, u16::MAX as u32) as u16;
            self.hdr_len = self.hdr_len.saturating_add(n);
            self.hdr = hdr::LINE;
        }
        // The LF's step, on a line that is more than a lone CR (which
        // would end the section).
        if lf && self.hdr == hdr::LINE {
            self.hdr_len = 0;
            self.lim = 0;
            self.sub = body::BOL;
            return to + 1;
        }
        to
    }

    /// The address fast path, in the argument of an allowed MAIL or RCPT.
    /// One round takes one step of the line's shape at `at`, if it is
    /// there (a `TO:<` or `FROM:<`, any case, right after the verb; the
    /// `>` that closes the address; the LF after it), then scans to the
    /// next byte an address rule looks at (LF, `<`, `>`, `|`, backquote,
    /// NUL; and `~`, 0x02, 0x08, where the scan only stops early: see
    /// `scan::address_stops`). Every byte is counted as its step would
    /// count it (the command line; the address, inside the brackets), and
    /// the path stops short of any byte at which a limit would match, which
    /// is left to `step`. It takes what [`Self::line_ahead`] left in the
    /// verb's round (parameters after the address, a line end cut off by
    /// the segment's end). (One scan per round: two in a row multiply the
    /// paths the verifier walks past its budget.)
    #[inline(always)]
    fn address_ahead<W: Words + ?Sized>(&mut self, buf: &W, at: u32, end: u32) -> u32 {
        let Some(x) = bytes_at(buf, at, end) else {
            return self.address_scan(buf, at, end);
        };
        let n = if self.addr == addr::PRE {
            match address_opening(x) {
                Some(n) => n,
                None => return at,
            }
        } else if self.addr == addr::IN && x as u8 == b'>' {
            // The `>` that closes the address.
            1
        } else if self.addr == addr::DONE && x as u8 == b'\n' {
            // The LF after the address closed: no rule matches at it (no
            // `<` is open), so below the line's limit it ends the line as
            // its step would (a MAIL or RCPT starts no gate).
            if self.line_len >= MAX_COMMAND_LINE {
                return at;
            }
            self.line_len += 1;
            self.end_line(false, &mut Out::default());
            return at + 1;
        } else {
            0
        };
        if self.line_len + n > MAX_COMMAND_LINE {
            return at;
        }
        self.line_len += n;
        if n > 1 {
            self.addr = addr::IN;
            self.addr_len = 0;
        } else if n == 1 {
            self.addr = addr::DONE;
        }
        self.address_scan(buf, at + n, end)
    }

    /// How far a fast path may count command-line bytes from `at`: up to
    /// the byte at which the command-line limit matches, which is left to
    /// `step` (once it matched, to `end`).
    #[inline(always)]
    fn line_stop(&self, at: u32, end: u32) -> u32 {
        if self.line_len > MAX_COMMAND_LINE {
            end
        } else {
            core::cmp::min(end, at + (MAX_COMMAND_LINE - self.line_len))
        }
    }

    /// One scan of [`Self::address_ahead`], inside the brackets (IN) or
    /// after them (DONE, PARAM_IN): the offset reached.
    #[inline(always)]
    fn address_scan<W: Words + ?Sized>(&mut self, buf: &W, at: u32, end: u32) -> u32 {
        let inside = self.addr == addr::IN;
        if !inside && self.addr != addr::DONE && self.addr != addr::PARAM_IN {
            return at;
        }
        let mut stop = self.line_stop(at, end);
        if inside && self.lim & lim::ADDRESS_LENGTH == 0 {
            if self.addr_len >= MAX_ADDRESS {
                return at;
            }
            stop = core::cmp::min(stop, at + (MAX_ADDRESS - self.addr_len) as u32);
        }
        let to = scan_address(buf, at, stop);
        let n = to - at;
        self.line_len = self.line_len.saturating_add(n);
        if inside {
            let n = core::cmp::min(n, u16::MAX as u32) as u16;
            self.addr_len = self.addr_len.saturating_add(n);
        }
        to
    }

    /// The argument part of [`Self::skip_ahead`]: in the arguments of a
    /// command other than BDAT, to the next LF (or as far as
    /// [`crate::scan::find_flagged`] reaches), counting the command
    /// line's bytes. Returns the offset reached (`at` in any other state).
    /// Argument checks that must see bytes (per verb) belong here and in
    /// [`Self::line_ahead`]: return `at` where they apply.
    #[inline(always)]
    fn args_ahead<W: Words + ?Sized>(&mut self, buf: &W, at: u32, end: u32) -> u32 {
        // BDAT's size and the address of an allowed MAIL or RCPT are read
        // byte by byte (the BDAT parser, the address rules).
        if self.state != cstate::ARGS || self.verb_id == id::BDAT || self.flags & F_ADDRESS != 0 {
            return at;
        }
        // A command line: counted, and the byte that goes past the limit
        // is left to `step`, which reports it.
        let stop = self.line_stop(at, end);
        let to = scan_to_lf(buf, at, stop);
        self.line_len += to - at;
        to
    }

    /// The rest of a command line, in the round of its verb (after
    /// [`Self::verb_ahead`] took it, at the offset after the verb's
    /// delimiter): what stepping its bytes would do, in one scan, where
    /// the line is plain. Returns the offset reached (`at` if nothing
    /// applies; then nothing changed):
    /// - the arguments of a command other than BDAT (whose size the BDAT
    ///   parser reads byte by byte): to the next LF, counted into the
    ///   line, and past the LF, which ends the line, if no rule matches at
    ///   it (the byte past the command-line limit is left to `step`);
    /// - the argument of an allowed MAIL or RCPT, if it starts with `TO:<`
    ///   or `FROM:<` (any case): to the next byte an address rule looks at,
    ///   counted into the line and the address (as far as neither limit
    ///   matches); and if that byte is the `>` that closes the address and
    ///   the line ends right after it (LF or CRLF), past the line's end.
    ///   Parameters after the address, or anything else, are left to the
    ///   rounds of [`Self::skip_ahead`] from the offset reached.
    ///
    /// So a plain `RCPT TO:<a@b>` line, or a command without arguments,
    /// costs one round. (One scan, not two: a second one in the same round
    /// multiplies the paths the kernel's verifier walks past its budget.)
    #[inline(always)]
    pub fn line_ahead<W: Words + ?Sized>(
        &mut self,
        buf: &W,
        at: u32,
        end: u32,
        chunking: bool,
    ) -> u32 {
        if self.state != cstate::ARGS || self.verb_id == id::BDAT {
            return at;
        }
        let address = self.flags & F_ADDRESS != 0;
        let mut from = at;
        let mut stop = end;
        if address {
            // Right after the verb, as `address_ahead` takes it: nothing
            // of it is counted into the address, which starts after `<`.
            if self.addr != addr::PRE {
                return at;
            }
            let Some(n) = bytes_at(buf, at, end).and_then(address_opening) else {
                return at;
            };
            if self.line_len + n > MAX_COMMAND_LINE {
                return at;
            }
            self.line_len += n;
            self.addr = addr::IN;
            self.addr_len = 0;
            from = at + n;
            // `end_verb` cleared `lim`: the address limit has not matched.
            // (One scan reaches fewer bytes than this today; the later
            // rounds of `address_scan` count the rest against the limit.)
            stop = from + MAX_ADDRESS as u32;
        }
        let stop = core::cmp::min(stop, self.line_stop(from, end));
        let (to, b) = scan_line(buf, from, stop, address);
        let n = to - from;
        self.line_len += n;
        if address {
            // At most MAX_ADDRESS.
            self.addr_len = n as u16;
            if b != b'>' as u32 {
                return to;
            }
            // The `>` closes the address; a LF or CRLF right after it ends
            // the line, and no rule matches at any of them (no `<` is open).
            let k = if to + 1 < end && buf.byte(to as usize + 1) == b'\n' {
                2
            } else if to + 2 < end
                && buf.byte(to as usize + 1) == b'\r'
                && buf.byte(to as usize + 2) == b'\n'
            {
                3
            } else {
                return to;
            };
            if self.line_len + k > MAX_COMMAND_LINE {
                return to;
            }
            self.addr = addr::DONE;
            self.end_line(false, &mut Out::default());
            return to + k;
        }
        // `count_line_byte` (below the limit), then the LF's `end_line`,
        // which starts no gate here that would produce anything (BDAT,
        // whose line end may start a chunk, was left out above).
        if b == b'\n' as u32 && self.line_len < MAX_COMMAND_LINE {
            self.line_len += 1;
            self.end_line(chunking, &mut Out::default());
            return to + 1;
        }
        to
    }

    /// The verb fast path: at a line start, a verb of 1 to 7 verb
    /// characters and the byte that ends it, read in one word
    /// ([`crate::scan::verb_word`]) and decided with one policy lookup,
    /// leaving the state, `seg` and `out` as stepping those bytes would
    /// (the verb bytes' own steps produce nothing). `pos` is the segment
    /// offset of buffer offset `at`. Returns the offset after the
    /// delimiter and the delimiter step's result, or `at` if the path does
    /// not apply (then nothing changed): another state, leading whitespace, a longer or odd verb,
    /// fewer than 16 bytes to the chunk's end, or a command line that may
    /// go past a limit within these bytes (a per-byte rule belongs to
    /// `step`). Called before [`Self::skip_ahead`] in every round, by the
    /// kernel and by [`feed_client`] alike.
    #[inline(always)]
    pub fn verb_ahead<W: Words + ?Sized, E: Env>(
        &mut self,
        buf: &W,
        at: u32,
        end: u32,
        pos: u32,
        seg: &mut Seg,
        env: &E,
    ) -> (u32, Out) {
        let mut out = Out::default();
        // `count_line_byte` reports the byte after MAX_COMMAND_LINE: none
        // of the (at most 8) bytes taken here can be it.
        // Past the RCPT limit, RCPT (whose verb's step reports the limit,
        // and whose `mask` action needs the verb's bytes) goes byte by byte:
        // the verb round's result carries no limit (see `limit_actions`).
        if self.state != cstate::LINE_START
            || self.line_len + 8 > MAX_COMMAND_LINE
            || self.rcpts >= MAX_RCPTS
        {
            return (at, out);
        }
        let Some(x) = bytes_at(buf, at, end) else {
            return (at, out);
        };
        let Some((key, len)) = verb_word(x) else {
            return (at, out);
        };
        // As the first verb byte's step starts the verb and the later ones
        // add to its key; the delimiter's step ends it.
        self.line_len += len + 1;
        self.state = cstate::VERB;
        self.verb = key;
        self.verb_len = len as u8;
        self.flags = 0;
        seg.verb_start = pos;
        self.end_verb((x >> (8 * len)) as u8, pos + len, true, seg, env, &mut out);
        (at + len + 1, out)
    }

    /// After [`crate::scan::scan_body`] skipped body bytes that hold no
    /// line-start dot: the line position is all that changed (the last byte
    /// was a LF or not).
    #[inline(always)]
    pub fn body_skipped(&mut self, ends_with_lf: bool) {
        self.sub = if ends_with_lf { body::BOL } else { body::MID };
    }

    /// Whether a body scan starts at a line start.
    #[inline(always)]
    pub fn at_line_start(&self) -> bool {
        self.sub == body::BOL
    }

    /// The [`Shared::client_ehlo`] word this state publishes, once an
    /// allowed EHLO was sent.
    #[inline(always)]
    pub fn ehlo_word(&self) -> Option<u64> {
        if self.ehlo_unit != 0 {
            Some(self.ehlo_unit as u64)
        } else {
            None
        }
    }

    /// The [`Shared::client_gate`] word this state publishes: the gate it
    /// waits on, if it waits on one.
    #[inline(always)]
    pub fn gate_word(&self) -> Option<u64> {
        if self.state == cstate::AWAIT_GATE {
            Some(((self.gate_unit as u64) << 8) | self.gate_kind as u64)
        } else {
            None
        }
    }

    /// Starts a segment.
    #[inline(always)]
    pub fn begin_segment(&self) -> Seg {
        Seg {
            verb_start: 0,
            verb_end: 0,
        }
    }

    /// Parses byte `b` at offset `pos` of the current segment.
    #[inline(always)]
    pub fn step<E: Env>(&mut self, b: u8, pos: u32, seg: &mut Seg, env: &E) -> Out {
        let mut out = Out::default();
        if self.state == cstate::AWAIT_GATE && !self.resolve_gate(env, &mut out) {
            out.act = act::HOLD;
            return out;
        }
        if matches!(
            self.state,
            cstate::LINE_START | cstate::VERB | cstate::VERB_MASKED | cstate::ARGS
        ) {
            self.count_line_byte(&mut out);
        }
        match self.state {
            cstate::LINE_START => {
                if b == b'\n' {
                    // An empty line: the server answers it (500), so it is a unit.
                    self.units = self.units.wrapping_add(1);
                    self.line_len = 0;
                } else if !is_space(b) {
                    self.state = cstate::VERB;
                    self.verb = 0;
                    self.verb_len = 0;
                    self.flags = 0;
                    seg.verb_start = pos;
                    self.verb_byte(b, pos, seg, &mut out);
                }
            }
            cstate::VERB => {
                if b == b'\n' || is_space(b) {
                    self.end_verb(b, pos, false, seg, env, &mut out);
                } else {
                    self.verb_byte(b, pos, seg, &mut out);
                }
            }
            cstate::VERB_MASKED => {
                if b == b'\n' || is_space(b) {
                    self.end_verb(b, pos, false, seg, env, &mut out);
                } else {
                    self.add_to_key(b);
                    out.act = act::MASK;
                    out.mask_from = pos;
                    out.mask_to = pos + 1;
                }
            }
            cstate::ARGS => {
                if self.flags & F_ADDRESS != 0 {
                    self.address_byte(b, &mut out);
                }
                if b == b'\n' {
                    self.end_line(env.chunking(), &mut out);
                } else if self.verb_id == id::BDAT {
                    self.bdat_arg(b);
                }
            }
            cstate::BODY => {
                if self.hdr != hdr::OFF {
                    self.header_byte(b, &mut out);
                }
                self.body_byte(b, &mut out);
            }
            cstate::CHUNK => self.skip(1),
            cstate::SASL if b == b'\n' => {
                self.units = self.units.wrapping_add(1);
                self.start_gate(gate::SASL);
            }
            _ => {} // OPAQUE
        }
        out
    }

    /// Called after the last byte of a segment: decides a verb that is still
    /// open, masking what this segment holds of it if it cannot become an
    /// allowed verb any more.
    #[inline(always)]
    pub fn end_segment<E: Env>(&mut self, seg_len: u32, seg: &Seg, env: &E) -> Out {
        let mut out = Out::default();
        if self.state == cstate::VERB {
            let entry = env.policy(self.verb);
            let flags = entry.map(|e| e.flags).unwrap_or(0);
            // A well-known verb that is denied but also the start of an
            // allowed one (a custom policy) could end right here: mask it.
            let known_denied = entry
                .map(|e| e.verb_id != crate::verbs::OTHER && e.flags & ALLOWED == 0)
                .unwrap_or(false);
            if flags & (ALLOWED | PREFIX) == 0 || known_denied {
                self.state = cstate::VERB_MASKED;
                out.act = act::MASK;
                out.mask_from = seg.verb_start;
                out.mask_to = seg_len;
            }
        }
        out
    }

    #[inline(always)]
    fn add_to_key(&mut self, b: u8) {
        let len = self.verb_len as usize;
        if len < MAX_VERB && is_verb_char(b) {
            self.verb = key_push(self.verb, len, b);
        }
        if len <= MAX_VERB {
            self.verb_len += 1;
        }
    }

    /// A byte of a verb not yet decided.
    #[inline(always)]
    fn verb_byte(&mut self, b: u8, pos: u32, seg: &Seg, out: &mut Out) {
        let fits = (self.verb_len as usize) < MAX_VERB && is_verb_char(b);
        self.add_to_key(b);
        if !fits {
            // Too long or a character no verb has: it can never be allowed.
            self.state = cstate::VERB_MASKED;
            out.act = act::MASK;
            out.mask_from = seg.verb_start;
            out.mask_to = pos + 1;
        }
    }

    /// The verb ended with delimiter `b` at `pos`. `whole`: the caller
    /// knows that the key holds all of the verb (the verb fast path, which
    /// takes verb characters only), so it need not be measured.
    #[inline(always)]
    fn end_verb<E: Env>(
        &mut self,
        b: u8,
        pos: u32,
        whole: bool,
        seg: &mut Seg,
        env: &E,
        out: &mut Out,
    ) {
        seg.verb_end = pos;
        self.lim = 0;
        self.addr = addr::PRE;
        self.addr_len = 0;
        let entry = env.policy(self.verb);
        // The verb's counter slot, if its key holds all of it (a byte no
        // verb has, such as NUL, does not enter the key: `BD\0AT` is not
        // BDAT).
        let whole = whole
            || (self.verb_len as usize <= MAX_VERB
                && crate::policy::key_len(self.verb) == self.verb_len as usize);
        self.verb_id = match entry {
            Some(e) if whole => e.verb_id,
            _ => crate::verbs::OTHER,
        };
        let allowed = self.state == cstate::VERB
            && self.verb_len as usize <= MAX_VERB
            && entry.map(|e| e.flags & ALLOWED != 0).unwrap_or(false);
        if allowed {
            self.flags = F_ALLOWED;
            match self.verb_id {
                id::MAIL | id::RSET | id::HELO | id::EHLO => self.rcpts = 0,
                id::RCPT => {
                    if self.rcpts >= MAX_RCPTS {
                        self.limit(rule::RCPTS, out);
                    }
                    self.rcpts = self.rcpts.saturating_add(1);
                }
                _ => {}
            }
            if matches!(self.verb_id, id::MAIL | id::RCPT) {
                self.flags |= F_ADDRESS;
            }
        } else {
            self.flags = 0;
            if self.state == cstate::VERB && pos > seg.verb_start {
                out.act = act::MASK;
                out.mask_from = seg.verb_start;
                out.mask_to = pos;
            }
            // Otherwise the whole verb was in earlier segments, which kept it
            // because it was a prefix of an allowed verb, and this delimiter
            // ends it short of one: what the server got is a proper prefix of
            // an allowed verb, which is not a command it knows.
        }
        out.event = event::COMMAND;
        out.verb_id = self.verb_id;
        out.masked = !allowed as u8;
        self.state = cstate::ARGS;
        self.sub = bdat::START;
        self.count = 0;
        if b == b'\n' {
            self.end_line(env.chunking(), out);
        }
    }

    /// BDAT argument syntax: `BDAT <size> [LAST]`.
    #[inline(always)]
    fn bdat_arg(&mut self, b: u8) {
        let space = is_space(b);
        let upper = b.to_ascii_uppercase();
        self.sub = match self.sub {
            bdat::START if space => bdat::START,
            bdat::START | bdat::SIZE if b.is_ascii_digit() => {
                // count <= u32::MAX, so this cannot overflow a u64 (and needs
                // no 128-bit checked multiply, which BPF does not have).
                let c = self.count * 10 + (b - b'0') as u64;
                if c <= u32::MAX as u64 {
                    self.count = c;
                    bdat::SIZE
                } else {
                    bdat::INVALID
                }
            }
            bdat::SIZE | bdat::AFTER_SIZE if space => bdat::AFTER_SIZE,
            bdat::AFTER_SIZE if upper == b'L' => bdat::LAST,
            3 if upper == b'A' => 4,
            4 if upper == b'S' => 5,
            5 if upper == b'T' => 6,
            6 | bdat::AFTER_LAST if space => bdat::AFTER_LAST,
            _ => bdat::INVALID,
        };
    }

    /// One more byte of a command line (a LF included).
    #[inline(always)]
    fn count_line_byte(&mut self, out: &mut Out) {
        if self.line_len == MAX_COMMAND_LINE {
            self.limit(rule::COMMAND_LINE, out);
        }
        self.line_len = self.line_len.saturating_add(1);
    }

    /// Limit `rule` matched at this byte; [`Self::limit_actions`] decides
    /// what that does, once per step.
    #[inline(always)]
    fn limit(&mut self, rule: u8, out: &mut Out) {
        out.limit |= rule::bit(rule);
    }

    /// The actions of the limits that matched at a byte, called after
    /// its [`Self::step`] when `out.limit` is not 0 (docs/contract.md §10):
    /// a rule that is off (`action_of` gives each rule's action) is left
    /// out; the strongest action applies. `mask` masks the verb bytes of
    /// this segment, once per line; with none here (the whole verb left in
    /// earlier segments), or for a rule about a whole line, it becomes
    /// `reset`. Apart from `step` so that the kernel passes its
    /// configuration word straight from its work area, without a map
    /// lookup (and the registers it would spill) in the step; the loop
    /// only picks the action, which is applied once after it, so that the
    /// kernel's verifier walks few paths.
    #[inline(always)]
    pub fn limit_actions<A: Fn(u8) -> u32>(&mut self, seg: &Seg, action_of: A, out: &mut Out) {
        let mut best = action::LOG;
        let mut best_rule = 0;
        let mut r = 1;
        while r <= rule::COUNT {
            let bit = rule::bit(r);
            if out.limit & bit != 0 {
                let mut a = action_of(r);
                if a == action::OFF {
                    out.limit &= !bit;
                } else {
                    if a == action::MASK && !rule::maskable(r) {
                        a = action::RESET;
                    }
                    if best_rule == 0 || severity(a) > severity(best) {
                        best = a;
                        best_rule = r;
                    }
                }
            }
            r += 1;
        }
        if best == action::MASK && self.lim & lim::MASKED == 0 {
            if seg.verb_end > seg.verb_start && out.act == act::KEEP {
                out.act = act::MASK;
                out.mask_from = seg.verb_start;
                out.mask_to = seg.verb_end;
                self.lim |= lim::MASKED;
            } else {
                best = action::RESET;
            }
        }
        out.limit_act = best as u8;
        out.limit_rule = best_rule;
    }

    /// A byte of the argument of an allowed MAIL or RCPT: the address
    /// rules. A LF ends the argument (an open `<` is unbalanced).
    #[inline(always)]
    fn address_byte(&mut self, b: u8, out: &mut Out) {
        let st = self.addr;
        let inside = st == addr::IN || st == addr::PARAM_IN;
        let mut bad = matches!(b, b'|' | b'`' | 0);
        let mut counted = false;
        if b == b'\n' {
            // An open `<` is unbalanced.
            bad |= inside;
            self.addr = addr::DONE;
        } else if b == b'<' {
            if inside {
                // A second `<` before the first closed.
                bad = true;
            } else if st == addr::DONE {
                self.addr = addr::PARAM_IN;
            } else {
                self.addr_len = 0;
                self.addr = addr::IN;
            }
        } else if b == b'>' {
            if inside {
                self.addr = addr::DONE;
            } else {
                // A `>` before any `<`, or after the pair closed.
                bad = true;
            }
        } else if st == addr::IN {
            counted = true;
        } else if is_space(b) {
            if st == addr::KEY || st == addr::BARE {
                self.addr = addr::DONE;
            }
        } else if st == addr::KEY && b == b':' {
            self.addr_len = 0;
            self.addr = addr::COLON;
        } else if st <= addr::BARE {
            // PRE, KEY, COLON, BARE: a byte of the first word or of an
            // address without brackets.
            counted = true;
            self.addr = if st == addr::PRE || st == addr::KEY {
                addr::KEY
            } else {
                addr::BARE
            };
        }
        if counted {
            if self.addr_len == MAX_ADDRESS && self.lim & lim::ADDRESS_LENGTH == 0 {
                self.lim |= lim::ADDRESS_LENGTH;
                self.limit(rule::ADDRESS_LENGTH, out);
            }
            self.addr_len = self.addr_len.saturating_add(1);
        }
        if bad && self.lim & lim::ADDRESS_CHARS == 0 {
            self.lim |= lim::ADDRESS_CHARS;
            self.limit(rule::ADDRESS_CHARS, out);
        }
    }

    /// A byte of a message's header section (before `body_byte` moves the
    /// line position): the header-line limit, and the empty line that
    /// ends the section.
    #[inline(always)]
    fn header_byte(&mut self, b: u8, out: &mut Out) {
        if b == b'\n' {
            self.hdr = if self.hdr_len == 0 || self.hdr == hdr::CR {
                hdr::OFF
            } else {
                hdr::LINE
            };
            self.hdr_len = 0;
            self.lim = 0;
            return;
        }
        if b == b'.' && self.sub == body::BOL {
            // The server removes a line-start dot.
            return;
        }
        // Past 998 bytes; a CR only once it cannot be the CR of the CRLF.
        let over =
            self.hdr_len > MAX_HEADER_LINE || (b != b'\r' && self.hdr_len == MAX_HEADER_LINE);
        if over && self.lim & lim::HEADER_LINE == 0 {
            self.lim |= lim::HEADER_LINE;
            self.limit(rule::HEADER_LINE, out);
        }
        self.hdr = if self.hdr_len == 0 && b == b'\r' {
            hdr::CR
        } else {
            hdr::LINE
        };
        self.hdr_len = self.hdr_len.saturating_add(1);
    }

    /// LF at the end of a command line.
    #[inline(always)]
    fn end_line(&mut self, chunking: bool, out: &mut Out) {
        self.line_len = 0;
        self.units = self.units.wrapping_add(1);
        self.state = cstate::LINE_START;
        if self.flags & F_ALLOWED == 0 {
            return;
        }
        match self.verb_id {
            // Its reply is the one the server direction filters.
            id::EHLO => self.ehlo_unit = self.units,
            id::DATA => self.start_gate(gate::DATA),
            id::AUTH => self.start_gate(gate::AUTH),
            id::STARTTLS => self.start_gate(gate::STARTTLS),
            id::BDAT => {
                let valid = matches!(
                    self.sub,
                    bdat::SIZE | bdat::AFTER_SIZE | 6 | bdat::AFTER_LAST
                );
                // The chunk follows at once, without waiting for a reply, but
                // only if the server announced CHUNKING (otherwise it answers
                // 502 and reads the bytes as commands).
                if valid && chunking && self.count > 0 {
                    self.state = cstate::CHUNK;
                    out.event = event::CHUNK;
                }
            }
            _ => {}
        }
    }

    #[inline(always)]
    fn start_gate(&mut self, kind: u8) {
        self.state = cstate::AWAIT_GATE;
        self.gate_kind = kind;
        self.gate_unit = self.units;
    }

    /// The gate's reply is known: move to the state it leads to. Returns
    /// false if it is not known yet.
    #[inline(always)]
    fn resolve_gate<E: Env>(&mut self, env: &E, out: &mut Out) -> bool {
        let Some(code) = env.gate_reply(self.gate_unit) else {
            return false;
        };
        self.state = cstate::LINE_START;
        match (self.gate_kind, code) {
            (gate::DATA, 354) => {
                self.state = cstate::BODY;
                self.sub = body::BOL;
                // The message starts with its header section.
                self.hdr = hdr::LINE;
                self.hdr_len = 0;
                self.lim = 0;
                out.event = event::BODY_START;
            }
            (gate::AUTH, 334) => {
                self.state = cstate::SASL;
                out.event = event::SASL_START;
            }
            (gate::SASL, 334) => self.state = cstate::SASL,
            (gate::STARTTLS, 220) => {
                self.state = cstate::OPAQUE;
                out.event = event::STARTTLS;
            }
            _ => {}
        }
        true
    }

    #[inline(always)]
    fn body_byte(&mut self, b: u8, out: &mut Out) {
        self.sub = match (b, self.sub) {
            (b'\n', body::DOT | body::DOT_CR) => {
                // End of data: the server answers it, so it is a unit.
                self.units = self.units.wrapping_add(1);
                self.state = cstate::LINE_START;
                self.hdr = hdr::OFF;
                out.event = event::BODY_END;
                body::MID
            }
            (b'\n', _) => body::BOL,
            (b'.', body::BOL) => body::DOT,
            // Postfix strips every CR before the LF: ".\r\r\n" ends data too.
            (b'\r', body::DOT | body::DOT_CR) => body::DOT_CR,
            _ => body::MID,
        };
    }
}

/// The length of a `TO:<` or `FROM:<` (any case) at the start of `x`, the
/// eight bytes right after the verb of a MAIL or RCPT. `T`, `O` (or `F`,
/// `R`, `O`, `M`) make the first word of the argument and are counted into
/// the address; the colon starts it again and so does the `<`: what
/// stepping them leaves is `addr::IN` with nothing counted.
#[inline(always)]
fn address_opening(x: u64) -> Option<u32> {
    if (x & 0xffff_ffff) | 0x2020 == 0x3c3a_6f74 {
        Some(4)
    } else if (x & 0xffff_ffff_ffff) | 0x2020_2020 == 0x3c3a_6d6f_7266 {
        Some(6)
    } else {
        None
    }
}

/// How strong a limit's action is: `log` < `mask` < `reset` <
/// `drop-connection`. When several limits match at one byte, the
/// strongest action applies.
#[inline(always)]
const fn severity(a: u32) -> u8 {
    match a {
        action::MASK => 1,
        action::RESET => 2,
        action::DROP_CONNECTION => 3,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEnv;
    impl Env for NoEnv {
        fn policy(&self, _: VerbKey) -> Option<PolicyEntry> {
            None
        }
        fn gate_reply(&self, _: u32) -> Option<u16> {
            None
        }
        fn chunking(&self) -> bool {
            false
        }
    }

    /// The word-at-a-time skip of `scan.rs` is only correct if this holds:
    /// but for the length of a command line or a header line, which
    /// `skip_ahead` counts.
    #[test]
    fn skip_to_lf_states_ignore_every_other_byte() {
        let mut states = [ClientState::default(); 1024];
        let mut n = 0;
        for state in 0..=cstate::OPAQUE {
            for sub in 0..=8 {
                for verb_id in [id::DATA, id::BDAT, id::MAIL, id::RCPT, crate::verbs::OTHER] {
                    for (flags, hdr, hdr_len) in [
                        (F_ALLOWED, hdr::OFF, 0),
                        (F_ALLOWED | F_ADDRESS, hdr::OFF, 0),
                        (F_ALLOWED, hdr::LINE, 0),
                        (F_ALLOWED, hdr::LINE, 5),
                        (F_ALLOWED, hdr::CR, 1),
                    ] {
                        let st = ClientState {
                            state,
                            sub,
                            verb_id,
                            flags,
                            hdr,
                            hdr_len,
                            units: 7,
                            count: 3,
                            ..Default::default()
                        };
                        if st.skips_to_lf() {
                            states[n] = st;
                            n += 1;
                        }
                    }
                }
            }
        }
        assert!(n >= 3);
        for &st in &states[..n] {
            assert!(st.flags & F_ADDRESS == 0 || st.state != cstate::ARGS);
            for b in 0..=255u8 {
                if b == b'\n' {
                    continue;
                }
                let mut after = st;
                let mut seg = Seg::default();
                let out = after.step(b, 5, &mut seg, &NoEnv);
                let mut want = st;
                if st.state == cstate::ARGS {
                    want.line_len += 1;
                }
                if st.state == cstate::BODY && st.hdr != hdr::OFF {
                    assert_ne!(st.hdr_len, 0);
                    want.hdr_len += 1;
                    want.hdr = hdr::LINE;
                }
                assert_eq!(after, want, "state {st:?} changed on byte {b:#x}");
                assert_eq!(out, Out::default(), "state {st:?} byte {b:#x}");
            }
        }
    }
}

/// Result of one server parser step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerOut {
    /// A reply was completed: publish `gate_replies` slot for this unit.
    pub reply_unit: u32,
    pub reply_code: u16,
    /// 1 if this reply completed (reply_unit/code valid).
    pub reply_done: u8,
    /// What the client was shown of CHUNKING: [`CHUNKING_SHOWN`] when a
    /// reply to EHLO showed it, [`CHUNKING_NEW_EHLO`] when a reply to EHLO
    /// starts (what earlier replies showed no longer holds).
    pub chunking: u8,
    /// 1 if the flow became opaque (STARTTLS accepted).
    pub opaque: u8,
    /// [`act::MASK`]: mask `[mask_from, mask_to)` of this segment.
    pub act: u8,
    /// 1 if an EHLO keyword was decided masked by this step (once per
    /// keyword).
    pub keyword_masked: u8,
    /// 1 if this step ended a greeting whose text was masked.
    pub banner_masked: u8,
    pub mask_from: u32,
    pub mask_to: u32,
}

/// [`ServerOut::chunking`]: a reply to EHLO showed CHUNKING.
pub const CHUNKING_SHOWN: u8 = 1;
/// [`ServerOut::chunking`]: a reply to EHLO starts.
pub const CHUNKING_NEW_EHLO: u8 = 2;

/// `ServerState::text_len` bit: the first word of the text has ended.
const WORD_DONE: u8 = 0x80;

/// `CHUNKING` as a key.
const CHUNKING: VerbKey = const_key(b"CHUNKING");
/// `BDAT` as a key.
const BDAT: VerbKey = const_key(b"BDAT");

const fn const_key(text: &[u8]) -> VerbKey {
    match crate::verbs::key_of(text) {
        Some(k) => k,
        None => 0,
    }
}

/// EHLO keywords that name no command (RFC 1870, 2920, 6152, 3461, 2034,
/// 6531, 3030, 2852, 8689, 6710, 9422...): they always pass. The parser
/// only needs them to decide a keyword cut by a segment boundary (see
/// [`ServerState::end_segment`]): a prefix of one of these is kept.
pub const COMMANDLESS_KEYWORDS: &[&str] = &[
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

/// The first `MAX_VERB` bytes of each of [`COMMANDLESS_KEYWORDS`] as a key,
/// and its length.
const COMMANDLESS: [(VerbKey, u8); COMMANDLESS_KEYWORDS.len()] = {
    let mut t = [(0, 0); COMMANDLESS_KEYWORDS.len()];
    let mut i = 0;
    while i < t.len() {
        let w = COMMANDLESS_KEYWORDS[i].as_bytes();
        let mut key = 0;
        let mut j = 0;
        while j < w.len() && j < MAX_VERB {
            key = key_push(key, j, w[j]);
            j += 1;
        }
        t[i] = (key, w.len() as u8);
        i += 1;
    }
    t
};

/// Whether the live policy allows verb `key`.
#[inline(always)]
fn allows<P: Fn(VerbKey) -> Option<PolicyEntry>>(policy: &P, key: VerbKey) -> bool {
    policy(key).map(|e| e.flags & ALLOWED != 0).unwrap_or(false)
}

/// Whether EHLO keyword `key` (its first `MAX_VERB` bytes, upper-cased) of
/// `len` bytes names a command the policy denies, by the table of
/// docs/contract.md §10: CHUNKING names BDAT; a keyword that is itself a
/// command verb (STARTTLS, AUTH, ETRN, VRFY, ATRN, XEXCH50, VERB, ONEX,
/// XCLIENT, XFORWARD, EXPN, HELP...) names that verb; any other keyword
/// starting with `X` names a command of its own name. Every other keyword
/// names no command and passes.
#[inline(always)]
pub fn keyword_denied<P: Fn(VerbKey) -> Option<PolicyEntry>>(
    key: VerbKey,
    len: usize,
    policy: &P,
) -> bool {
    let x = key as u8 == b'X';
    if len > MAX_VERB {
        // No verb is this long, so none is allowed.
        return x;
    }
    if key == CHUNKING {
        return !allows(policy, BDAT);
    }
    match policy(key) {
        Some(e) if e.verb_id != crate::verbs::OTHER || x => e.flags & ALLOWED == 0,
        _ => x,
    }
}

/// Whether the first `len` bytes of a keyword (`key`, upper-cased) may
/// still become a keyword that passes and that the parser knows: one of
/// [`COMMANDLESS_KEYWORDS`], CHUNKING with BDAT allowed, or an allowed verb.
#[inline(always)]
fn keyword_viable<P: Fn(VerbKey) -> Option<PolicyEntry>>(
    key: VerbKey,
    len: usize,
    policy: &P,
) -> bool {
    let mut i = 0;
    while i < COMMANDLESS.len() {
        let (k, l) = COMMANDLESS[i];
        if len <= l as usize && crate::verbs::key_prefix(k, len) == key {
            return true;
        }
        i += 1;
    }
    if len > MAX_VERB {
        return false;
    }
    if crate::verbs::key_prefix(CHUNKING, len) == key && allows(policy, BDAT) {
        return true;
    }
    policy(key)
        .map(|e| e.flags & (ALLOWED | PREFIX) != 0)
        .unwrap_or(false)
}

impl ServerState {
    /// Whether the rest of the stream is opaque.
    #[inline(always)]
    pub fn opaque(&self) -> bool {
        self.state == sstate::OPAQUE
    }

    /// Starts a segment (the keyword span starts at its first byte).
    #[inline(always)]
    pub fn begin_segment(&self) -> Seg {
        Seg {
            verb_start: 0,
            verb_end: 0,
        }
    }

    /// The reply fast path, one round, from buffer offset `at` (`end`: the
    /// chunk's length): what stepping the bytes would do, where they are
    /// plain.
    /// - At a line's start, a three-digit code and its separator (`-` or a
    ///   space), read from one word: the code, the line's kind, and
    ///   [`Self::start_text`]'s result, which is returned.
    /// - At the start of the text's first word (an EHLO keyword on a line
    ///   of the reply to EHLO), its verb characters, read a word at a time:
    ///   its key and length as their steps build them. The byte that ends
    ///   a keyword, which decides it, is left to [`Self::step`]; the one
    ///   that ends any other first word is taken too (its step only marks
    ///   the word done), unless it is the line's LF.
    /// - Then, in the text of a line whose first word is done, or in a
    ///   line that is not a reply line: a jump to the line's LF, which is
    ///   left to [`Self::step`] (it ends the line). No byte before it
    ///   changes anything, unless the greeting's text is being masked
    ///   (banner masking), which is left to the steps.
    ///
    /// Returns the offset reached (`at` if nothing applies: then nothing
    /// changed). Called before every byte step, by the kernel and by
    /// [`feed_server`] alike.
    // Each argument is one the kernel has at hand (a register, or a field
    // of its work area); a struct of them would be built on the small BPF
    // stack for every call.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn line_ahead<W: Words + ?Sized>(
        &mut self,
        buf: &W,
        at: u32,
        end: u32,
        pos: u32,
        seg: &mut Seg,
        shared: &Shared,
        cfg: u32,
    ) -> (u32, ServerOut) {
        let mut out = ServerOut::default();
        let mut to = at;
        if self.state == sstate::CODE && self.digits == 0 && self.code == 0 {
            if let Some(x) = bytes_at(buf, at, end) {
                let d = |i: u32| ((x >> (8 * i)) as u8).wrapping_sub(b'0');
                let sep = (x >> 24) as u8;
                if d(0) <= 9 && d(1) <= 9 && d(2) <= 9 && (sep == b'-' || sep == b' ') {
                    self.code = d(0) as u16 * 100 + d(1) as u16 * 10 + d(2) as u16;
                    self.digits = 3;
                    self.state = if sep == b'-' {
                        sstate::CONT
                    } else {
                        sstate::FINAL
                    };
                    self.start_text(shared, &mut out);
                    to = at + 4;
                }
            }
        }
        let banner = self.greeted == 0 && cfg & CFG_MASK_BANNER != 0;
        let text = matches!(self.state, sstate::CONT | sstate::FINAL) && !banner;
        let keyword = self.kw == kw::OPEN;
        if text && (keyword || self.kw == kw::OFF) && self.text_len == 0 {
            // The line's first word from its first byte: its bytes as their
            // steps would take them. The byte that ends it ends the word;
            // on a keyword line that decides the keyword against the
            // policy, which is left to `step`; on any other line its step
            // only marks the word done (a LF, which also ends the line, is
            // left to `step` either way).
            if let Some(x) = bytes_at(buf, to, end) {
                let (stop, b) = scan_word(buf, to, end);
                let n = stop - to;
                if n != 0 {
                    seg.verb_start = pos + (to - at);
                    self.text = word_key(x, n);
                    self.text_len = core::cmp::min(n, MAX_VERB as u32 + 1) as u8;
                    to = stop;
                }
                if !keyword && b != NO_STOP && b != b'\n' as u32 {
                    self.text_len |= WORD_DONE;
                    to = stop + 1;
                }
            }
        }
        let plain = match self.state {
            sstate::CONT | sstate::FINAL => text && self.text_len & WORD_DONE != 0,
            sstate::JUNK => true,
            _ => false,
        };
        if plain {
            to = scan_to_lf(buf, to, end);
        }
        (to, out)
    }

    /// Parses reply byte `b` at offset `pos` of the current segment.
    /// `shared` is the snapshot of the words the client direction
    /// published, `policy` the live policy (for EHLO reply filtering),
    /// `cfg` the `CFG_*` bits (banner masking, EHLO filtering off).
    #[inline(always)]
    pub fn step<P: Fn(VerbKey) -> Option<PolicyEntry>>(
        &mut self,
        b: u8,
        pos: u32,
        seg: &mut Seg,
        shared: &Shared,
        policy: &P,
        cfg: u32,
    ) -> ServerOut {
        let mut out = ServerOut::default();
        if self.greeted == 0
            && cfg & CFG_MASK_BANNER != 0
            && matches!(self.state, sstate::CONT | sstate::FINAL)
            && b != b'\r'
            && b != b'\n'
        {
            // The greeting's text, hiding server software and version.
            out.act = act::MASK;
            out.mask_from = pos;
            out.mask_to = pos + 1;
        }
        match self.state {
            sstate::CODE => {
                if b.is_ascii_digit() && self.digits < 3 {
                    self.code = self.code * 10 + (b - b'0') as u16;
                    self.digits += 1;
                } else if self.digits == 3 && (b == b'-' || b == b' ') {
                    self.state = if b == b'-' {
                        sstate::CONT
                    } else {
                        sstate::FINAL
                    };
                    self.start_text(shared, &mut out);
                } else if self.digits == 3 && b == b'\r' {
                    self.state = sstate::FINAL;
                } else if self.digits == 3 && b == b'\n' {
                    self.state = sstate::FINAL;
                    self.end_line(shared.client_gate, cfg, &mut out);
                } else if b == b'\n' {
                    self.new_line();
                } else {
                    self.state = sstate::JUNK;
                }
            }
            sstate::CONT | sstate::FINAL => {
                if b == b'\n' {
                    self.end_word(pos, seg, policy, cfg, &mut out);
                    self.end_line(shared.client_gate, cfg, &mut out);
                } else if self.text_len & WORD_DONE == 0 {
                    // The first word of the text (an EHLO keyword).
                    let len = self.text_len as usize;
                    if is_verb_char(b) {
                        if len == 0 {
                            seg.verb_start = pos;
                        }
                        self.text = key_push(self.text, len, b);
                        if len <= MAX_VERB {
                            self.text_len += 1;
                        }
                        if self.kw == kw::MASKED {
                            out.act = act::MASK;
                            out.mask_from = pos;
                            out.mask_to = pos + 1;
                        }
                    } else {
                        self.end_word(pos, seg, policy, cfg, &mut out);
                    }
                }
            }
            sstate::JUNK if b == b'\n' => self.new_line(),
            _ => {} // OPAQUE
        }
        out
    }

    /// Called after the last byte of a segment: decides an EHLO keyword
    /// that is still open. What was seen of it is kept if it may still
    /// become a keyword that passes and that the parser knows; otherwise
    /// the bytes this segment holds of it are masked, and so are the rest
    /// of it in later segments. (An unknown keyword cut here may lose
    /// bytes: a client ignores a keyword it does not know anyway.)
    #[inline(always)]
    pub fn end_segment<P: Fn(VerbKey) -> Option<PolicyEntry>>(
        &mut self,
        seg_len: u32,
        seg: &Seg,
        policy: &P,
        cfg: u32,
    ) -> ServerOut {
        let mut out = ServerOut::default();
        let len = self.text_len as usize;
        if self.kw == kw::OPEN
            && cfg & CFG_NO_EHLO_FILTER == 0
            && len != 0
            && len & WORD_DONE as usize == 0
            && !keyword_viable(self.text, len, policy)
        {
            self.kw = kw::MASKED;
            out.keyword_masked = 1;
            if seg_len > seg.verb_start {
                out.act = act::MASK;
                out.mask_from = seg.verb_start;
                out.mask_to = seg_len;
            }
        }
        out
    }

    /// The code and its separator of a line were read: is its first word
    /// an EHLO keyword to filter? Every line of the reply to EHLO but the
    /// first (which holds the server's name).
    #[inline(always)]
    fn start_text(&mut self, shared: &Shared, out: &mut ServerOut) {
        let ehlo = self.greeted != 0
            && shared.client_ehlo != 0
            && self.replies.wrapping_add(1) as u64 == shared.client_ehlo;
        if ehlo && self.code == 250 {
            if self.lines == 0 {
                out.chunking = CHUNKING_NEW_EHLO;
            } else {
                self.kw = kw::OPEN;
            }
        }
    }

    /// The first word of the text ended at `pos` (exclusive).
    #[inline(always)]
    fn end_word<P: Fn(VerbKey) -> Option<PolicyEntry>>(
        &mut self,
        pos: u32,
        seg: &Seg,
        policy: &P,
        cfg: u32,
        out: &mut ServerOut,
    ) {
        if self.text_len & WORD_DONE != 0 {
            return;
        }
        let len = self.text_len as usize;
        self.text_len |= WORD_DONE;
        if self.kw != kw::OPEN || len == 0 {
            self.kw = kw::OFF;
            return;
        }
        self.kw = kw::OFF;
        if cfg & CFG_NO_EHLO_FILTER == 0 && keyword_denied(self.text, len, policy) {
            out.keyword_masked = 1;
            if pos > seg.verb_start {
                out.act = act::MASK;
                out.mask_from = seg.verb_start;
                out.mask_to = pos;
            }
        } else if self.text == CHUNKING && len == MAX_VERB {
            out.chunking = CHUNKING_SHOWN;
        }
    }

    #[inline(always)]
    fn new_line(&mut self) {
        self.state = sstate::CODE;
        self.code = 0;
        self.digits = 0;
        self.text = 0;
        self.text_len = 0;
        self.kw = kw::OFF;
    }

    #[inline(always)]
    fn end_line(&mut self, client_gate: u64, cfg: u32, out: &mut ServerOut) {
        self.lines = self.lines.saturating_add(1);
        if self.state == sstate::FINAL {
            self.lines = 0;
            let code = self.code;
            if self.greeted == 0 {
                self.greeted = 1;
                out.banner_masked = (cfg & CFG_MASK_BANNER != 0) as u8;
            } else {
                self.replies = self.replies.wrapping_add(1);
                out.reply_done = 1;
                out.reply_unit = self.replies;
                out.reply_code = code;
                let gate_unit = (client_gate >> 8) as u32;
                let gate_kind = client_gate as u8;
                if gate_unit == self.replies && gate_kind == gate::STARTTLS && code == 220 {
                    self.new_line();
                    self.state = sstate::OPAQUE;
                    out.opaque = 1;
                    return;
                }
            }
        }
        self.new_line();
    }
}

impl Shared {
    /// Records what a server step produced (server direction only).
    #[inline(always)]
    pub fn publish_server(&mut self, out: &ServerOut) {
        match out.chunking {
            CHUNKING_SHOWN => self.chunking = 1,
            CHUNKING_NEW_EHLO => self.chunking = 0,
            _ => {}
        }
        if out.reply_done != 0 && out.reply_unit == (self.client_gate >> 8) as u32 {
            self.gate_replies[(out.reply_unit as usize) % GATE_SLOTS] =
                ((out.reply_unit as u64) << 16) | out.reply_code as u64;
        }
    }

    /// Records the client's gate and EHLO after a client step (client
    /// direction only).
    #[inline(always)]
    pub fn publish_client(&mut self, st: &ClientState) {
        if let Some(word) = st.gate_word() {
            if self.client_gate != word {
                self.client_gate = word;
            }
        }
        if let Some(word) = st.ehlo_word() {
            self.client_ehlo = word;
        }
    }
}

/// The segment must be held: its bytes depend on a reply not seen yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held;

/// Parses a whole client segment in place (masking it) exactly as the
/// kernel does: the same fast paths ([`ClientState::skip_ahead`]) before the
/// same byte steps, in the same order, over the same chunks. Used by the
/// userspace tests, the fuzzer and the benchmarks, so that they run what
/// production runs. On `Err(Held)` neither the state nor the buffer may be
/// used: the caller restores both (the kernel drops the packet and keeps its
/// old state).
///
/// A retransmission the kernel parses from an offset `overlap` of its
/// segment (the new bytes after re-inspected ones) is parsed like a segment
/// that starts there: feed `&mut buf[overlap..]`.
pub fn feed_client<E: Env>(
    st: &mut ClientState,
    buf: &mut [u8],
    env: &E,
    mut on_event: impl FnMut(&Out),
) -> Result<(), Held> {
    run_client(st, buf, env, true, &mut on_event)
}

/// [`feed_client`] without the fast paths: one [`ClientState::step`] per
/// byte, over the same chunks. The reference the fast paths are checked
/// against.
pub fn feed_client_bytewise<E: Env>(
    st: &mut ClientState,
    buf: &mut [u8],
    env: &E,
    mut on_event: impl FnMut(&Out),
) -> Result<(), Held> {
    run_client(st, buf, env, false, &mut on_event)
}

/// The kernel's stream driver (`inspector-ebpf/src/stream.rs`), in plain
/// loops. Faithful where it matters:
/// - the segment is parsed in chunks of [`CHUNK`] bytes, each copied to the
///   start of the kernel's buffer, so word reads are aligned to the chunk
///   start (here: offsets within `buf[start..end]`);
/// - each chunk ends with [`ClientState::end_segment`] at the chunk end, and
///   a chunk after the first starts a new verb span at its start;
/// - an empty segment is not parsed at all (the kernel returns before it).
fn run_client<E: Env>(
    st: &mut ClientState,
    buf: &mut [u8],
    env: &E,
    fast: bool,
    on_event: &mut impl FnMut(&Out),
) -> Result<(), Held> {
    let mut seg = st.begin_segment();
    let mut start = 0;
    while start < buf.len() {
        let end = core::cmp::min(start + CHUNK, buf.len());
        if start > 0 {
            seg.verb_start = start as u32;
        }
        let mut pos = start;
        while pos < end {
            // One round: the verb fast path and the skips after it, or
            // the skips alone, or one byte step (the kernel's step
            // callback does the same).
            if fast {
                let len = (end - start) as u32;
                let at = (pos - start) as u32;
                let (to, out) = st.verb_ahead(&buf[start..end], at, len, pos as u32, &mut seg, env);
                if to != at {
                    debug_assert_eq!(out.limit, 0, "the verb round carries no limit");
                    apply(buf, &out, on_event)?;
                    let to = st.line_ahead(&buf[start..end], to, len, env.chunking());
                    pos = start + to as usize;
                    continue;
                }
                let to = st.skip_ahead(&buf[start..end], at, len);
                if to != at {
                    pos = start + to as usize;
                    continue;
                }
            }
            let mut out = st.step(buf[pos], pos as u32, &mut seg, env);
            if out.limit != 0 {
                st.limit_actions(&seg, |r| env.limit_action(r), &mut out);
            }
            apply(buf, &out, on_event)?;
            pos += 1;
        }
        let out = st.end_segment(end as u32, &seg, env);
        apply(buf, &out, on_event)?;
        start = end;
    }
    Ok(())
}

fn apply(buf: &mut [u8], out: &Out, on_event: &mut impl FnMut(&Out)) -> Result<(), Held> {
    match out.act {
        act::HOLD => return Err(Held),
        act::MASK => buf[out.mask_from as usize..out.mask_to as usize].fill(b'X'),
        _ => {}
    }
    if out.event != event::NONE || out.limit != 0 {
        on_event(out);
    }
    Ok(())
}

/// Parses a whole server segment in place (masking the EHLO keywords the
/// policy denies), publishing into `shared`, as the kernel does: in
/// [`CHUNK`]-byte chunks, each ended with [`ServerState::end_segment`],
/// the fast path ([`ServerState::line_ahead`]) tried before every byte
/// step. `policy` is the live policy, `cfg` the `CFG_*` bits; `on_step`
/// sees every round's and step's result.
pub fn feed_server<P: Fn(VerbKey) -> Option<PolicyEntry>>(
    st: &mut ServerState,
    buf: &mut [u8],
    shared: &mut Shared,
    policy: &P,
    cfg: u32,
    on_step: impl FnMut(&ServerOut),
) {
    run_server(st, buf, shared, policy, cfg, true, on_step)
}

/// [`feed_server`] without the fast path ([`ServerState::line_ahead`]):
/// one [`ServerState::step`] per byte, over the same chunks. The reference
/// the fast path is checked against.
pub fn feed_server_bytewise<P: Fn(VerbKey) -> Option<PolicyEntry>>(
    st: &mut ServerState,
    buf: &mut [u8],
    shared: &mut Shared,
    policy: &P,
    cfg: u32,
    on_step: impl FnMut(&ServerOut),
) {
    run_server(st, buf, shared, policy, cfg, false, on_step)
}

/// The kernel's server driver, in plain loops (see [`run_client`]).
fn run_server<P: Fn(VerbKey) -> Option<PolicyEntry>>(
    st: &mut ServerState,
    buf: &mut [u8],
    shared: &mut Shared,
    policy: &P,
    cfg: u32,
    fast: bool,
    mut on_step: impl FnMut(&ServerOut),
) {
    let mut seg = st.begin_segment();
    let mut start = 0;
    while start < buf.len() {
        let end = core::cmp::min(start + CHUNK, buf.len());
        if start > 0 {
            seg.verb_start = start as u32;
        }
        let mut pos = start;
        while pos < end {
            // One round: the line fast path, or else one byte step (the
            // kernel's step callback does the same).
            if fast {
                let (len, at) = ((end - start) as u32, (pos - start) as u32);
                let (to, out) =
                    st.line_ahead(&buf[start..end], at, len, pos as u32, &mut seg, shared, cfg);
                if to != at {
                    shared.publish_server(&out);
                    apply_server(buf, &out, &mut on_step);
                    pos = start + to as usize;
                    continue;
                }
            }
            let out = st.step(buf[pos], pos as u32, &mut seg, shared, policy, cfg);
            shared.publish_server(&out);
            apply_server(buf, &out, &mut on_step);
            pos += 1;
        }
        let out = st.end_segment(end as u32, &seg, policy, cfg);
        apply_server(buf, &out, &mut on_step);
        start = end;
    }
}

fn apply_server(buf: &mut [u8], out: &ServerOut, on_step: &mut impl FnMut(&ServerOut)) {
    if out.act == act::MASK {
        buf[out.mask_from as usize..out.mask_to as usize].fill(b'X');
    }
    on_step(out);
}
