//! What a shard needs from the outside world, behind a trait so the state
//! machine stays deterministic under test.

use wire::Phone;

use crate::Push;

pub trait Env {
    /// Fills `buffer` from a cryptographically secure source.
    fn random(&mut self, buffer: &mut [u8]);
    /// Hands a signup code to the SMS gateway. Returns false when the gateway
    /// cannot take it now (its queue is full); the phone is told to retry.
    fn send_sms(&mut self, phone: Phone, code: u32) -> bool;
    /// Hands a push to the push sender. Returns false when it cannot take
    /// it now (its queue is full); the push is dropped and counted.
    fn push(&mut self, push: Push) -> bool;
}
