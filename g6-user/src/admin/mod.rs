//! Admin protocol (SPEC.md §9), pure parts: line framing, command parsing, fixed replies and
//! the rendering of `show sessions` / `show stats` (text) and of every `show … json` reply.
//!
//! * [`framing`]: [`LineSplitter`] turns received segments into lines (§9.1).
//! * [`command`]: [`parse_command`] and the replies needing no runtime state (§9.2).
//! * [`snapshot`]: plain-data views of runtime state that the server fills in.
//! * [`render`] (text) and [`json`]: the `show` replies built from those snapshots (§9.4–§9.6).
//!
//! `show rules` text (§9.3) is rendered by the `config` module. Socket I/O lives elsewhere.

pub mod command;
pub mod framing;
pub mod json;
pub mod render;
pub mod snapshot;

pub use command::{
    Command, ShowWhat, UsageOf, VERB_DISABLE, VERB_ENABLE, VERB_HEARTBEAT, help_text,
    invalid_reply, parse_command, reply_matches, show_usage_reply, usage_reply,
};
pub use framing::{LineSplitter, LineTooLong, MAX_LINE};
pub use json::{render_rules_json, render_sessions_json, render_stats_json};
pub use render::{render_sessions_text, render_stats_text};
pub use snapshot::{RuleStats, ServerStateView, ServerStats, SessionRow, fmt_sockaddr};
