//! The parts of the server that do no I/O, as a library so that their
//! unit tests run on their own (`cargo test -p server --lib`); the binary
//! (`main.rs`) uses them.
//!
//! - [`flow`]: when a connection's bytes move (write now or a poll later,
//!   wait for a commit, pause input on a congested link).

pub mod flow;
