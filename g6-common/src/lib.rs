//! Types shared by the eBPF programs (`g6-ebpf`) and the agent (`g6-user`).
//! `#[repr(C)]`, integers only, sizes asserted; `aya::Pod` only with the `user` feature.
#![no_std]
