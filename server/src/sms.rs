//! Delivering signup codes, on a thread of its own so that a slow gateway
//! never stalls a shard.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::{Path, PathBuf},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crossbeam_channel::{bounded, Sender, TrySendError};
use wire::Phone;

/// Codes waiting for the gateway; past this, requests get `SmsUnavailable`.
const SMS_QUEUE_MAX: usize = 4096;
/// Attempts per code against a webhook, with doubling backoff.
const WEBHOOK_ATTEMPTS_MAX: u32 = 3;
/// How long one POST to the webhook may take: a code is worth little after
/// this, and the one thread that sends codes must not hang on a gateway.
const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// The wait after the first failed attempt, doubled after each next one:
/// 200, 400 and 800 ms keep the three attempts within a few seconds.
const WEBHOOK_BACKOFF_FIRST_MS: u64 = 200;

pub enum SmsSender {
    /// Writes each code to the log and appends `unix_ms phone code` to
    /// `sms-outbox.log` in the data dir.
    Outbox(PathBuf),
    /// POSTs `{"phone": "+1...", "code": "123456", "text": "..."}` as JSON.
    Webhook(String),
}

/// Why a code was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("opening {}: {source}", path.display())]
    OutboxOpen { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}", path.display())]
    OutboxWrite { path: PathBuf, source: io::Error },
    /// A 4xx: the gateway refuses this request, and retrying won't help.
    #[error("webhook answered {status}")]
    Refused { status: u16 },
    /// The last of the attempts failed (a 5xx, or no answer).
    #[error("attempt {attempt}: {source}")]
    Failed {
        attempt: u32,
        source: Box<ureq::Error>,
    },
}

/// The shards' handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct SmsQueue(Sender<(Phone, u32)>);

impl SmsQueue {
    pub fn try_send(&self, phone: Phone, code: u32) -> bool {
        match self.0.try_send((phone, code)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                log::warn!("SMS queue full ({SMS_QUEUE_MAX}); refusing a code request");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

pub fn start(
    sender: SmsSender,
    stats: std::sync::Arc<crate::control::gateways::GatewayStats>,
) -> std::io::Result<SmsQueue> {
    let (tx, rx) = bounded::<(Phone, u32)>(SMS_QUEUE_MAX);
    thread::Builder::new()
        .name("isle-sms".into())
        .spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(WEBHOOK_TIMEOUT_MS))
                .build();
            for (phone, code) in rx {
                let result = match &sender {
                    SmsSender::Outbox(path) => write_outbox(path, phone, code),
                    SmsSender::Webhook(url) => post_webhook((&agent, &stats), url, phone, code),
                };
                match result {
                    Ok(()) => stats.sent(),
                    Err(error) => {
                        stats.failed();
                        log::error!(phone:%; "SMS not delivered: {error}");
                    }
                }
            }
        })?;
    Ok(SmsQueue(tx))
}

fn write_outbox(path: &Path, phone: Phone, code: u32) -> Result<(), SmsError> {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // The code is a secret: it goes to the outbox file only.
    log::info!(phone:%; "SMS to the outbox: the code goes to {}", path.display());
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SmsError::OutboxOpen {
            path: path.to_owned(),
            source,
        })?;
    file.write_all(format!("{unix_ms} {phone} {code:06}\n").as_bytes())
        .map_err(|source| SmsError::OutboxWrite {
            path: path.to_owned(),
            source,
        })
}

fn post_webhook(
    (agent, stats): (&ureq::Agent, &crate::control::gateways::GatewayStats),
    url: &str,
    phone: Phone,
    code: u32,
) -> Result<(), SmsError> {
    let body = serde_json::json!({
        "phone": phone.to_string(),
        "code": format!("{code:06}"),
        "text": format!("Your isle code is {code:06}"),
    });
    let mut backoff = Duration::from_millis(WEBHOOK_BACKOFF_FIRST_MS);
    let mut attempt = 1;
    loop {
        let error = match agent.post(url).send_json(&body) {
            Ok(_) => return Ok(()),
            // A 4xx means the gateway refuses this request; retrying won't help.
            Err(ureq::Error::Status(status, _)) if (400..500).contains(&status) => {
                return Err(SmsError::Refused { status });
            }
            Err(error) => error,
        };
        if attempt >= WEBHOOK_ATTEMPTS_MAX {
            return Err(SmsError::Failed {
                attempt,
                source: Box::new(error),
            });
        }
        stats.retried();
        thread::sleep(backoff);
        backoff *= 2;
        attempt += 1;
    }
}
