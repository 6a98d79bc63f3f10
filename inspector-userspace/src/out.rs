//! Writing to stdout without panicking when the reader goes away: Rust
//! ignores SIGPIPE, so `println!` would panic on `inspector events | head
//! -1`. Every subcommand writes through here and gets the error back;
//! `main` ends quietly with status 0 on a closed pipe.

use std::io::{self, Write};

/// Writes `text` to stdout and flushes it (a `--watch` or `events` reader
/// must see each refresh or event at once, even through a pipe).
pub fn print(text: &str) -> io::Result<()> {
    let mut o = io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()
}

/// [`print`] with a line end.
pub fn line(text: impl std::fmt::Display) -> io::Result<()> {
    print(&format!("{text}\n"))
}

/// Whether `e` is stdout's reader having gone away.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Whether stdout is a terminal (`--watch` redraws the screen only then).
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    io::stdout().is_terminal()
}
