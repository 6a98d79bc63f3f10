//! The limits of docs/contract.md §10 that look inside a command or a
//! message (MAIL/RCPT address length and characters, header line length),
//! and the `mask` action of every rule, through the shared parser: each
//! case cut into two segments at every byte, with and without the fast
//! paths.

use inspector_common::{
    config::action,
    policy::entry_for,
    smtp::{
        act, feed_client, feed_client_bytewise, rule, ClientState, Env, Out, MAX_ADDRESS,
        MAX_HEADER_LINE, MAX_RCPTS,
    },
    verbs::{key_of, PolicyEntry, VerbKey, DEFAULT_ALLOWED},
};

/// The default verb policy, every gate reply a yes (354 to DATA), and one
/// action for every rule.
struct Env1 {
    keys: Vec<VerbKey>,
    action: u32,
}

impl Env for Env1 {
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        entry_for(&self.keys, key)
    }
    fn gate_reply(&self, _unit: u32) -> Option<u16> {
        Some(354)
    }
    fn chunking(&self) -> bool {
        false
    }
    fn limit_action(&self, _rule: u8) -> u32 {
        self.action
    }
}

fn env(action: u32) -> Env1 {
    Env1 {
        keys: DEFAULT_ALLOWED
            .iter()
            .map(|v| key_of(v.as_bytes()).unwrap())
            .collect(),
        action,
    }
}

/// What a run reported: the limit steps, in order.
#[derive(Debug)]
struct Run {
    bytes: Vec<u8>,
    limits: Vec<Out>,
    state: ClientState,
}

/// Feeds `before` (one segment, state prepared), then `case` cut at `cut`
/// into two segments.
fn run(before: &[u8], case: &[u8], cut: usize, action: u32, fast: bool) -> Run {
    let env = env(action);
    let mut st = ClientState::default();
    let mut limits = vec![];
    let mut bytes = vec![];
    let mut feed = |st: &mut ClientState, seg: &[u8], keep: bool| {
        let mut buf = seg.to_vec();
        let mut on = |o: &Out| {
            if o.limit != 0 && keep {
                limits.push(*o)
            }
        };
        if fast {
            feed_client(st, &mut buf, &env, &mut on).unwrap();
        } else {
            feed_client_bytewise(st, &mut buf, &env, &mut on).unwrap();
        }
        if keep {
            bytes.extend_from_slice(&buf);
        }
    };
    feed(&mut st, before, false);
    let (a, b) = case.split_at(cut);
    for seg in [a, b] {
        if !seg.is_empty() {
            feed(&mut st, seg, true);
        }
    }
    Run {
        bytes,
        limits,
        state: st,
    }
}

/// Checks `case` (after `before`) cut at every byte, fast and bytewise,
/// with every action: the rules that match are `want` (rule numbers, in
/// order); `log` changes nothing; `mask` masks the line's verb when the
/// segment where the rule matched holds a byte of it (`verb` is the
/// verb's range in `case`), else resets; `reset`/`drop-connection` are
/// passed through; `off` reports nothing.
fn check(before: &[u8], case: &[u8], verb: (usize, usize), want: &[u8]) {
    for cut in 0..=case.len() {
        for fast in [true, false] {
            let what = format!("cut {cut} fast {fast}: {:?}", String::from_utf8_lossy(case));
            let log = run(before, case, cut, action::LOG, fast);
            assert_eq!(log.bytes, case, "log changes nothing, {what}");
            let rules: Vec<u8> = log.limits.iter().map(|o| o.limit_rule).collect();
            assert_eq!(rules, want, "{what}");
            for o in &log.limits {
                assert_eq!(o.limit, rule::bit(o.limit_rule), "{what}");
                assert_eq!(o.limit_act as u32, action::LOG, "{what}");
            }
            let off = run(before, case, cut, action::OFF, fast);
            assert!(off.limits.is_empty(), "off reports nothing, {what}");
            assert_eq!(off.state, log.state, "{what}");
            for a in [action::RESET, action::DROP_CONNECTION] {
                let r = run(before, case, cut, a, fast);
                assert_eq!(r.bytes, case, "{what}");
                let acts: Vec<u32> = r.limits.iter().map(|o| o.limit_act as u32).collect();
                assert_eq!(acts, vec![a; want.len()], "{what}");
            }
            if want.is_empty() {
                continue;
            }
            let m = run(before, case, cut, action::MASK, fast);
            // Where the first match happened: in the first segment, or in
            // the second. A masked verb stays masked for the line.
            let first = &m.limits[0];
            let at = first.mask_from as usize;
            let in_second = {
                let alone = run(before, &case[..cut], cut, action::LOG, fast);
                alone.limits.is_empty()
            };
            let seg_start = if in_second { cut } else { 0 };
            let seg_end = if in_second { case.len() } else { cut };
            let verb_here = verb.0.max(seg_start) < verb.1.min(seg_end);
            if verb_here {
                assert_eq!(first.limit_act as u32, action::MASK, "{what}");
                assert_eq!(first.act, act::MASK, "{what}");
                assert_eq!(at + seg_start, verb.0.max(seg_start), "{what}");
                let mut want_bytes = case.to_vec();
                want_bytes[verb.0.max(seg_start)..verb.1].fill(b'X');
                assert_eq!(
                    String::from_utf8_lossy(&m.bytes),
                    String::from_utf8_lossy(&want_bytes),
                    "{what}"
                );
            } else {
                assert_eq!(
                    first.limit_act as u32,
                    action::RESET,
                    "mask escalates, {what}"
                );
                assert_eq!(m.bytes, case, "{what}");
            }
        }
    }
}

/// The address rules on one MAIL or RCPT line (the verb at its start).
fn check_line(line: &str, want: &[u8]) {
    check(b"EHLO c\r\n", line.as_bytes(), (0, 4), want);
}

#[test]
fn an_address_with_a_character_no_address_has() {
    const CHARS: u8 = rule::ADDRESS_CHARS;
    for line in [
        "RCPT TO:<a|b@c>\r\n",
        "MAIL FROM:<a`id`@c>\r\n",
        "MAIL FROM:<a\0b@c>\r\n",
        "RCPT TO:<a@b> NOTIFY=|x\r\n",
        // Unbalanced: `<` without `>`, `>` before `<`, a second `<`.
        "MAIL FROM:<a@b\r\n",
        "MAIL FROM:<a@b\n",
        "MAIL FROM:a@b>\r\n",
        "RCPT TO:><a@b>\r\n",
        "MAIL FROM:<<a@b>\r\n",
        "RCPT TO:<a@b>>\r\n",
        "RCPT TO:<a@b> X=<c\r\n",
        "RCPT TO:<a<b@c>>\r\n",
    ] {
        check_line(line, &[CHARS]);
    }
    // Two bad things on one line: reported once.
    check_line("MAIL FROM:<a|b|c\r\n", &[CHARS]);
}

#[test]
fn honest_addresses_match_nothing() {
    for line in [
        "MAIL FROM:<a@b>\r\n",
        "MAIL FROM:<>\r\n",
        "MAIL FROM: <a@b> SIZE=100 BODY=8BITMIME\r\n",
        "MAIL FROM:a@b\r\n",
        "MAIL FROM:<a@b> AUTH=<>\r\n",
        "RCPT TO:<@r1,@r2:\"quoted name\"@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@d\r\n",
        "RCPT TO:<postmaster>\n",
        "RCPT TO:<a@b>\r\n",
    ] {
        check_line(line, &[]);
    }
}

#[test]
fn an_address_longer_than_320_bytes() {
    let n = MAX_ADDRESS as usize;
    let exact = format!("MAIL FROM:<{}@b>\r\n", "a".repeat(n - 2));
    check_line(&exact, &[]);
    let bare = format!("MAIL FROM:{}@b SIZE=1\r\n", "a".repeat(n - 2));
    check_line(&bare, &[]);
    check_line(
        &format!("MAIL FROM:<{}@b>\r\n", "a".repeat(n - 1)),
        &[rule::ADDRESS_LENGTH],
    );
    check_line(
        &format!("RCPT TO:<{}@b>\r\n", "a".repeat(398)),
        &[rule::ADDRESS_LENGTH],
    );
    check_line(
        &format!("MAIL FROM: {}@b\r\n", "a".repeat(n - 1)),
        &[rule::ADDRESS_LENGTH],
    );
    // Long and with a bad character: both rules, each once.
    check_line(
        &format!("RCPT TO:<{}|>\r\n", "a".repeat(400)),
        &[rule::ADDRESS_LENGTH, rule::ADDRESS_CHARS],
    );
}

#[test]
fn a_denied_mail_or_another_verb_is_not_an_address() {
    check_line("NOOP <a|b\r\n", &[]);
    check_line("HELO <<|\r\n", &[]);
    let mut e = env(action::LOG);
    e.keys.retain(|k| *k != key_of(b"MAIL").unwrap());
    let mut st = ClientState::default();
    let mut buf = b"MAIL FROM:<a|b\r\n".to_vec();
    let mut n = 0;
    feed_client(&mut st, &mut buf, &e, |o| n += (o.limit != 0) as u32).unwrap();
    assert_eq!(n, 0);
    assert_eq!(&buf[..4], b"XXXX", "masked by the policy");
}

/// The RCPT limit's `mask`: every RCPT after the 100th, with its verb in
/// the segment; a RCPT whose verb left in an earlier segment resets.
#[test]
fn rcpts_beyond_100_are_masked_or_reset() {
    let mut before = b"EHLO c\r\nMAIL FROM:<a@b>\r\n".to_vec();
    for _ in 0..MAX_RCPTS {
        before.extend_from_slice(b"RCPT TO:<c@d>\r\n");
    }
    check(&before, b"RCPT TO:<e@f>\r\n", (0, 4), &[rule::RCPTS]);
    check(&before, b"  rcpt\tTO:<e@f>\n", (2, 6), &[rule::RCPTS]);
}

/// A message's header section: from 354 to the first empty line.
fn data() -> Vec<u8> {
    b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec()
}

#[test]
fn a_header_line_longer_than_998_bytes() {
    let n = MAX_HEADER_LINE as usize;
    let name = "Subject: ";
    let ok = format!("{name}{}\r\n", "a".repeat(n - name.len()));
    let long = format!("{name}{}\r\n", "a".repeat(n + 1 - name.len()));
    let want = [rule::HEADER_LINE];
    // The rule never masks: its `mask` resets (whatever the cut: no verb).
    check(&data(), ok.as_bytes(), (0, 0), &[]);
    check(&data(), long.as_bytes(), (0, 0), &want);
    check(&data(), format!("X: y\r\n{long}").as_bytes(), (0, 0), &want);
    // Bare LF; a 1200-byte line; a dot-stuffed line (the server removes the
    // dot); a CR before the CRLF is a byte of the line.
    check(
        &data(),
        format!("X: y\n{}\n", "b".repeat(1200)).as_bytes(),
        (0, 0),
        &want,
    );
    check(
        &data(),
        format!(".{}\r\n", "c".repeat(n)).as_bytes(),
        (0, 0),
        &[],
    );
    check(
        &data(),
        format!("{}\r\r\n", "c".repeat(n)).as_bytes(),
        (0, 0),
        &want,
    );
    // Two long lines: each once.
    check(
        &data(),
        format!("{long}{long}").as_bytes(),
        (0, 0),
        &[rule::HEADER_LINE; 2],
    );
    // After the empty line (CRLF or LF) the body's lines are not headers.
    for sep in ["\r\n", "\n"] {
        let after = format!("X: y\r\n{sep}{}\r\n.\r\n", "d".repeat(3000));
        check(&data(), after.as_bytes(), (0, 0), &[]);
    }
    // The end of data ends the section; the next message has one again.
    let two = "X: y\r\n.\r\nMAIL FROM:<a@b>\r\n";
    let r = run(&data(), two.as_bytes(), 0, action::LOG, true);
    assert!(r.limits.is_empty());
    assert_eq!(r.state.hdr, 0);
}

#[test]
fn a_long_header_line_split_at_every_byte_matches_once() {
    let long = format!("Received: {}\r\n\r\nbody\r\n", "e".repeat(1190));
    check(&data(), long.as_bytes(), (0, 0), &[rule::HEADER_LINE]);
}

/// A byte that crosses two limits reports both; the strongest action
/// wins.
#[test]
fn two_rules_at_one_byte() {
    // The 513th byte of the line is a `|`.
    let head = "MAIL FROM:<a@b> X=";
    let line = format!("{head}{}|\r\n", "x".repeat(512 - head.len()));
    let mut st = ClientState::default();
    struct Two(Env1);
    impl Env for Two {
        fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
            self.0.policy(key)
        }
        fn gate_reply(&self, u: u32) -> Option<u16> {
            self.0.gate_reply(u)
        }
        fn chunking(&self) -> bool {
            false
        }
        fn limit_action(&self, r: u8) -> u32 {
            if r == rule::ADDRESS_CHARS {
                action::DROP_CONNECTION
            } else {
                action::LOG
            }
        }
    }
    let e = Two(env(action::LOG));
    let mut buf = line.into_bytes();
    let mut seen = vec![];
    feed_client(&mut st, &mut buf, &e, |o| {
        if o.limit != 0 {
            seen.push(*o)
        }
    })
    .unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].limit,
        rule::bit(rule::COMMAND_LINE) | rule::bit(rule::ADDRESS_CHARS)
    );
    assert_eq!(seen[0].limit_act as u32, action::DROP_CONNECTION);
    assert_eq!(seen[0].limit_rule, rule::ADDRESS_CHARS);
}
