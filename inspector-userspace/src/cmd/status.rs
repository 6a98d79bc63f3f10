//! `inspector status`: what is attached where, the live policy, flows.

use anyhow::Result;
use inspector_userspace::{privilege, status::Status};

use crate::{cli::StatusArgs, cmd::policy, out};

pub fn run(args: StatusArgs) -> Result<()> {
    privilege::require_bpf("status")?;
    let allowed = policy::allowed_names(&args.pin_dir)?;
    let st = Status::read(&args.pin_dir, allowed)?;
    if args.json {
        out::line(st.to_json())?;
    } else {
        out::print(&st.to_text())?;
    }
    Ok(())
}
