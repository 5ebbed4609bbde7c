//! The parts of the server that are tested on their own (`cargo test -p
//! server --lib`), as a library the binary (`main.rs`) uses.
//!
//! - [`flow`]: when a connection's bytes move (write now or a poll later,
//!   wait for a commit, pause input on a congested link); no I/O.
//! - [`island`]: a secondary's warm standby of a tablet (the rest of the
//!   islands' runtime will join it).
//! - [`peer_queue`]: the bounded queue between two shards' executors,
//!   tested in `server/tests/peer_queue.rs`, a binary of its own.
//! - [`remote`]: the links between nodes of a cluster: a sans-IO session
//!   protocol and the glommio tasks around it, tested over real loopback
//!   sockets in `server/tests/remote_links.rs`.

pub mod flow;
pub mod island;
pub mod peer_queue;
pub mod remote;
