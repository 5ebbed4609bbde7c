//! What the control thread asks of a shard on an operator's behalf, and
//! how the answer comes back. A shard takes its commands in its tick from a
//! bounded channel (never waiting on it) and answers through a oneshot the
//! control thread awaits with a timeout.

use shard::{AccountInfo, AccountRefused, Deleted, TraceHit};
use tokio::sync::oneshot;
use wire::Phone;

/// Commands waiting for one shard, at most: an operator's, so few.
pub const COMMANDS_PER_SHARD_MAX: usize = 64;

/// A request to one shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// What the shard holds of an account (`None`: no such account).
    AccountShow {
        phone: Phone,
        reply: oneshot::Sender<Option<AccountView>>,
    },
    /// Revoke the account's device key.
    Revoke {
        phone: Phone,
        reply: oneshot::Sender<Result<(), AccountRefused>>,
    },
    /// Delete the account; answered once the deletion is durable (see
    /// `shard::Shard::delete_account`).
    DeleteAccount {
        phone: Phone,
        reply: oneshot::Sender<Deletion>,
    },
    /// Where `sender`'s message `client_id` is on this shard.
    Trace {
        sender: Phone,
        client_id: u64,
        reply: oneshot::Sender<Vec<TraceHit>>,
    },
    /// Stop taking connections and close every open one, telling phones
    /// the server is going away; the process keeps running.
    Drain,
    /// New TLS connections get this configuration (a reloaded certificate
    /// and key); open ones keep theirs. `taken` is told once they do.
    ReloadTls {
        config: std::sync::Arc<rustls::ServerConfig>,
        taken: oneshot::Sender<()>,
    },
    /// New limits (a reload): the shard keeps what it cannot change while
    /// running (`shard::ShardConfig::keep_fixed`). `taken` is told once
    /// they apply.
    SetLimits {
        limits: Box<shard::ShardConfig>,
        taken: oneshot::Sender<()>,
    },
    /// Where accounts and groups live in the cluster now.
    Place(std::sync::Arc<shard::Placement>),
}

impl ShardCommand {
    /// The account a command is about, if it is about one: the shard
    /// hands it to the tablet holding that account.
    pub fn phone(&self) -> Option<Phone> {
        match self {
            ShardCommand::AccountShow { phone, .. }
            | ShardCommand::Revoke { phone, .. }
            | ShardCommand::DeleteAccount { phone, .. } => Some(*phone),
            _ => None,
        }
    }
}

/// The answer to [`ShardCommand::DeleteAccount`].
#[derive(Debug)]
pub enum Deletion {
    /// Deleted, and the deletion is on disk.
    Durable(Deleted),
    Refused(AccountRefused),
    /// Deleted in memory, but the journal failed before the deletion was
    /// written: after a restart the account is back.
    NotWritten,
}

/// An account as `isle ctl account show` shows it: what its home shard
/// holds, and where its phone is connected.
#[derive(Debug, serde::Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub info: AccountInfo,
    /// Where the phone is connected, when it is logged in.
    pub connection: Option<Connection>,
}

/// A logged-in phone's connection.
#[derive(Debug, serde::Serialize)]
pub struct Connection {
    /// The shard that serves it (the account's home shard).
    pub shard: u16,
    /// The phone's address and port, as the server sees it (`None`: the
    /// socket no longer had one).
    pub peer: Option<std::net::SocketAddr>,
}
