//! What a shard needs from the outside world, behind a trait so the state
//! machine stays deterministic under test.

use wire::Phone;

pub trait Env {
    /// Fills `buffer` from a cryptographically secure source.
    fn random(&mut self, buffer: &mut [u8]);
    /// Hands a signup code to the SMS gateway. Returns false when the gateway
    /// cannot take it now (its queue is full); the phone is told to retry.
    fn send_sms(&mut self, phone: Phone, code: u32) -> bool;
}
