//! The library half of `ci`: what its subcommands and the workspace's
//! multi-node tests share. Today that is [`harness`], which puts isle
//! nodes, etcd and loadgen each in a network namespace of their own on
//! one bridge, so that a test can cut and heal the network between them.

pub mod harness;
