//! `inspector completions SHELL` and `inspector man`: generated from the
//! clap schema in `cli.rs`, so they never disagree with `--help`.

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::{
    cli::{Cli, CompletionsArgs},
    out,
};

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "inspector", &mut buf);
    out::print(&String::from_utf8(buf).context("completion script is not UTF-8")?)?;
    Ok(())
}

/// inspector(8): the top-level page, then one section per subcommand
/// with its synopsis, description and options (clap_mangen writes a page
/// per command; their headings become sub-headings here, so that `man
/// inspector` shows everything in one page).
pub fn man() -> Result<()> {
    let cmd = Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut buf)
        .context("rendering the man page")?;
    for sub in cmd.get_subcommands() {
        let name = format!("inspector {}", sub.get_name());
        let man =
            clap_mangen::Man::new(sub.clone().display_name(&name).bin_name(&name)).section("8");
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        let part = String::from_utf8(part).context("man page is not UTF-8")?;
        buf.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        buf.extend_from_slice(
            part.replace("\n.SH ", "\n.SS ")
                .replacen(".SH ", ".SS ", 1)
                .as_bytes(),
        );
    }
    out::print(&String::from_utf8(buf).context("man page is not UTF-8")?)?;
    Ok(())
}
