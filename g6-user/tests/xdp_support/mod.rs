//! Helpers of tests/xdp.rs: packet builders and network namespaces of our own.
#![allow(dead_code)]

pub mod netns;
pub mod packet;
