//! Admin protocol (SPEC.md §9), pure parts: line framing, command parsing, fixed replies and
//! the rendering of `show sessions` / `show stats` (text) and of every `show … json` reply.
//!
//! * [`framing`]: [`LineSplitter`] turns received segments into lines (§9.1).
//! * [`command`]: [`parse_command`] and the replies needing no runtime state (§9.2).
//! * [`snapshot`]: plain-data views of runtime state that the server fills in.
//! * [`render`] (text) and [`json`]: the `show` replies built from those snapshots (§9.4–§9.6).
//! * [`dispatch`]: runs a command against the runtime and the block list (no socket, the
//!   clock passed in); the server and the fuzz target `admin_dispatch` both call it.
//!
//! `show rules` text (§9.3) is rendered by the `config` module. Socket I/O lives elsewhere.

pub mod command;
pub mod dispatch;
pub mod framing;
pub mod json;
pub mod render;
pub mod snapshot;

pub use command::{
    Command, ShowWhat, UsageOf, VERB_DISABLE, VERB_ENABLE, VERB_HEARTBEAT, help_ext_text,
    help_text, invalid_reply, parse_command, reply_block_full, reply_blocked, reply_matches,
    reply_unblocked, show_usage_reply, usage_reply,
};
pub use dispatch::{AdminState, Clock, Effect, execute, execute_line};
pub use framing::{LineSplitter, LineTooLong, MAX_LINE};
pub use json::{
    render_blocked_json, render_rules_json, render_sessions_json, render_stats_json,
    render_stats_json_with_xdp,
};
pub use render::{render_blocked_text, render_sessions_text, render_stats_text, render_xdp_text};
pub use snapshot::{
    BlockedEntry, RuleStats, ServerStateView, ServerStats, SessionRow, XdpStats, fmt_sockaddr,
};
