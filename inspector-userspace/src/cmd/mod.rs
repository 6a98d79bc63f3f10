//! One module per subcommand. Each has a `run` that takes the subcommand's
//! options (see `cli.rs`) and returns what went wrong, for `main` to print.

pub mod attach;
pub mod detach;
pub mod docs;
pub mod events;
pub mod policy;
pub mod stats;
pub mod status;
