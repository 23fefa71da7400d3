//! The G6 configuration language (SPEC.md §4): lexer, parser/validator, typed model, and the
//! `show rules` text rendering.

pub mod model;

pub use model::*;
