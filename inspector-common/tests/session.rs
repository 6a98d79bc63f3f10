//! Hand-written sessions through the shared parser, both directions.

use inspector_common::{
    policy::entry_for,
    smtp::{feed_client, feed_server, ClientState, Env, Held, ServerState, Shared},
    verbs::{key_of, PolicyEntry, VerbKey, DEFAULT_ALLOWED},
};

struct Session {
    allowed: Vec<VerbKey>,
    /// `CFG_*` bits.
    cfg: u32,
    shared: Shared,
    client: ClientState,
    server: ServerState,
}

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

impl Session {
    fn new(allowed: &[&str]) -> Self {
        let mut s = Session {
            allowed: allowed
                .iter()
                .map(|v| key_of(v.as_bytes()).unwrap())
                .collect(),
            cfg: 0,
            shared: Shared::default(),
            client: ClientState::default(),
            server: ServerState::default(),
        };
        s.server_says("220 mx ESMTP\r\n");
        s
    }

    fn client_sends(&mut self, segs: &[&str]) -> Result<String, Held> {
        let mut out = Vec::new();
        for seg in segs {
            let mut buf = seg.as_bytes().to_vec();
            let mut st = self.client;
            feed_client(
                &mut st,
                &mut buf,
                &View(&self.allowed, &self.shared),
                |_| {},
            )?;
            self.client = st;
            self.shared.publish_client(&self.client);
            out.extend_from_slice(&buf);
        }
        Ok(String::from_utf8(out).unwrap())
    }

    fn server_says(&mut self, text: &str) -> String {
        self.server_sends(&[text])
    }

    /// Server segments, as the client receives them.
    fn server_sends(&mut self, segs: &[&str]) -> String {
        let mut out = Vec::new();
        for seg in segs {
            let mut buf = seg.as_bytes().to_vec();
            let allowed = &self.allowed;
            feed_server(
                &mut self.server,
                &mut buf,
                &mut self.shared,
                &|k| entry_for(allowed, k),
                self.cfg,
                |_| {},
            );
            out.extend_from_slice(&buf);
        }
        String::from_utf8(out).unwrap()
    }
}

fn default() -> Session {
    Session::new(DEFAULT_ALLOWED)
}

#[test]
fn masks_disallowed_verbs_keeps_allowed() {
    let mut s = default();
    assert_eq!(s.client_sends(&["EHLO x\r\n"]).unwrap(), "EHLO x\r\n");
    s.server_says("250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    assert_eq!(s.client_sends(&["STARTTLS\r\n"]).unwrap(), "XXXXXXXX\r\n");
    s.server_says("500 unrecognized\r\n");
    assert_eq!(
        s.client_sends(&["  noop\r\n\tverb x\nx-foo\r\n"]).unwrap(),
        "  noop\r\n\tXXXX x\nXXXXX\r\n"
    );
}

#[test]
fn split_verbs_are_masked_across_segments() {
    let mut s = default();
    assert_eq!(
        s.client_sends(&["ST", "ARTTLS\r\n"]).unwrap(),
        "XXXXXXXX\r\n"
    );
    let mut s = default();
    // "S" may still become SEND/SAML/SOML: it passes, the rest is masked.
    assert_eq!(
        s.client_sends(&["S", "TARTTLS\r\n"]).unwrap(),
        "SXXXXXXX\r\n"
    );
    let mut s = default();
    let segs: Vec<String> = "NOOP\r\nVRFY x\r\n".chars().map(String::from).collect();
    let segs: Vec<&str> = segs.iter().map(|s| s.as_str()).collect();
    assert_eq!(s.client_sends(&segs).unwrap(), "NOOP\r\nVRFY x\r\n");
}

#[test]
fn body_passes_and_ends_at_dot_line() {
    let mut s = default();
    s.client_sends(&["MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"])
        .unwrap();
    // The body must wait for the reply to DATA.
    assert_eq!(s.client_sends(&["STARTTLS\r\n"]), Err(Held));
    s.server_says("250 ok\r\n250 ok\r\n354 go\r\n");
    let body = "STARTTLS\r\nVERB x\r\nBDAT 10\r\n..\r\n.x\r\n";
    assert_eq!(s.client_sends(&[body]).unwrap(), body);
    assert_eq!(
        s.client_sends(&[".\r", "\nSTARTTLS\r\n"]).unwrap(),
        ".\r\nXXXXXXXX\r\n"
    );
}

#[test]
fn rejected_data_leaves_command_state() {
    let mut s = default();
    s.client_sends(&["DATA\r\n"]).unwrap();
    s.server_says("554 no valid recipients\r\n");
    assert_eq!(s.client_sends(&["VERB\r\n"]).unwrap(), "XXXX\r\n");
}

#[test]
fn auth_exchange_is_not_inspected() {
    let mut s = default();
    s.client_sends(&["AUTH LOGIN\r\n"]).unwrap();
    s.server_says("334 VXNlcm5hbWU6\r\n");
    assert_eq!(s.client_sends(&["STARTTLS\r\n"]).unwrap(), "STARTTLS\r\n");
    s.server_says("334 UGFzc3dvcmQ6\r\n");
    assert_eq!(s.client_sends(&["VERB\r\n"]).unwrap(), "VERB\r\n");
    s.server_says("235 ok\r\n");
    assert_eq!(s.client_sends(&["VERB\r\n"]).unwrap(), "XXXX\r\n");
}

#[test]
fn bdat_chunk_needs_allowed_verb_and_chunking() {
    let mut s = Session::new(&["EHLO", "BDAT", "MAIL", "RCPT"]);
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    assert_eq!(
        s.server_says("250-mx\r\n250-CHUNKING\r\n250 8BITMIME\r\n"),
        "250-mx\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
    );
    let out = s
        .client_sends(&["BDAT 10 LAST\r\nSTARTTLS\r\nVERB\r\n"])
        .unwrap();
    assert_eq!(out, "BDAT 10 LAST\r\nSTARTTLS\r\nXXXX\r\n");
    // Without CHUNKING the server reads the chunk as commands.
    let mut s = Session::new(&["EHLO", "BDAT"]);
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    s.server_says("250 mx\r\n");
    let out = s.client_sends(&["BDAT 10\r\nSTARTTLS\r\n"]).unwrap();
    assert_eq!(out, "BDAT 10\r\nXXXXXXXX\r\n");
}

#[test]
fn starttls_accepted_makes_flow_opaque() {
    let mut s = Session::new(&["EHLO", "STARTTLS"]);
    s.client_sends(&["STARTTLS\r\n"]).unwrap();
    s.server_says("220 go ahead\r\n");
    assert!(s.server.opaque());
    assert_eq!(
        s.client_sends(&["\x16\x03\x01VERB\r\n"]).unwrap(),
        "\x16\x03\x01VERB\r\n"
    );
}

#[test]
fn well_known_denied_verb_that_prefixes_an_allowed_one_is_masked_at_a_segment_end() {
    // A custom policy allows SENDX but not SEND: a segment that ends right
    // after SEND cannot wait for what follows.
    let mut s = Session::new(&["EHLO", "SENDX"]);
    assert_eq!(s.client_sends(&["SEND", "\r\n"]).unwrap(), "XXXX\r\n");
    let mut s = Session::new(&["EHLO", "SENDX"]);
    assert_eq!(s.client_sends(&["SENDX\r\n"]).unwrap(), "SENDX\r\n");
}

/// docs/contract.md §10: the reply to EHLO loses the keywords of denied
/// commands; the parser's view follows what the client was shown.
#[test]
fn ehlo_reply_keywords_of_denied_commands_are_masked() {
    let mut s = default();
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    let reply = "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
                 250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n\
                 250-AUTH=PLAIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
                 250-DSN\r\n250-SMTPUTF8\r\n250-xexch50\r\n250-X-EXPS GSSAPI\r\n\
                 250-XFORWARD NAME\r\n250-X-LINK2STATE-LONG\r\n250-Verb\r\n250 chunking\r\n";
    let shown = "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
                 250-VRFY\r\n250-ETRN\r\n250-XXXXXXXX\r\n250-AUTH PLAIN LOGIN\r\n\
                 250-AUTH=PLAIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
                 250-DSN\r\n250-SMTPUTF8\r\n250-XXXXXXX\r\n250-XXXXXX GSSAPI\r\n\
                 250-XXXXXXXX NAME\r\n250-XXXXXXXXXXXXXXXXX\r\n250-XXXX\r\n250 XXXXXXXX\r\n";
    assert_eq!(s.server_says(reply), shown);
    assert_eq!(s.shared.chunking, 0, "a masked CHUNKING was not advertised");
    // Other replies are not filtered, even with keyword-like text.
    assert_eq!(s.client_sends(&["NOOP\r\n"]).unwrap(), "NOOP\r\n");
    assert_eq!(
        s.server_says("250-STARTTLS\r\n250 CHUNKING\r\n"),
        "250-STARTTLS\r\n250 CHUNKING\r\n"
    );
    assert_eq!(s.shared.chunking, 0);
}

#[test]
fn ehlo_reply_follows_the_policy() {
    let mut s = Session::new(&["EHLO", "BDAT", "STARTTLS", "AUTH"]);
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    let reply = "250-mx\r\n250-STARTTLS\r\n250-CHUNKING\r\n250-AUTH LOGIN\r\n250 VRFY\r\n";
    assert_eq!(
        s.server_says(reply),
        "250-mx\r\n250-STARTTLS\r\n250-CHUNKING\r\n250-AUTH LOGIN\r\n250 XXXX\r\n"
    );
    assert_eq!(s.shared.chunking, 1);
    // A second EHLO under another policy: what it shows is what holds.
    s.allowed = ["EHLO", "AUTH"]
        .iter()
        .map(|v| key_of(v.as_bytes()).unwrap())
        .collect();
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    assert_eq!(
        s.server_says(reply),
        "250-mx\r\n250-XXXXXXXX\r\n250-XXXXXXXX\r\n250-AUTH LOGIN\r\n250 XXXX\r\n"
    );
    assert_eq!(s.shared.chunking, 0);
}

#[test]
fn ehlo_reply_split_anywhere_masks_the_same() {
    let reply = "250-mx\r\n250-SIZE 10\r\n250-CHUNKING\r\n250 STARTTLS\r\n";
    for cut in 0..=reply.len() {
        let mut s = default();
        s.client_sends(&["EHLO x\r\n"]).unwrap();
        let shown = s.server_sends(&[&reply[..cut], &reply[cut..]]);
        // A keyword whose seen part may still become a known keyword that
        // passes ("S" of SIZE) keeps that part.
        let expected = match cut {
            40 => "250-mx\r\n250-SIZE 10\r\n250-XXXXXXXX\r\n250 SXXXXXXX\r\n",
            _ => "250-mx\r\n250-SIZE 10\r\n250-XXXXXXXX\r\n250 XXXXXXXX\r\n",
        };
        assert_eq!(shown, expected, "cut at {cut}");
        assert_eq!(s.shared.chunking, 0);
    }
}

#[test]
fn masked_bdat_resets_the_flow() {
    let mut s = default();
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    s.server_says("250-mx\r\n250 CHUNKING\r\n");
    let mut buf = b"MAIL FROM:<a@b>\r\nBD".to_vec();
    let mut st = s.client;
    let mut resets = 0;
    let env = View(&s.allowed, &s.shared);
    feed_client(&mut st, &mut buf, &env, |o| {
        resets += o.resets_flow() as usize
    })
    .unwrap();
    assert_eq!(resets, 0);
    let mut buf = b"AT 21 LAST\r\nMAIL FROM:<x@y>\r\n".to_vec();
    feed_client(&mut st, &mut buf, &env, |o| {
        resets += o.resets_flow() as usize
    })
    .unwrap();
    assert_eq!(resets, 1);
    assert_eq!(buf, b"XX 21 LAST\r\nMAIL FROM:<x@y>\r\n");
    // A masked verb other than BDAT does not.
    let mut buf = b"VERB\r\n".to_vec();
    feed_client(&mut st, &mut buf, &env, |o| {
        resets += o.resets_flow() as usize
    })
    .unwrap();
    assert_eq!(resets, 1);
}

/// docs/contract.md §10, an option: the greeting's text is masked, its
/// code and line ends are not; nothing else is.
#[test]
fn banner_masking_masks_the_greetings_text_only() {
    let mut s = Session::new(&["EHLO"]);
    s.cfg = inspector_common::config::CFG_MASK_BANNER;
    s.server = ServerState::default();
    s.shared = Shared::default();
    assert_eq!(
        s.server_sends(&[
            "220-mx.example ESMTP ",
            "Postfix (Debian)\r\n220 ",
            "ready\r\n"
        ]),
        format!(
            "220-{}\r\n220 XXXXX\r\n",
            "X".repeat("mx.example ESMTP Postfix (Debian)".len())
        )
    );
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    assert_eq!(
        s.server_says("250-mx.example\r\n250 SIZE\r\n"),
        "250-mx.example\r\n250 SIZE\r\n"
    );
}

/// With EHLO reply filtering off, the reply passes and the parser believes
/// what the server advertised.
#[test]
fn ehlo_filter_off_passes_the_reply() {
    let mut s = default();
    s.cfg = inspector_common::config::CFG_NO_EHLO_FILTER;
    s.client_sends(&["EHLO x\r\n"]).unwrap();
    let reply = "250-mx\r\n250-STARTTLS\r\n250 CHUNKING\r\n";
    assert_eq!(s.server_sends(&[&reply[..15], &reply[15..]]), reply);
    assert_eq!(s.shared.chunking, 1);
}

/// docs/contract.md §10: a command line longer than 512 bytes (its CRLF
/// included) is reported once, at the byte that goes past the limit,
/// however it is cut and whether the fast paths run or not.
#[test]
fn an_overlong_command_line_is_reported_once() {
    use inspector_common::smtp::{feed_client_bytewise, rule, MAX_COMMAND_LINE};
    let max = MAX_COMMAND_LINE as usize;
    // An argument the fast path skips (NOOP), and one it steps (MAIL,
    // whose long address is a limit of its own, left out here).
    for (head, len, want) in [("NOOP <", max, 0), ("MAIL FROM:<", max + 1, 1)]
        .into_iter()
        .chain([(max, 0), (max + 1, 1), (3 * max, 1)].map(|(l, w)| ("NOOP <", l, w)))
        .chain([("MAIL FROM:<", max, 0), ("MAIL FROM:<", 3 * max, 1)])
    {
        // <head>aaa...> CRLF, `len` bytes in all, then a short line.
        let tail = ">\r\n";
        let line = format!("{head}{}{tail}", "a".repeat(len - head.len() - tail.len()));
        let stream = format!("{line}NOOP\r\n");
        for cut in [1, 7, 100, 511, 512, 513, 600] {
            for fast in [true, false] {
                let s = default();
                let mut st = s.client;
                let env = View(&s.allowed, &s.shared);
                let mut limits = vec![];
                for seg in stream.as_bytes().chunks(cut) {
                    let mut buf = seg.to_vec();
                    let on = |o: &inspector_common::smtp::Out| {
                        if o.limit & rule::bit(rule::COMMAND_LINE) != 0 {
                            limits.push(rule::COMMAND_LINE)
                        }
                    };
                    if fast {
                        feed_client(&mut st, &mut buf, &env, on).unwrap();
                    } else {
                        feed_client_bytewise(&mut st, &mut buf, &env, on).unwrap();
                    }
                    assert_eq!(buf, seg, "nothing masked");
                }
                assert_eq!(
                    limits,
                    vec![rule::COMMAND_LINE; want],
                    "{head} line of {len}, cut {cut}, fast {fast}"
                );
                assert_eq!(st.line_len, 0);
            }
        }
    }
}

/// docs/contract.md §10: more than 100 RCPT commands in one transaction:
/// every RCPT after the 100th is reported (a `mask` action masks each);
/// MAIL, RSET, HELO and EHLO start a new count; a masked RCPT is not a
/// recipient.
#[test]
fn more_than_100_rcpts_in_a_transaction_are_reported() {
    use inspector_common::smtp::{rule, MAX_RCPTS};
    let limits = |s: &mut Session, text: &str| -> Vec<u8> {
        let mut st = s.client;
        let mut buf = text.as_bytes().to_vec();
        let mut v = vec![];
        feed_client(&mut st, &mut buf, &View(&s.allowed, &s.shared), |o| {
            if o.limit != 0 {
                v.push(o.limit)
            }
        })
        .unwrap();
        s.client = st;
        v
    };
    let rcpts = |n: usize| "RCPT TO:<a@b>\r\n".repeat(n);
    let mut s = default();
    let max = MAX_RCPTS as usize;
    assert!(limits(&mut s, &format!("MAIL FROM:<x@y>\r\n{}", rcpts(max))).is_empty());
    assert_eq!(
        limits(&mut s, &rcpts(3)),
        vec![rule::RCPTS; 3],
        "101st to 103rd"
    );
    for new in ["MAIL FROM:<x@y>", "RSET", "EHLO c", "HELO c"] {
        let text = format!("{new}\r\n{}", rcpts(max));
        assert!(limits(&mut s, &text).is_empty(), "after {new}");
        assert_eq!(limits(&mut s, &rcpts(1)), vec![rule::RCPTS], "after {new}");
    }
    let mut s = Session::new(&["MAIL", "EHLO"]);
    let text = format!("MAIL FROM:<x@y>\r\n{}", rcpts(max + 10));
    assert!(limits(&mut s, &text).is_empty(), "RCPT denied: masked");
}
